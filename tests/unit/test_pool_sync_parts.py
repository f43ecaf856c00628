"""The pool sync's pure parts and its ledger file, apart from any network."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import StoreConfig
from gateway.equipment.ledger import Booking, PoolLedger, booking_from_feed
from gateway.readings import Reading
from gateway.store import Store
from sync.config import PoolSyncConfig
from sync.pool import collapse


def test_collapse_keeps_the_newest_update_of_each_machine_in_order_of_the_newest() -> None:
    updates = [
        {"machine_id": "a", "seq": 1},
        {"machine_id": "b", "seq": 5},
        {"machine_id": "a", "seq": 3},
        {"machine_id": "a", "seq": 2},  # older, arrived later: not sent
    ]
    assert collapse(updates) == [{"machine_id": "b", "seq": 5}, {"machine_id": "a", "seq": 3}]
    assert collapse([]) == []


def test_a_feed_booking_is_read_or_refused_with_what_is_wrong() -> None:
    b = booking_from_feed(
        {
            "booking_id": "b-1",
            "machine_id": "m",
            "demand_id": "d",
            "start": "2026-01-05T06:00:00Z",
            "end": "2026-01-05T18:00:00Z",
            "status": "confirmed",
            "version": 3,
            "customer_org": "Coop",
        }
    )
    assert b.end - b.start == 12 * 3600 and b.version == 3
    with pytest.raises(ValueError, match="not a booking"):
        booking_from_feed({"booking_id": "b-1"})


async def test_sequence_numbers_only_grow_even_when_the_ledger_is_lost(tmp_path: Path) -> None:
    now = [1_000.0]
    ledger = PoolLedger(tmp_path / "l.db", clock=lambda: now[0])
    await ledger.open()
    first = await ledger.next_seq("m")
    second = await ledger.next_seq("m")
    assert first == 1_000_000 and second == first + 1
    await ledger.close()
    reopened = PoolLedger(tmp_path / "l.db", clock=lambda: now[0])
    await reopened.open()
    assert await reopened.next_seq("m") == second + 1  # survives a restart
    await reopened.close()
    # the file is gone (a new SD card): the epoch milliseconds are above any old counter
    now[0] = 2_000.0
    fresh = PoolLedger(tmp_path / "other.db", clock=lambda: now[0])
    await fresh.open()
    assert await fresh.next_seq("m") > second
    await fresh.close()


async def test_bookings_apply_newest_version_and_block_until_they_end(tmp_path: Path) -> None:
    ledger = PoolLedger(tmp_path / "l.db", clock=lambda: 500.0)
    await ledger.open()
    b = Booking("b-1", "m", "d", 100.0, 200.0, "confirmed", 2, "Coop")
    assert await ledger.apply_feed([b], 2) == 1
    assert await ledger.apply_feed([Booking(**{**b.__dict__, "version": 1})], 2) == 0
    assert ledger.blocked("m", 150.0) == [(100.0, 200.0)]
    assert ledger.blocked("m", 250.0) == []
    assert [x.booking_id for x in ledger.due_for_metering(250.0)] == ["b-1"]
    await ledger.mark_metered("b-1")
    cancelled = Booking(**{**b.__dict__, "version": 3, "status": "cancelled"})
    assert await ledger.apply_feed([cancelled], 3) == 1
    assert ledger.blocked("m", 150.0) == []
    assert ledger.bookings()[0].metered_at is not None  # the mark survives a new version
    assert ledger.get("booking_feed") == 3
    await ledger.close()


async def test_the_store_hands_a_suffix_consumer_only_its_points_and_skips_the_rest(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "s.db", StoreConfig(path=str(tmp_path / "s.db")))
    await store.open()
    store.register_consumer("uplink:pool")
    batch = [Reading(f"dev.p{i}", float(i)) for i in range(50)]
    batch.insert(10, Reading("m1.sharing_update", '{"seq": 1}'))
    batch.append(Reading("m2.sharing_update_x", "not this one"))
    store.submit(batch)
    await store.flush()
    rows, upto = await store.pending_matching("uplink:pool", 100, ".sharing_update")
    assert [r.point for r in rows] == ["m1.sharing_update"]
    assert upto == 52  # looked at everything committed
    await store.ack("uplink:pool", upto)
    assert await store.pending_matching("uplink:pool", 100, ".sharing_update") == ([], 52)
    await store.close()


def test_the_pool_config_refuses_a_token_in_clear_and_odd_intervals() -> None:
    ok = PoolSyncConfig(url="http://127.0.0.1:8400", token="t")
    assert ok.sync_interval == 30 and ok.snapshot_interval == 300
    with pytest.raises(ValueError, match="in clear"):
        PoolSyncConfig(url="http://pool.example.org", token="t")
    assert PoolSyncConfig(url="http://pool.example.org", token="t", allow_http=True)
    with pytest.raises(ValueError, match="snapshot_interval must be at least sync_interval"):
        PoolSyncConfig(url="https://p.example", token="t", sync_interval=60, snapshot_interval=30)
    with pytest.raises(ValueError, match="needs an `mqtt:` broker section"):
        PoolSyncConfig(url="https://p.example", token="t", transport="mqtt")


def test_an_uplink_may_not_take_the_pool_syncs_name(tmp_path: Path) -> None:
    from gateway.configload import load_config_data
    from gateway.errors import ConfigError

    data = {
        "gateway": {"id": "g", "site": "s"},
        "uplinks": [{"type": "mqtt", "name": "pool", "host": "127.0.0.1"}],
        "pool": {"url": "http://127.0.0.1:8400", "token": "t"},
    }
    with pytest.raises(ConfigError, match=r"uplinks\.0\.name: `pool` is the pool sync's own"):
        load_config_data(data, base_dir=tmp_path)
    del data["pool"]
    assert load_config_data(data, base_dir=tmp_path).config.uplinks[0].name == "pool"


async def test_many_machines_get_their_sequence_numbers_in_one_transaction(
    tmp_path: Path,
) -> None:
    ledger = PoolLedger(tmp_path / "l.db", clock=lambda: 1.0)
    await ledger.open()
    await ledger.next_seq("a")
    seqs = await ledger.next_seqs(["a", "b", "a"])
    assert seqs == {"a": 1001, "b": 1000}
    await ledger.close()
    again = PoolLedger(tmp_path / "l.db", clock=lambda: 1.0)
    await again.open()
    assert again.get("seq:a") == 1001 and again.get("seq:b") == 1000  # committed
    await again.close()


def test_the_owner_ref_key_is_made_once_private_and_kept(tmp_path: Path) -> None:
    from gateway.sharing import owner_ref_key

    key = owner_ref_key(tmp_path, None)
    assert len(key) == 32
    assert (tmp_path / "owner-ref.key").stat().st_mode & 0o777 == 0o600
    assert owner_ref_key(tmp_path, None) == key
    assert owner_ref_key(tmp_path, b"configured") == b"configured"
