"""The technician's page in a real headless Chromium (Debian's `chromium`, driven by
Playwright's Python package with that system browser; `make test` installs both), against one
`millrace demo` process with its own data folder and one browser for the whole module:

- the page loads from the demo and live values change on screen;
- switching the language changes the text (zh-CN ↔ en) and is remembered;
- a viewer is offered no registration form and no audit log, an admin sees the audit log;
- a machine registered through the form, after the API's own validation marked a field,
  appears in the list and reaches the reference pool (asked through the pool's HTTP API);
- the commissioning check runs from the page;
- the red lost-connection banner appears when the gateway goes silent and goes when it is
  back, and appears when the gateway stops (last: it stops the demo).

Screenshots of every view (phone 390x844, and the desktop) go to `build/screenshots/`, or
to `$MILLRACE_ARTIFACTS`. All tests share one xdist group: one demo, one browser.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from gateway.auth import Role, TokenStore
from tests.conftest import free_port

pytestmark = [pytest.mark.xdist_group("browser"), pytest.mark.slow]

ROOT = Path(__file__).parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1366, "height": 900}
ARTIFACTS = Path(os.environ.get("MILLRACE_ARTIFACTS") or ROOT / "build" / "screenshots")
#: The reference pool's built-in demo token of a cooperative (simulators/central_pool.py).
POOL_READER = "coop-token"


@dataclass
class Demo:
    url: str
    pool_url: str
    data_dir: Path
    proc: subprocess.Popen[str]
    tokens: dict[str, str]
    output: list[str] = field(default_factory=list)


def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (OSError, ValueError) as exc:  # not up yet
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last {last!r})")


def wait_for_trend(page: Any, scope: str, timeout: float = 20_000) -> None:
    """Wait until some trend under `scope` is drawn through at least two points.

    Not Playwright's visibility: a flat series (a pump at rest) is drawn as a horizontal
    line, whose bounding box has no height, so Playwright calls it hidden while a person
    sees it plainly.
    """
    page.wait_for_function(
        "sel => [...document.querySelectorAll(sel)].some("
        "l => (l.getAttribute('points') || '').trim().split(/\\s+/).length >= 2)",
        arg=f"{scope} svg.trend polyline",
        timeout=timeout,
    )


def http_json(url: str, token: str) -> Any:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())


@dataclass
class _Started:
    proc: subprocess.Popen[str]
    port: int
    data_dir: Path
    output: list[str]


@pytest.fixture(scope="module")
def demo_started(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Started]:
    """`millrace demo` on a free port with its own data folder, just started (the browser
    launches while it boots); stopped at the end unless a test stopped it."""
    port = free_port()
    data_dir = tmp_path_factory.mktemp("demo")
    command = [sys.executable, "-m", "gateway.cli", "demo", "--port", str(port)]
    proc = subprocess.Popen(
        [*command, "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )
    output: list[str] = []

    def drain() -> None:  # the demo logs a lot; a full pipe would stall it
        assert proc.stdout is not None
        for line in proc.stdout:
            output.append(line)

    threading.Thread(target=drain, name="demo-output", daemon=True).start()
    try:
        yield _Started(proc, port, data_dir, output)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


@pytest.fixture(scope="module")
def demo(demo_started: _Started, browser: Any) -> Demo:
    """The demo once it serves: its URL, the pool's, and admin, viewer, technician tokens."""
    proc, output = demo_started.proc, demo_started.output

    def pool_line() -> str | None:
        assert proc.poll() is None, "the demo exited:\n" + "".join(output[-40:])
        return next((x for x in output if "reference central pool on" in x), None)

    line = wait_for(pool_line, 90, "the demo's banner")
    pool_url = re.search(r"pool on (http://\S+)", line).group(1)  # type: ignore[union-attr]
    tokens = json.loads((demo_started.data_dir / "demo-tokens.json").read_text())
    url = f"http://127.0.0.1:{demo_started.port}"
    me = http_json(url + "/whoami", tokens["admin"])
    # the demo makes an admin and a viewer; a technician comes from the same token store
    store = TokenStore(demo_started.data_dir / "tokens.db")
    try:
        tokens["technician"], _ = store.create(
            Role.TECHNICIAN, subject="e2e-technician", org=me["org"], site=me["site"]
        )
    finally:
        store.close()
    return Demo(url, pool_url, demo_started.data_dir, proc, tokens, output)


