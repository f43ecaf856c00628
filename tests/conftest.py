"""Shared fixtures. Every test runs under two leak checks (STYLE 13): no asyncio task may
outlive an async test, and no non-daemon thread may outlive any test."""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(autouse=True)
def _no_leaked_threads() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 3.0
    while True:
        leaked = [
            t
            for t in threading.enumerate()
            if t not in before
            and t.is_alive()
            and not t.daemon
            # the event loop's default executor: joined when pytest-asyncio closes the loop
            and not t.name.startswith("asyncio_")
        ]
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not leaked, f"test leaked threads: {[t.name for t in leaked]}"


@pytest_asyncio.fixture
async def _no_leaked_tasks() -> AsyncIterator[None]:
    yield
    me = asyncio.current_task()
    # A task still winding down (a cancelled commit waiting on the store's thread) on a busy
    # machine gets a few seconds; one that never ends is what this check is for.
    deadline = time.monotonic() + 5.0
    while True:
        others = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
        if not others or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    names = [t.get_name() + ":" + repr(t.get_coro()) for t in others]
    for t in others:
        t.cancel()
    assert not others, f"test leaked asyncio tasks: {names}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fn = getattr(item, "obj", None)
        if fn is not None and inspect.iscoroutinefunction(fn):
            item.fixturenames.insert(0, "_no_leaked_tasks")  # type: ignore[attr-defined]


@pytest.fixture
def pty_pair(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """Two linked pseudo-terminals (a virtual null-modem cable) for Modbus RTU tests.

    socat is a test dependency that `make test` installs; its absence is a failure, not a
    skip, so CI can never pass without exercising RTU."""
    socat = shutil.which("socat")
    assert socat is not None, "socat is not installed: run `make test`, which installs it"
    a, b = tmp_path / "ttyA", tmp_path / "ttyB"
    proc = subprocess.Popen(
        [socat, "-d", "-d", f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 5
        while not (a.exists() and b.exists()):
            assert proc.poll() is None, "socat exited"
            assert time.monotonic() < deadline, "socat did not create the pty pair"
            time.sleep(0.02)
        yield os.fspath(a), os.fspath(b)
    finally:
        proc.terminate()
        proc.wait(timeout=5)


# -- fuzz report: how many inputs each fuzz target was given (issue 8 asks for the number) --
# Under pytest-xdist every worker counts its own; each hands its counts to the controller
# when it finishes, and the controller prints the sum.


def pytest_sessionfinish(session: pytest.Session) -> None:
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        from tests.fuzz._fuzz import TRIED

        workeroutput["fuzz_tried"] = dict(TRIED)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: object, error: object) -> None:
    from tests.fuzz._fuzz import TRIED

    TRIED.update(getattr(node, "workeroutput", {}).get("fuzz_tried", {}))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    from tests.fuzz._fuzz import PROFILE, TRIED

    if not TRIED:
        return
    total = sum(TRIED.values())
    terminalreporter.write_sep("-", f"fuzz ({PROFILE} profile): {total} inputs tried")
    for target, n in sorted(TRIED.items()):
        terminalreporter.write_line(f"  {target:<40} {n:>8}")
    path = os.environ.get("FUZZ_REPORT")
    if path:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"profile": PROFILE, "total": total, "targets": dict(TRIED)}, f, indent=1)
