"""A real external server (Mosquitto, VictoriaMetrics) run by a test: one process, its log
file, start until ready, SIGTERM stop, SIGKILL crash, restart on the same port and data.

Subclasses give the command line (`command()`) and how readiness is known (`ready()`); the
process handling, which must be the same for every server the tests depend on, lives here.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from typing import Self


class ServerProcess:
    #: Shown in failure messages.
    label = "server"
    host = "127.0.0.1"
    log_path: Path

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        """True once the server serves what the tests need (probed every 20 ms)."""
        raise NotImplementedError

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 15.0) -> None:
        """Start the process and return once `ready()`; fail with the log otherwise."""
        if self.running:
            return
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C in the terminal goes to pytest, not here
            )
        deadline = time.monotonic() + timeout
        while not self.ready():
            if self._proc.poll() is not None:
                raise AssertionError(
                    f"{self.label} exited ({self._proc.returncode}):\n{self.log()}"
                )
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"{self.label} not ready in {timeout} s:\n{self.log()}")
            time.sleep(0.02)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM: the server saves what it holds and exits (SIGKILL after `timeout`)."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def kill(self) -> None:
        """SIGKILL: a crash. Whatever it had not saved is gone."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(5)

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return "(no log)"

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