@pytest.fixture(scope="module")
def browser(demo_started: _Started) -> Iterator[Any]:
    """One headless Chromium for the module (started while the demo boots)."""
    assert CHROMIUM.exists(), (
        f"{CHROMIUM} is missing: the page's browser tests need Debian's chromium package; "
        "`make test` installs it (apt-get install chromium)"
    )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:  # pragma: no cover - the dev extra has it
        pytest.fail("playwright is missing: `make test` installs the dev extra (.[dev])")
    with sync_playwright() as pw:
        # launch() starts with a fresh, throw-away profile (user-data dir) every time
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


class Session:
    """A fresh browser context (own storage) with one page, and the page's script errors."""

    def __init__(self, browser: Any, demo: Demo, viewport: dict[str, int] = PHONE) -> None:
        self.demo = demo
        self.context = browser.new_context(
            viewport=viewport, locale="zh-CN", timezone_id="Asia/Shanghai"
        )
        self.context.set_default_timeout(15_000)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))

    def sign_in(self, role: str) -> Any:
        page = self.page
        page.goto(self.demo.url + "/")
        page.wait_for_selector("#signin:not([hidden])")
        page.fill("#token", self.demo.tokens[role])
        page.click("#signin-form button[type=submit]")
        page.wait_for_selector("#tabs:not([hidden])")
        return page

    def go(self, route: str) -> Any:
        self.page.evaluate("r => { location.hash = r; }", route)
        return self.page

    def shot(self, name: str) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)

    def close(self) -> None:
        self.context.close()
        assert not self.errors, f"script errors on the page: {self.errors}"


@pytest.fixture
def session(browser: Any, demo: Demo) -> Iterator[Session]:
    s = Session(browser, demo)
    try:
        yield s
    finally:
        s.close()


# -- tests, in the order they run (the last one stops the demo) ----------------------------


def test_page_loads_from_the_demo_and_live_values_change(session: Session) -> None:
    page = session.page
    page.goto(session.demo.url + "/")
    assert page.url.endswith("/ui/")
    page.wait_for_selector("#signin:not([hidden])")
    assert page.evaluate("document.documentElement.lang") == "zh-CN"
    assert page.inner_text("#signin h1") == "登录"
    assert "demo-gw-01" in page.inner_text("#signin-gateway")
    session.sign_in("admin")

    online = page.locator("[data-card=devices_online] .big")
    online.wait_for()
    assert re.fullmatch(r"\d+ / \d+", online.inner_text())
    page.wait_for_function(
        "() => { const t = document.querySelector('[data-card=devices_online] .big')"
        ".textContent.split(' / '); return Number(t[0]) > 5 && t[0] === t[1]; }",
        timeout=30_000,
    )
    assert page.is_visible("#conn-dot.up") and page.is_hidden("#banner")
    session.shot("overview-phone")

    session.go("#/devices")
    page.click("details[data-device='pump-1'] > summary")
    cell = page.locator("td[data-point='pump-1.flow_rate']")
    page.wait_for_function(
        "el => /\\d/.test(el.textContent)", arg=cell.element_handle(), timeout=15_000
    )
    first = cell.inner_text()
    assert first.endswith("m3/h")
    # the live stream changes the numbers on screen, without reloading (any of the pump's:
    # a stopped pump's flow rests at 0 for a while, its other values keep moving)
    values = "td[data-point^='pump-1.']"
    before = page.eval_on_selector_all(values, "els => els.map(e => e.textContent).join('|')")
    page.wait_for_function(
        "([sel, before]) => [...document.querySelectorAll(sel)]"
        ".map(e => e.textContent).join('|') !== before",
        arg=[values, before],
        timeout=20_000,
    )
    # a trend drawn from history and the stream (any of the pump's moving values)
    wait_for_trend(page, "details[data-device='pump-1'] tr[data-point-row]")
    assert page.inner_text("details[data-device='pump-1'] .badge") == "在线"
    session.shot("devices-phone")

    session.go("#/models")
    page.wait_for_selector("[data-model='mill1-pdm']")
    page.wait_for_function(
        "() => /p99 [0-9.]+ ms/.test(document.querySelector('[data-model=mill1-pdm]').textContent)"
    )
    assert page.locator("section.model").count() == 4
    session.shot("models-phone")


