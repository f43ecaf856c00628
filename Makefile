# Millrace: two commands matter. `make demo` runs the gateway on embedded defaults;
# `make test` installs what the tests need (Python packages and socat) and runs them.
# Both create ./.venv on first use with the python3 on PATH (3.11 or newer).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q

.PHONY: demo test fuzz bench soak lint fmt clean system-deps venv check-arm64 image

$(VENV)/.created:
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Millrace needs Python 3.11 or newer, found " + sys.version.split()[0]'
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	@touch $@

$(VENV)/.runtime: $(VENV)/.created pyproject.toml
	$(PIP) install -e .
	@touch $@

$(VENV)/.dev: $(VENV)/.runtime pyproject.toml
	$(PIP) install -e '.[dev]'
	@touch $@

venv: $(VENV)/.dev

## demo: simulators + gateway + local API on http://127.0.0.1:8080 (Ctrl-C stops)
demo: $(VENV)/.runtime
	$(VENV)/bin/millrace demo

## test: install test dependencies (Python packages, system tools) and run the whole suite
# Most tests wait on sockets and timers, not the CPU, so four workers finish in about half the
# time even on two cores (TEST_WORKERS=0 runs them in one process, in order).
TEST_WORKERS ?= 4
test: $(VENV)/.dev system-deps
	$(PY) -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadgroup

## fuzz: the hostile-input suite with 20x the CI examples (HYPOTHESIS_PROFILE=deep); counts in .hypothesis/fuzz-report.json
fuzz: $(VENV)/.dev system-deps
	HYPOTHESIS_PROFILE=deep FUZZ_REPORT=.hypothesis/fuzz-report.json $(PY) -m pytest -q -p no:cacheprovider \
	  tests/fuzz tests/integration/test_hostile_api.py

## bench: gateway workloads (Modbus, OPC UA, MQTT, uplinks, capacity) and every model; prints tables (BENCH_ONLY=capacity, BENCH_JSON=file)
bench: $(VENV)/.dev
	$(PY) -m tests.bench.run

## soak: mixed workload for SOAK_MINUTES (30), sampled every SOAK_INTERVAL s (10); fails if RSS, fds, threads or the outbox keep growing or a reading is lost; build/soak/soak.{csv,json,svg}
soak: $(VENV)/.dev system-deps
	$(PY) -m tests.soak.run

## check-arm64: every runtime dependency installs on linux/aarch64 with Python 3.11 (names the one that does not)
check-arm64: $(VENV)/.created
	$(PY) deploy/check_arm64.py --python-version 3.11

## image: build the image with buildah on a debootstrap'd Debian bookworm base, run it, ask /health
image:
	bash deploy/image.sh

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

fmt: $(VENV)/.dev
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# socat makes the pseudo-terminal pair the Modbus RTU tests run over; mosquitto is the real
# broker the MQTT tests start on a free port; victoria-metrics is the real InfluxDB-write-API
# server the influx uplink tests start on a free port (their system services are not used).
# chromium is the browser the page's end-to-end tests drive (Playwright, the system browser);
# a CJK font makes their Chinese screenshots readable.
SYSTEM_TOOLS := socat:socat mosquitto:mosquitto victoria-metrics:victoria-metrics chromium:chromium
system-deps:
	@missing=""; for pair in $(SYSTEM_TOOLS); do \
	  cmd=$${pair%%:*}; pkg=$${pair##*:}; \
	  command -v $$cmd >/dev/null 2>&1 || [ -x /usr/sbin/$$cmd ] || [ -x /usr/bin/$$cmd ] || missing="$$missing $$pkg"; \
	done; \
	fc-list :lang=zh-cn 2>/dev/null | grep -q . || missing="$$missing fonts-wqy-microhei"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing (test dependencies)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

clean:
	rm -rf $(VENV) .millrace-demo .pytest_cache .ruff_cache .hypothesis
