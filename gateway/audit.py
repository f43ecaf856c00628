"""The tamper-evident audit log: who wrote to a device, changed config or equipment, exported
data or synced with the pool, and with which token.

Each entry is `(seq, ts, who, action, target, detail, prev_hash, hash)` in its own SQLite file
(`audit.db` beside the readings store, WAL). `hash` is SHA-256 of the canonical JSON of
`{ts, who, action, target, detail, prev_hash}` (keys sorted, `(",", ":")` separators, ASCII);
`prev_hash` is the previous entry's `hash`, 64 zeros for the first. `seq` is deliberately not
hashed: order is carried by the chain itself, which is what lets `verify` tell a *reordered*
entry (its `prev_hash` is the hash of some other entry in the log) from a *removed* one (its
`prev_hash` is nowhere, and `seq` has a gap) and an *edited* one (its content no longer gives
its hash).

Limits, stated so nobody relies on more: whoever can write the file can rewrite the whole
chain from the first altered entry on; and entries cut off the end leave a valid, shorter
chain. Both are caught only against a head kept elsewhere — the gateway logs the head
(`seq`, `hash`) at every start and `millrace audit verify` prints it, so a head copied off the
box (central logs, a ticket) pins everything up to it.

Appends take `BEGIN IMMEDIATE`, so the gateway and a CLI command (token created) appending at
the same moment still form one chain. `append` runs in a worker thread: the event loop never
waits on the disk.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.errors import MillraceError

if TYPE_CHECKING:
    from gateway.configload import LoadedConfig

log = logging.getLogger("millrace.audit")

GENESIS = "0" * 64

SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    who TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
"""


class AuditError(MillraceError):
    """The audit log cannot be opened or written."""


@dataclass(frozen=True, slots=True)
class AuditEntry:
    seq: int
    ts: float
    who: str
    action: str
    target: str
    detail: dict[str, Any]
    prev_hash: str
    hash: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Verification:
    ok: bool
    entries: int
    head_seq: int
    head_hash: str
    #: One line per problem, naming the entry: `seq 7: edited ...`.
    problems: list[str]


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)


def entry_hash(ts: float, who: str, action: str, target: str, detail_json: str, prev: str) -> str:
    """`detail_json` is the stored canonical text, so a hash never depends on re-encoding."""
    body = canonical(
        {
            "ts": ts,
            "who": who,
            "action": action,
            "target": target,
            "detail": detail_json,
            "prev_hash": prev,
        }
    )
    return hashlib.sha256(body.encode("ascii")).hexdigest()


