"""Helpers shared by the hostile-input integration tests: what the store held before an
attack, and the proof that it still holds exactly that afterwards."""

from __future__ import annotations

import math
from typing import Any

from gateway.store import Store

#: id -> (point, value as repr, quality): repr so NaN compares equal to itself.
Snapshot = dict[int, tuple[str, str, int]]


async def stored(store: Store) -> Snapshot:
    """Every committed reading, by id (flushes first so nothing accepted is left out)."""
    await store.flush()
    out: Snapshot = {}
    after = 0
    while True:
        rows = await store.time_range(-math.inf, math.inf, after_id=after, limit=5000)
        if not rows:
            return out
        for r in rows:
            out[r.id] = (r.point, repr(r.value), int(r.quality))
        after = rows[-1].id


def assert_nothing_lost(before: Snapshot, after: Snapshot, store: Store) -> None:
    """Every reading stored before is still there, unchanged, and the store dropped none."""
    missing = sorted(before.keys() - after.keys())
    assert not missing, f"{len(missing)} stored readings vanished, first ids {missing[:5]}"
    changed = [i for i in before if before[i] != after[i]]
    assert not changed, (
        f"stored readings changed: {[(i, before[i], after[i]) for i in changed[:3]]}"
    )
    dropped: dict[str, Any] = {k: v for k, v in store.stats().dropped.items() if v}
    assert not dropped, f"the store dropped readings: {dropped}"
