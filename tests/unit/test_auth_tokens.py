"""Tokens (stored hashed, revocable, role-ordered), the data-class visibility rule and the
failed-login limiter, on a real SQLite token file."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.auth import AccessControl, FailureLimiter, Principal, Role, TokenError, TokenStore
from gateway.auth.tokens import digest, split_token
from gateway.types import DataClass


@pytest.fixture
def store(tmp_path: Path) -> Iterator[TokenStore]:
    s = TokenStore(tmp_path / "tokens.db")
    yield s
    s.close()


def test_roles_are_ordered_and_parse() -> None:
    assert Role.VIEWER < Role.TECHNICIAN < Role.ADMIN
    assert Role.parse(" Technician ") is Role.TECHNICIAN
    assert str(Role.ADMIN) == "admin"
    with pytest.raises(TokenError, match="unknown role 'root'"):
        Role.parse("root")


def test_token_is_stored_only_as_its_hash(store: TokenStore, tmp_path: Path) -> None:
    token, info = store.create(Role.TECHNICIAN, subject="alice", org="acme", site="mill")
    assert token.startswith(f"mr_{info.id}_") and len(token) > 40
    store.close()
    with sqlite3.connect(tmp_path / "tokens.db") as con:
        rows = con.execute("SELECT * FROM tokens").fetchall()
    assert len(rows) == 1
    flat = " ".join(str(c) for c in rows[0])
    secret = token.split("_", 2)[2]
    assert secret not in flat and token not in flat
    assert digest(token) in flat
    assert (tmp_path / "tokens.db").stat().st_mode & 0o077 == 0


def test_check_returns_the_principal_and_refuses_the_rest(store: TokenStore) -> None:
    token, info = store.create(Role.VIEWER, subject="scraper", org="acme", site=None)
    assert store.check(token) == Principal("scraper", Role.VIEWER, "acme", None, info.id)
    ident = info.id
    assert store.check(token[:-1] + ("A" if token[-1] != "A" else "B")) is None  # wrong secret
    assert store.check(f"mr_{ident}") is None  # malformed
    assert store.check("mr_ffffffffffff_" + "x" * 43) is None  # unknown id
    assert store.check("Bearer " + token) is None
    assert store.check("") is None
    assert split_token("mr_abc_def") == "abc" and split_token("xx_abc_def") is None


def test_revoke_is_immediate_and_listed(store: TokenStore, tmp_path: Path) -> None:
    token, info = store.create(Role.ADMIN, subject="bob", org="acme", site="mill", label="laptop")
    # a second process (the CLI) revokes; this store's next check sees it
    other = TokenStore(tmp_path / "tokens.db")
    try:
        other.revoke(info.id, now=1000.0)
        assert other.revoke(info.id, now=2000.0).revoked == 1000.0  # first time kept
        with pytest.raises(TokenError, match="no token with id"):
            other.revoke("nope")
    finally:
        other.close()
    assert store.check(token) is None
    (listed,) = store.list()
    assert listed.label == "laptop" and listed.revoked == 1000.0 and listed.role is Role.ADMIN


def test_last_used_written_at_most_once_a_minute(store: TokenStore) -> None:
    token, _ = store.create(Role.VIEWER, subject="s", org="o", site=None)
    store.check(token, now=100.0)
    store.check(token, now=130.0)
    assert store.list()[0].last_used == 100.0
    store.check(token, now=161.0)
    assert store.list()[0].last_used == 161.0


def test_subject_is_required(store: TokenStore) -> None:
    with pytest.raises(TokenError, match="subject"):
        store.create(Role.VIEWER, subject=" ", org="o", site=None)


def _p(role: Role, org: str = "acme", site: str | None = "mill") -> Principal:
    return Principal("x", role, org, site, "t1")


@pytest.mark.parametrize(
    ("principal", "public", "restricted", "private"),
    [
        (_p(Role.VIEWER), True, True, False),
        (_p(Role.TECHNICIAN), True, True, False),
        (_p(Role.ADMIN), True, True, True),
        (_p(Role.VIEWER, site=None), True, True, False),  # every site of the org
        (_p(Role.ADMIN, site=None), True, True, False),  # private: this very site only
        (_p(Role.ADMIN, site="other-mill"), True, False, False),
        (_p(Role.ADMIN, org="rival"), True, False, False),
    ],
)
def test_data_class_visibility(
    store: TokenStore, principal: Principal, public: bool, restricted: bool, private: bool
) -> None:
    access = AccessControl(store, org="acme", site="mill")
    assert access.can_see(principal, DataClass.PUBLIC) is public
    assert access.can_see(principal, DataClass.RESTRICTED) is restricted
    assert access.can_see(principal, "private") is private


def test_failure_limiter_blocks_then_releases() -> None:
    now = [0.0]
    lim = FailureLimiter(limit=3, window=60.0, clock=lambda: now[0])
    for i in range(3):
        assert lim.retry_after("10.0.0.1") is None
        now[0] = float(i)
        lim.failed("10.0.0.1")
    assert lim.retry_after("10.0.0.1") == pytest.approx(60.0 - 2.0)
    assert lim.retry_after("10.0.0.2") is None  # per address
    now[0] = 60.5  # the first failure left the window
    assert lim.retry_after("10.0.0.1") is None


def test_failure_limiter_memory_is_bounded() -> None:
    now = [0.0]
    lim = FailureLimiter(limit=2, window=60.0, max_clients=3, clock=lambda: now[0])
    for i in range(10):
        now[0] = float(i)
        lim.failed(f"10.0.0.{i}")
    assert len(lim._failures) == 3