def test_stream_parser_takes_events_split_anywhere(session: Session) -> None:
    """The page's SSE parser (live.js), in the browser: CRLF, CR and LF line ends, events
    and comments cut at any byte, multi-line data."""
    page = session.page
    page.goto(session.demo.url + "/ui/")
    stream = (
        ': heartbeat 1\r\nevent: points\r\ndata: {"a":\r\ndata: 1}\r\n\r\n'
        "event: bye\rdata: {}\r\rdata: x\n\n"
    )
    got = page.evaluate(
        """async (text) => {
            const { SseParser } = await import("./live.js");
            const out = [];
            for (let cut = 1; cut < text.length; cut++) {
                const events = [], comments = [];
                const p = new SseParser((n, d) => events.push([n, d]), (c) => comments.push(c));
                p.push(text.slice(0, cut));
                p.push(text.slice(cut));
                out.push(JSON.stringify([events, comments]));
            }
            return [...new Set(out)];
        }""",
        stream,
    )
    assert len(got) == 1, got
    events, comments = json.loads(got[0])
    assert events == [["points", '{"a":\n1}'], ["bye", "{}"], ["message", "x"]]
    assert comments == ["heartbeat 1"]


def test_switching_language_changes_the_text_and_is_remembered(session: Session) -> None:
    page = session.sign_in("viewer")
    tab = page.locator("#tabs a[data-view=overview]")
    assert tab.inner_text() == "总览"
    assert page.inner_text("#who").startswith("查看者")
    page.click("#lang-toggle")
    assert tab.inner_text() == "Overview"
    assert page.evaluate("document.documentElement.lang") == "en"
    assert page.inner_text("#who").startswith("Viewer")
    page.wait_for_selector("[data-card=devices_online] h2:text('Devices online')")
    # a reload keeps the language (localStorage) and the sign-in (sessionStorage)
    page.reload()
    page.wait_for_selector("#tabs:not([hidden])")
    assert tab.inner_text() == "Overview"
    session.go("#/equipment")
    page.wait_for_selector("section.machine")
    assert "Status" in page.inner_text("section.machine dl")
    session.shot("equipment-phone-en")
    page.click("#lang-toggle")
    assert tab.inner_text() == "总览" and page.inner_text("#lang-toggle") == "EN"
    assert page.evaluate("document.documentElement.lang") == "zh-CN"
    assert "状态" in page.inner_text("section.machine dl")


def test_viewer_gets_no_form_and_no_audit_admin_gets_audit(
    session: Session, browser: Any, demo: Demo
) -> None:
    page = session.sign_in("viewer")
    assert page.is_hidden("#tabs a[data-view=commissioning]")
    assert page.is_hidden("#tabs a[data-view=audit]")
    session.go("#/equipment")
    page.wait_for_selector("section.machine")
    assert page.locator("#register-machine").count() == 0
    assert page.locator("section.machine a:text('编辑')").count() == 0
    for route in ("#/equipment/new", "#/audit", "#/commissioning"):
        session.go(route)
        page.wait_for_function("() => location.hash === '#/overview'")
        assert page.locator("#machine-form").count() == 0
        assert page.locator("table.audit").count() == 0

    admin = Session(browser, demo)
    try:
        page = admin.sign_in("admin")
        assert page.is_visible("#tabs a[data-view=audit]")
        admin.go("#/audit")
        page.wait_for_selector("table.audit tbody tr[data-seq]")
        assert "token.create" in page.inner_text("table.audit")
        admin.shot("audit-phone")
    finally:
        admin.close()


