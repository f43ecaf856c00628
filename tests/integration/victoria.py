"""A real VictoriaMetrics for integration tests: free loopback port, storage in a tmp folder.

    vm = VictoriaMetrics(tmp_path)
    vm.start()                  # returns once /health answers OK
    vm.url                      # http://127.0.0.1:<port>: the InfluxDB v2 write API is
                                # <url>/api/v2/write, as for InfluxDB itself
    vm.export('{__name__=~"millrace_.*"}')  # -> [Series(name, labels, values, timestamps)]
    vm.stop(); vm.start()       # same port, same data folder: an outage and a recovery
    vm.kill()                   # SIGKILL: a crash

VictoriaMetrics is not InfluxDB; what it does with the line protocol it accepts (1.79.5, the
Debian package `make test` installs):

* `measurement,tags field=v ts` becomes the metric `measurement_field` with the tags as
  labels: `millrace,point=p value=1.5,quality=0i,id=7i` is three series, `millrace_value`,
  `millrace_quality` and `millrace_id`, each labelled `point="p"`. The `org` and `bucket`
  query arguments of /api/v2/write are ignored (no label is added for them).
* Every value is a float64: `42i` reads back as 42, `true`/`false` as 1/0.
* String fields carry no number, so the text is lost: 1.79.5 (observed here) stores a string
  field as the value 0 (the `millrace_value` series of a text point reads 0, and a
  `millrace_nonfinite` series appears with 0 for NaN/Inf readings); other releases drop
  string fields altogether. Their readings' `id` and `quality` arrive either way.
* Timestamps are kept in milliseconds (`-influxTrimTimestamp`, 1ms at least): the ns sent
  are cut to ms.
* Duplicates are kept: a sample sent twice reads back twice (same timestamp, same value),
  unless `-dedup.minScrapeInterval` is set. That makes at-least-once resends visible.
* A line it cannot parse is logged and skipped while the request still answers 204: it never
  answers 400, 413 or 429 to the write API, so those answers are tested against a stub.
* Freshly written rows become searchable after an in-memory flush (about a second);
  `export()` calls `/internal/force_flush` first so a test reads what it wrote at once.

The binary is a test dependency that `make test` installs (`make system-deps`); when it is
missing the tests FAIL (never skip), so CI can never pass without the real server.

Fixtures: `victoria` (started) and `victoria_factory` (every server it made is stopped).
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.integration.server_process import ServerProcess

MISSING = "victoria-metrics is not installed: run make test, which installs it"
_FALLBACKS = ("/usr/bin/victoria-metrics", "/usr/local/bin/victoria-metrics")


def _binary() -> str:
    found = shutil.which("victoria-metrics") or next(
        (p for p in _FALLBACKS if os.access(p, os.X_OK)), None
    )
    if found is None:
        pytest.fail(MISSING, pytrace=False)
    return found


@dataclass(frozen=True)
class Series:
    """One exported time series: metric name, labels (without __name__), samples in order."""

    name: str
    labels: dict[str, str]
    values: list[float]
    timestamps: list[int]  # milliseconds
    samples: list[tuple[int, float]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "samples", list(zip(self.timestamps, self.values, strict=True)))


class VictoriaMetrics(ServerProcess):
    """One victoria-metrics process; see the module docstring."""

    label = "victoria-metrics"

    def __init__(self, folder: Path, *, extra_flags: tuple[str, ...] = ()) -> None:
        self.binary = _binary()
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.data_path = folder / "data"
        self.log_path = folder / "victoria-metrics.log"
        self.flags = [
            f"-httpListenAddr={self.host}:{self.port}",
            f"-storageDataPath={self.data_path}",
            # Tests write fixed timestamps (2023); samples outside retention are refused.
            "-retentionPeriod=100y",
            # Never serve a cached query answer: what a test reads is what is stored now.
            "-search.disableCache",
            "-loggerLevel=INFO",
            *extra_flags,
        ]
        super().__init__()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        return [self.binary, *self.flags]

    def ready(self) -> bool:
        """`/health` answers OK."""
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=0.5) as resp:
                return resp.status == 200 and resp.read().strip() == b"OK"
        except OSError:
            return False

    def _call(self, path: str, data: bytes | None = None, timeout: float = 10.0) -> bytes:
        request = urllib.request.Request(f"{self.url}{path}", data=data)
        if data is not None:
            request.add_header("Content-Type", "application/x-www-form-urlencoded")
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.read()

    def flush(self) -> None:
        """Make every row received so far searchable (VictoriaMetrics' force_flush)."""
        self._call("/internal/force_flush")

    def export(self, match: str = '{__name__!=""}') -> list[Series]:
        """Every series matching the selector, with all raw samples (duplicates included),
        through `/api/v1/export` (one JSON object per line)."""
        self.flush()
        body = urllib.parse.urlencode({"match[]": match}).encode()
        out: list[Series] = []
        for raw in self._call("/api/v1/export", body).splitlines():
            if not raw.strip():
                continue
            obj = json.loads(raw)
            labels = dict(obj["metric"])
            name = labels.pop("__name__")
            out.append(Series(name, labels, obj["values"], obj["timestamps"]))
        out.sort(key=lambda s: (s.name, sorted(s.labels.items())))
        return out


VictoriaFactory = Callable[..., VictoriaMetrics]


@pytest.fixture
def victoria_factory(tmp_path: Path) -> Iterator[VictoriaFactory]:
    """Build servers with your own flags (`extra_flags=`); started, stopped at the end."""
    made: list[VictoriaMetrics] = []

    def make(**options: object) -> VictoriaMetrics:
        vm = VictoriaMetrics(tmp_path / f"victoria-{len(made)}", **options)  # type: ignore[arg-type]
        made.append(vm)
        vm.start()
        return vm

    yield make
    for vm in made:
        vm.stop()


@pytest.fixture
def victoria(victoria_factory: VictoriaFactory) -> VictoriaMetrics:
    """A started VictoriaMetrics on a free loopback port, storage in tmp."""
    return victoria_factory()
