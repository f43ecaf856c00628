"""The latest value of every point, in memory, for the API and (later) rules and equipment
state. Seeded from the store's `latest` table at start so a restart shows the last known
values at once; kept current by subscribing to the bus.
"""

from __future__ import annotations

from collections.abc import Iterable

from gateway.readings import Batch, Reading


class LatestCache:
    def __init__(self) -> None:
        self._values: dict[str, Reading] = {}

    def seed(self, readings: Iterable[Reading]) -> None:
        for r in readings:
            self._values.setdefault(r.point, r)

    def update(self, batch: Batch) -> None:
        values = self._values
        for r in batch:
            values[r.point] = r

    def get(self, point: str) -> Reading | None:
        return self._values.get(point)

    def all(self) -> dict[str, Reading]:
        return dict(self._values)

    def __len__(self) -> int:
        return len(self._values)