def test_machine_registered_through_the_form_reaches_the_pool(session: Session) -> None:
    demo = session.demo
    page = session.sign_in("technician")
    session.go("#/equipment")
    page.click("#register-machine")
    page.wait_for_selector("#machine-form")
    page.fill("[name=id]", "harvester-e2e")
    page.select_option("[name=type]", "sugarcane_harvester")
    page.fill("[name=make]", "Case IH")
    page.check("[name='sharing.shared']")
    # the API's validation (POST /equipment/validate) marks the field it names
    problem = page.locator("fieldset[data-field=sharing] > .field-error")
    problem.wait_for(state="visible")
    # in the page's language, from the problem's code (the API's English line is the fallback)
    # what it lacks, named as the form labels those fields
    assert "共享到撮合平台需要品牌、型号、所属组织和位置；缺少：型号、所属组织、位置" in (
        problem.inner_text()
    )
    assert "a shared machine needs" not in problem.inner_text()
    session.shot("equipment-form-phone")

    page.fill("[name=model]", "Austoft 8800")
    page.fill("[name='owner.org']", "Demo Cane Cooperative")
    page.fill("[name='owner.contact_name']", "Wang Fang")
    page.fill("[name='location.lat']", "22.6598")
    page.fill("[name='location.lon']", "107.9377")
    page.fill("[name='location.timezone']", "Asia/Shanghai")
    page.fill("[name=device]", "coop-broker")
    page.click("button:text('添加作业能力')")
    page.fill("[name='capabilities.0.name']", "harvesting")
    page.fill("[name='capabilities.0.capacity']", "35")
    page.fill("[name='capabilities.0.unit']", "t/h")
    page.click("button:text('添加可用时段')")
    page.fill("[name='sharing.weekly.0.end']", "05:00")
    end_error = page.locator("[data-field='sharing.weekly.0.end'] > .field-error")
    end_error.wait_for(state="visible")
    assert "必须晚于开始时间" in end_error.inner_text()
    assert "（当前值：05:00）" in end_error.inner_text()
    page.fill("[name='sharing.weekly.0.end']", "18:00")
    page.wait_for_function(
        "() => document.querySelector('#form-status').textContent === '网关校验通过'"
    )
    assert page.locator(".field-error:visible").count() == 0
    page.click("#form-submit")

    card = page.locator("section.machine[data-machine='harvester-e2e']")
    card.wait_for()
    assert "Austoft" not in card.inner_text()  # the list shows id, name, live state
    session.shot("equipment-phone")

    def at_pool() -> Any:
        try:
            return http_json(f"{demo.pool_url}/v1/machines/harvester-e2e", POOL_READER)
        except urllib.error.HTTPError as exc:
            assert exc.code == 404, exc
            return None

    machine = wait_for(at_pool, 30, "the machine at the reference pool")
    assert machine["make"] == "Case IH" and machine["model"] == "Austoft 8800"
    assert machine["owner_org"] == "Demo Cane Cooperative"
    assert machine["capabilities"] == [{"name": "harvesting", "capacity": 35.0, "unit": "t/h"}]
    assert machine["location"] == {"lat": 22.66, "lon": 107.94, "precision_m": 1113}
    assert machine["sharing"]["shared"] is True
    # the contact is private: it never left the box
    assert "Wang Fang" not in json.dumps(machine)


def test_commissioning_check_runs_from_the_page(session: Session) -> None:
    page = session.sign_in("technician")
    session.go("#/commissioning")
    page.click("#run-check")
    summary = page.locator("#check-summary")
    summary.wait_for(timeout=60_000)
    assert "点位正常" in summary.inner_text()
    assert page.locator("table.check-table tbody tr").count() > 20
    assert page.locator("table.check-table .badge:text('OK')").count() > 20
    session.shot("commissioning-phone")


def test_desktop_layout(browser: Any, demo: Demo) -> None:
    s = Session(browser, demo, viewport=DESKTOP)
    try:
        page = s.sign_in("admin")
        page.wait_for_selector("[data-card=devices_online]")
        s.shot("overview-desktop")
        s.go("#/devices")
        page.click("details[data-device='line-1'] > summary")
        wait_for_trend(page, "details[data-device='line-1']")
        s.shot("devices-desktop")
    finally:
        s.close()


def test_lost_connection_banner_when_the_gateway_goes(session: Session) -> None:
    demo = session.demo
    page = session.sign_in("viewer")
    page.wait_for_selector("#conn-dot.up")
    assert page.is_hidden("#banner")
    banner = page.locator("#banner")

    # silent (the box hangs, a cable is pulled): no heartbeat for ~2.5 of them
    demo.proc.send_signal(signal.SIGSTOP)
    try:
        banner.wait_for(state="visible", timeout=15_000)
        assert banner.inner_text().startswith("与网关的连接已断开")
        assert re.search(r"\d+ 秒前", page.inner_text("#banner-since"))
    finally:
        demo.proc.send_signal(signal.SIGCONT)
    banner.wait_for(state="hidden", timeout=20_000)  # back: the stream reopened by itself

    # stopped: the stream ends at once
    demo.proc.send_signal(signal.SIGINT)
    banner.wait_for(state="visible", timeout=15_000)
    assert page.is_visible("#conn-dot.down")
    session.shot("lost-connection-phone")
    assert demo.proc.wait(timeout=30) == 0