class AuditLog:
    """Append to, read and verify one audit file. `append` is async (worker thread); the
    rest is synchronous and meant for the CLI, tests, or a worker thread."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        #: Appends that failed (counted on /metrics; the action itself is not undone).
        self.failures = 0
        self.appended = 0

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(
                    self.path, timeout=10, isolation_level=None, check_same_thread=False
                )
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
                conn.executescript(SCHEMA)
            except (sqlite3.Error, OSError) as exc:
                raise AuditError(f"audit log {self.path}: cannot open ({exc})") from exc
            self._db = conn
        return self._db

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    # -- writing -------------------------------------------------------------------------

    async def append(
        self, action: str, who: str, target: str, detail: dict[str, Any] | None = None
    ) -> AuditEntry:
        """Record one action; returns the entry once it is committed."""
        return await asyncio.to_thread(self.append_sync, action, who, target, detail or {})

    def append_sync(
        self,
        action: str,
        who: str,
        target: str,
        detail: dict[str, Any] | None = None,
        *,
        now: float | None = None,
    ) -> AuditEntry:
        detail_json = canonical(detail or {})
        with self._lock:
            conn = self._conn()
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    row = conn.execute(
                        "SELECT hash FROM audit ORDER BY seq DESC LIMIT 1"
                    ).fetchone()
                    prev = row[0] if row else GENESIS
                    ts = round(now if now is not None else time.time(), 6)
                    h = entry_hash(ts, who, action, target, detail_json, prev)
                    cur = conn.execute(
                        "INSERT INTO audit (ts, who, action, target, detail, prev_hash, hash)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (ts, who, action, target, detail_json, prev, h),
                    )
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                self.failures += 1
                raise AuditError(f"audit log {self.path}: cannot append ({exc})") from exc
        self.appended += 1
        seq = int(cur.lastrowid or 0)
        return AuditEntry(seq, ts, who, action, target, json.loads(detail_json), prev, h)

    # -- reading -------------------------------------------------------------------------

    def _rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self._conn().execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise AuditError(f"audit log {self.path}: {exc}") from exc

    def entries(
        self, *, after: int = 0, limit: int = 100, action: str | None = None
    ) -> list[AuditEntry]:
        """Entries with seq > `after`, oldest first (page on with the last seq)."""
        where = "seq > ?"
        args: list[Any] = [after]
        if action:
            where += " AND action = ?"
            args.append(action)
        rows = self._rows(
            f"SELECT seq, ts, who, action, target, detail, prev_hash, hash FROM audit"
            f" WHERE {where} ORDER BY seq LIMIT ?",
            (*args, limit),
        )
        return [_entry(r) for r in rows]

    def last(self, action: str) -> AuditEntry | None:
        rows = self._rows(
            "SELECT seq, ts, who, action, target, detail, prev_hash, hash FROM audit"
            " WHERE action = ? ORDER BY seq DESC LIMIT 1",
            (action,),
        )
        return _entry(rows[0]) if rows else None

    def head(self) -> tuple[int, str]:
        rows = self._rows("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
        return (int(rows[0][0]), str(rows[0][1])) if rows else (0, GENESIS)

    def verify(self) -> Verification:
        """Walk the whole chain; name every entry that was edited, removed or reordered."""
        rows = self._rows(
            "SELECT seq, ts, who, action, target, detail, prev_hash, hash FROM audit ORDER BY seq"
        )
        problems = list(_check(rows))
        head = (rows[-1][0], rows[-1][7]) if rows else (0, GENESIS)
        return Verification(not problems, len(rows), int(head[0]), str(head[1]), problems)


def _entry(r: tuple[Any, ...]) -> AuditEntry:
    try:
        detail = json.loads(r[5])
    except ValueError:
        detail = {"unparsable": r[5]}
    return AuditEntry(int(r[0]), float(r[1]), r[2], r[3], r[4], detail, r[6], r[7])


def _check(rows: list[tuple[Any, ...]]) -> Iterator[str]:
    at = {r[7]: int(r[0]) for r in rows}  # hash -> seq, to recognise a moved entry
    prev_hash, prev_seq = GENESIS, 0
    for seq, ts, who, action, target, detail, prev, stored in rows:
        try:
            good = entry_hash(float(ts), who, action, target, detail, prev) == stored
        except (TypeError, ValueError):
            good = False
        if not good:
            yield f"seq {seq}: edited (its content does not match its hash)"
        if prev != prev_hash:
            if prev in at and at[prev] != prev_seq:
                yield (
                    f"seq {seq}: out of order (it follows the entry now at seq {at[prev]}, "
                    f"not seq {prev_seq})"
                )
            elif seq != prev_seq + 1:
                missing = f"{prev_seq + 1}" if seq == prev_seq + 2 else f"{prev_seq + 1}-{seq - 1}"
                yield f"seq {missing}: removed (seq {seq} follows a missing entry)"
            else:
                yield (
                    f"seq {seq}: chain broken (the entry before it, seq {prev_seq}, was "
                    "rewritten or replaced)"
                )
        elif seq != prev_seq + 1:
            yield f"seq {prev_seq + 1}-{seq - 1}: numbering gap"
        prev_hash, prev_seq = stored, int(seq)


def audit_path(loaded: LoadedConfig) -> Path:
    """`audit.db` in the store's folder: beside the data it accounts for."""
    return loaded.store_path().parent / "audit.db"


def config_fingerprint(loaded: LoadedConfig) -> str:
    """SHA-256 of the config as validated (secrets masked by pydantic), so a change to the
    file, to an env-provided value's *presence*, or to the defaults shows as a new hash."""
    dump = loaded.config.model_dump(mode="json")
    return hashlib.sha256(canonical(dump).encode("ascii")).hexdigest()


async def record_config(audit: AuditLog, loaded: LoadedConfig) -> None:
    """At start: append `config.applied` when the config differs from the one last applied
    (a config change is made by editing the file and restarting), and log the chain's head
    so a copy of it leaves the box with the logs."""

    def run() -> tuple[int, str]:
        fingerprint = config_fingerprint(loaded)
        last = audit.last("config.applied")
        previous = last.detail.get("sha256") if last else None
        if previous != fingerprint:
            audit.append_sync(
                "config.applied",
                "gateway (config file)",
                str(loaded.source or loaded.base_dir),
                {"sha256": fingerprint, "previous": previous},
            )
        return audit.head()

    seq, head = await asyncio.to_thread(run)
    log.info("audit log head", extra={"audit_seq": seq, "audit_head": head})
