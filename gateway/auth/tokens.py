"""API tokens: roles, principals and the token store.

A token is 32 random bytes (256 bits) shown once, as `mr_<id>_<secret>` where `<id>` is a
short public handle (for `list`/`revoke` and the audit log) and `<secret>` the urlsafe
base64 of the random bytes. Only SHA-256 of the whole token is stored: with 256 bits of
entropy a slow hash (scrypt, pbkdf2) adds nothing against guessing, and a fast one keeps the
per-request check cheap. Lookup is by id, then the stored digest is compared with
`hmac.compare_digest`, so timing reveals nothing about the secret.

The store is a small SQLite file (`tokens.db` beside the readings store, mode 0600) in WAL
mode with one connection per process: the CLI (`millrace tokens create|revoke`) and the
running gateway share the file, every check reads the committed state, so a revocation takes
effect at the gateway's next request without a restart. `last_used` is
written at most once a minute per token so that reading the API is not a disk write each time.
"""

from __future__ import annotations

import base64
import contextlib
import enum
import hashlib
import hmac
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.errors import MillraceError

if TYPE_CHECKING:
    from gateway.configload import LoadedConfig

PREFIX = "mr_"
#: How often `last_used` is written back for one token (seconds).
LAST_USED_EVERY = 60.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY,
    digest TEXT NOT NULL,
    role TEXT NOT NULL,
    subject TEXT NOT NULL,
    org TEXT NOT NULL,
    site TEXT,
    label TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    last_used REAL,
    revoked REAL
);
"""


class TokenError(MillraceError):
    """A token cannot be created, found or revoked."""


class Role(enum.IntEnum):
    """Ordered: a higher role can do everything a lower one can."""

    VIEWER = 1
    TECHNICIAN = 2
    ADMIN = 3

    @classmethod
    def parse(cls, text: str) -> Role:
        try:
            return cls[text.strip().upper()]
        except KeyError:
            names = ", ".join(r.name.lower() for r in cls)
            raise TokenError(f"unknown role {text!r}; expected one of {names}") from None

    def __str__(self) -> str:
        return self.name.lower()


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the token's subject, role and the organisation/site it belongs to.
    `site` None means every site of `org`."""

    subject: str
    role: Role
    org: str
    site: str | None
    token_id: str

    @property
    def who(self) -> str:
        """How the audit log names the caller: the subject and the token used."""
        return f"{self.subject} [token {self.token_id}]"


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """A token as `list` shows it: never the secret, never the digest."""

    id: str
    role: Role
    subject: str
    org: str
    site: str | None
    label: str
    created: float
    last_used: float | None
    revoked: float | None


def tokens_path(loaded: LoadedConfig) -> Path:
    """`tokens.db` in the store's folder, so the CLI finds what the gateway uses."""
    return loaded.store_path().parent / "tokens.db"


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def split_token(token: str) -> str | None:
    """The id part of a well-formed token, or None (no store lookup for garbage)."""
    if not token.startswith(PREFIX) or len(token) > 200:
        return None
    ident, sep, secret = token[len(PREFIX) :].partition("_")
    if not sep or not ident or not secret or not ident.isalnum():
        return None
    return ident


class TokenStore:
    """Create, list, revoke and check tokens in one SQLite file; every method is
    synchronous and short (call `check` from a worker thread in async code)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._touched: dict[str, float] = {}
        self._db: sqlite3.Connection | None = None

    @contextlib.contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        """The one connection, under the lock; sqlite errors become TokenError."""
        with self._lock:
            if self._db is None:
                self._db = self._open()
            try:
                yield self._db
            except sqlite3.Error as exc:
                raise TokenError(f"token store {self.path}: {exc}") from exc

    def _open(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.touch(mode=0o600, exist_ok=True)
            conn = sqlite3.connect(
                self.path, timeout=10, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise TokenError(f"token store {self.path}: cannot open ({exc})") from exc
        return conn

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def create(
        self,
        role: Role,
        *,
        subject: str,
        org: str,
        site: str | None,
        label: str = "",
        now: float | None = None,
    ) -> tuple[str, TokenInfo]:
        """A new token: returns the plain token (shown once, never stored) and its record."""
        if not subject.strip():
            raise TokenError("a token needs a subject (who or what uses it)")
        ident = secrets.token_hex(6)
        secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
        token = f"{PREFIX}{ident}_{secret}"
        info = TokenInfo(ident, role, subject, org, site, label, now or time.time(), None, None)
        with self._conn() as conn:
            conn.execute(
                "INSERT INTO tokens (id, digest, role, subject, org, site, label, created)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (ident, digest(token), str(role), subject, org, site, label, info.created),
            )
        return token, info

    def list(self) -> list[TokenInfo]:
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT id, role, subject, org, site, label, created, last_used, revoked"
                " FROM tokens ORDER BY created"
            ).fetchall()
        return [
            TokenInfo(r[0], Role.parse(r[1]), r[2], r[3], r[4], r[5], r[6], r[7], r[8])
            for r in rows
        ]

    def revoke(self, token_id: str, *, now: float | None = None) -> TokenInfo:
        """Revoke by id (idempotent: revoking twice keeps the first time)."""
        with self._conn() as conn:
            cur = conn.execute(
                "UPDATE tokens SET revoked = COALESCE(revoked, ?) WHERE id = ?",
                (now or time.time(), token_id),
            )
            if cur.rowcount == 0:
                raise TokenError(f"no token with id {token_id!r}")
        return next(t for t in self.list() if t.id == token_id)

    def check(self, token: str, *, now: float | None = None) -> Principal | None:
        """The principal a presented token stands for; None when it is malformed, unknown,
        revoked or does not match (the caller does not learn which)."""
        ident = split_token(token)
        if ident is None:
            return None
        with self._conn() as conn:
            row = conn.execute(
                "SELECT digest, role, subject, org, site, revoked FROM tokens WHERE id = ?",
                (ident,),
            ).fetchone()
            if row is None:
                hmac.compare_digest(digest(token), "0" * 64)  # same work as a known id
                return None
            if not hmac.compare_digest(digest(token), row[0]) or row[5] is not None:
                return None
            t = now or time.time()
            if t - self._touched.get(ident, 0.0) >= LAST_USED_EVERY:
                self._touched[ident] = t
                conn.execute("UPDATE tokens SET last_used = ? WHERE id = ?", (t, ident))
        return Principal(
            subject=row[2], role=Role.parse(row[1]), org=row[3], site=row[4], token_id=ident
        )
