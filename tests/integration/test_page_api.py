"""The API the technician's page stands on, over real HTTP (uvicorn inside the gateway, a real
Modbus simulator, real SQLite files): the page's files served open but locked down, `/whoami`,
the live event stream (what it carries, who sees what, that it ends when the client goes and
when the gateway stops, without holding up shutdown), the equipment dry run answering exactly
as the real calls do, and the commissioning check run from the API.

Every role on every one of these endpoints is in test_api_access.py's matrix."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.api_live import live_settings
from gateway.auth import Role
from gateway.equipment.model import Status
from gateway.runtime import Gateway
from gateway.web import assets
from simulators.modbus_plant import ModbusPlant
from tests.conftest import free_port
from tests.integration.gwutil import eventually, make_token, plant_config

MACHINE = {
    "id": "pump-2",
    "type": "pump",
    "name": "Spare pump",
    "make": "Generic",
    "model": "PS-VFD-1",
    "owner": {"org": "Test Co-op", "contact_name": "Li Wei", "phone": "+86 138 0000 0000"},
    "location": {"lat": 22.81, "lon": 108.36, "timezone": "Asia/Shanghai"},
    "sharing": {
        "shared": True,
        "weekly": [{"days": ["mon", "tue"], "start": "07:00", "end": "17:00"}],
    },
    "device": "pump-1",
}


@pytest.fixture
async def plant() -> AsyncIterator[ModbusPlant]:
    async with ModbusPlant.tcp(port=0) as p:
        yield p


@pytest.fixture
async def gw(plant: ModbusPlant, tmp_path: Path) -> AsyncIterator[Gateway]:
    """The pump on the simulator, a second device nobody answers for (its port is closed),
    one registered machine."""
    loaded = plant_config(tmp_path, plant.port)
    data = loaded.config.model_dump(mode="json", exclude_defaults=True)
    pump = next(d for d in data["devices"] if d["id"] == "pump-1")
    ghost = {**pump, "id": "ghost-1", "port": free_port()}
    # generous for the pump: a loaded test machine must not make it look down
    pump.update(timeout=2.0, down_after=5)
    data["devices"] = [pump, ghost]
    data["equipment"] = [
        {"id": "booster-pump-1", "type": "pump", "owner": "Test Co-op", "device": "pump-1"}
    ]
    from gateway.configload import load_config_data

    async with Gateway(load_config_data(data, base_dir=tmp_path)) as g:
        await eventually(lambda: g.latest.get("pump-1.flow_rate"), what="the pump's values")
        yield g


def _app(gw: Gateway) -> Any:
    return gw._api_server.config.app


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# -- the page's files --------------------------------------------------------------------


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.inline_scripts = 0
        self.style_attrs = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        for key in ("src", "href"):
            if a.get(key) and not a[key].startswith("#"):  # type: ignore[union-attr]
                self.refs.append(a[key])  # type: ignore[arg-type]
        if tag == "script" and not a.get("src"):
            self.inline_scripts += 1
        if "style" in a:
            self.style_attrs += 1


async def test_page_files_are_open_offline_and_locked_down(gw: Gateway) -> None:
    async with httpx.AsyncClient(base_url=gw.api_url) as api:
        r = await api.get("/")
        assert r.status_code == 307 and r.headers["location"] == "/ui/"
        assert (await api.get("/ui")).headers["location"] == "/ui/"
        page = await api.get("/ui/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        policy = page.headers["content-security-policy"]
        csp = dict(part.strip().split(" ", 1) for part in policy.split(";"))
        assert csp["default-src"] == "'none'"
        for directive in ("script-src", "style-src", "connect-src"):
            assert csp[directive] == "'self'", directive
        assert csp["frame-ancestors"] == "'none'" and csp["base-uri"] == "'none'"
        assert "unsafe" not in policy
        assert page.headers["x-content-type-options"] == "nosniff"
        assert page.headers["cache-control"] == "no-cache"
        assert page.headers["referrer-policy"] == "no-referrer"
        etag = page.headers["etag"]
        again = await api.get("/ui/", headers={"If-None-Match": etag})
        assert again.status_code == 304 and not again.content
        head = await api.head("/ui/app.js")
        assert head.status_code == 200 and int(head.headers["content-length"]) > 1000

        # everything the page loads, and everything its modules import, is served from here
        refs = _Refs()
        refs.feed(page.text)
        assert refs.inline_scripts == 0 and refs.style_attrs == 0
        wanted = set(refs.refs)
        for name, asset in assets().items():
            if name.endswith(".js"):
                wanted |= set(re.findall(r'from "\./([\w.]+)"', asset.body.decode()))
        wanted |= {"messages.json"}
        for ref in sorted(wanted):
            assert not ref.startswith(("http:", "https:", "//")), ref
            r = await api.get(f"/ui/{ref}")
            assert r.status_code == 200, ref
            assert r.headers["content-security-policy"] and r.headers["etag"]
            kind = {"js": "text/javascript", "css": "text/css", "json": "application/json"}
            suffix = ref.rsplit(".", 1)[-1]
            if suffix in kind:
                assert r.headers["content-type"].startswith(kind[suffix]), ref

        # no data, no other files
        for path in ("/ui/missing.js", "/ui/..%2Fapi.py", "/ui/%2E%2E/gateway.yaml"):
            assert (await api.get(path)).status_code == 404, path
        assert (await api.get("/ui/static/app.js")).status_code == 404

    # offline: nothing the page ships names another host (the SVG namespace is a name)
    for name, asset in assets().items():
        text = asset.body.decode()
        hosts = set(re.findall(r"https?://[^\s\"'`)]+", text)) - {"http://www.w3.org/2000/svg"}
        assert not hosts, (name, hosts)


def test_every_file_the_page_needs_ships_with_the_package() -> None:
    """`pip install .` and the image take package data from pyproject's package-data glob."""
    import tomllib

    root = Path(__file__).parents[2]
    pyproject = tomllib.loads((root / "pyproject.toml").read_text())
    globs = pyproject["tool"]["setuptools"]["package-data"]["gateway"]
    static = root / "gateway" / "web" / "static"
    shipped = {p.name for g in globs for p in (root / "gateway").glob(g) if p.is_file()}
    on_disk = {p.name for p in static.iterdir() if p.is_file()}
    assert on_disk <= shipped
    assert set(assets()) == on_disk


# -- /whoami -------------------------------------------------------------------------------


async def test_whoami_says_what_each_role_may_do(gw: Gateway) -> None:
    async with httpx.AsyncClient(base_url=gw.api_url) as api:
        assert (await api.get("/whoami")).status_code == 401
        seen = {}
        for role in Role:
            token = make_token(gw.loaded, role, subject=f"{role}-person")
            r = await api.get("/whoami", headers=_auth(token))
            assert r.status_code == 200
            seen[role] = r.json()
    viewer, tech, admin = seen[Role.VIEWER], seen[Role.TECHNICIAN], seen[Role.ADMIN]
    assert viewer["role"] == "viewer" and viewer["subject"] == "viewer-person"
    assert viewer["site"] == "test-site" and viewer["gateway"] == "test-gw"
    assert len(viewer["token_id"]) == 12
    assert not any(viewer["can"][k] for k in ("register_equipment", "commissioning", "audit"))
    assert tech["can"]["register_equipment"] and tech["can"]["commissioning"]
    assert not tech["can"]["audit"] and not tech["can"]["private_data"]
    assert admin["can"]["audit"] and admin["can"]["private_data"]


# -- the live stream -----------------------------------------------------------------------


class Events:
    """A real client of GET /events: httpx streaming and a small SSE parser."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.lines = response.aiter_lines()
        self.comments: list[str] = []

    async def next(self, timeout: float = 10.0) -> tuple[str, Any] | None:
        """The next event (name, data), or None when the stream ended."""
        event, data = "message", []
        async with asyncio.timeout(timeout):
            async for line in self.lines:
                if line == "":
                    if data:
                        return event, json.loads("\n".join(data))
                    continue
                if line.startswith(":"):
                    self.comments.append(line[1:].strip())
                elif line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())
        return None

    async def until(self, name: str, timeout: float = 10.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            got = await self.next(max(0.1, deadline - time.monotonic()))
            assert got is not None, f"the stream ended before a {name!r} event"
            if got[0] == name:
                return got[1]


async def test_events_carry_the_live_state(gw: Gateway) -> None:
    live_settings(_app(gw)).heartbeat_s = 0.3
    viewer = make_token(gw.loaded, Role.VIEWER)
    rival = make_token(gw.loaded, Role.ADMIN, org="rival")
    async with (
        httpx.AsyncClient(base_url=gw.api_url, timeout=10) as api,
        api.stream("GET", "/events", headers=_auth(viewer)) as r,
    ):
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["cache-control"] == "no-store"
        ev = Events(r)
        name, hello = await ev.next()  # type: ignore[misc]
        assert name == "hello" and hello["role"] == "viewer" and hello["gateway"] == "test-gw"
        first = await ev.until("points")
        # the first holds every point seen so far; a restricted point is there for own-org
        await eventually(lambda: gw.latest.get("pump-1.drive_serial"), what="the serial read")
        seen: dict[str, Any] = dict(first)
        kinds: set[str] = set()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (
            {"devices", "models", "equipment", "overview"} <= kinds
            and {"pump-1.drive_serial", "pump-1.flow_rate", "ghost-1.flow_rate"} <= set(seen)
        ):
            got = await ev.next()
            assert got is not None
            kinds.add(got[0])
            if got[0] == "points":
                seen.update(got[1])
            if got[0] == "overview":
                overview = got[1]
            if got[0] == "devices":
                devices = {d["id"]: d for d in got[1]}
            if got[0] == "equipment":
                machines = {m["id"]: m for m in got[1]}
        assert "pump-1.flow_rate" in seen, sorted(seen)
        value, quality, ts_ms = seen["pump-1.flow_rate"][:3]
        assert isinstance(value, float) and quality == "good"
        assert abs(ts_ms / 1000 - time.time()) < 60
        assert devices["pump-1"]["state"] == "online" and devices["ghost-1"]["state"] != "online"
        assert overview["devices_total"] == 2 and overview["devices_online"] == 1
        assert overview["status"] == "degraded" and overview["alarms"] == []
        assert machines["booster-pump-1"]["type"] == "pump"
        assert machines["booster-pump-1"]["status"] in {s.value for s in Status}
        # new readings keep coming, and the heartbeat comment every 0.3 s
        later = await ev.until("points")
        assert later and all(len(row) >= 3 for row in later.values())
        await ev.until("points")
        assert any(c.startswith("heartbeat") for c in ev.comments)
        # a ghost device's bad readings carry the reason
        bad = [row for pid, row in seen.items() if pid.startswith("ghost-1.")]
        assert bad and all(row[1] == "bad" and row[3] for row in bad)

    # another organisation's admin never gets the restricted serial number
    async with (
        httpx.AsyncClient(base_url=gw.api_url, timeout=10) as api,
        api.stream("GET", "/events", headers=_auth(rival)) as r,
    ):
        ev = Events(r)
        points = await ev.until("points")
        assert "pump-1.flow_rate" in points and "pump-1.drive_serial" not in points


async def test_events_end_when_the_client_goes(gw: Gateway) -> None:
    live = live_settings(_app(gw))
    token = make_token(gw.loaded, Role.VIEWER)
    async with httpx.AsyncClient(base_url=gw.api_url, timeout=10) as api:
        streams = [api.stream("GET", "/events", headers=_auth(token)) for _ in range(3)]
        opened = [await s.__aenter__() for s in streams]
        # kept referenced: a reader dropped mid-stream is closed (and so is its connection)
        readers = [Events(r) for r in opened]
        for ev in readers:
            assert (await ev.next())[0] == "hello"  # type: ignore[index]
        assert live.open_streams == 3
        for s in streams:
            await s.__aexit__(None, None, None)
    await eventually(lambda: live.open_streams == 0, what="the streams to close")


async def test_open_pages_share_one_overview(gw: Gateway) -> None:
    """The overview reads the store once per uplink: four pages must not cost four reads.
    Each page asks for one every `summary_s`; the gateway builds at most one per half of it."""
    live = live_settings(_app(gw))
    live.summary_s = 0.4
    pages, window = 4, 2.0
    token = make_token(gw.loaded, Role.VIEWER)
    async with httpx.AsyncClient(base_url=gw.api_url, timeout=10) as api:
        streams = [api.stream("GET", "/events", headers=_auth(token)) for _ in range(pages)]
        readers = [Events(await s.__aenter__()) for s in streams]
        for ev in readers:
            assert (await ev.until("overview"))["devices_total"] == 2
        built = live.overviews_built
        await asyncio.sleep(window)
        made = live.overviews_built - built
        for s in streams:
            await s.__aexit__(None, None, None)
    asked = pages * window / live.summary_s  # what one build per page and round would cost
    print(f"\n{pages} pages, {window:g} s: {made} overviews built ({asked:g} unshared)")
    assert 1 <= made <= window / (live.summary_s / 2) + 1 < asked, (made, asked)


async def test_a_revoked_token_ends_its_open_stream(gw: Gateway) -> None:
    live = live_settings(_app(gw))
    live.heartbeat_s = 0.3
    token = make_token(gw.loaded, Role.VIEWER)
    other = make_token(gw.loaded, Role.VIEWER)
    principal = gw.access.tokens.check(token)
    assert principal is not None
    async with (
        httpx.AsyncClient(base_url=gw.api_url, timeout=10) as api,
        api.stream("GET", "/events", headers=_auth(token)) as revoked,
        api.stream("GET", "/events", headers=_auth(other)) as kept,
    ):
        cut, going = Events(revoked), Events(kept)
        assert (await cut.until("hello")) is not None
        assert (await going.until("hello")) is not None
        gw.access.tokens.revoke(principal.token_id)
        bye = await cut.until("bye", timeout=5)
        assert bye == {"reason": "token revoked or expired"}
        assert await cut.next(timeout=5) is None  # the server ended it
        # the other page keeps its stream
        await eventually(lambda: live.open_streams == 1, what="only the revoked stream to end")
        await asyncio.sleep(2 * live.heartbeat_s)
        assert live.open_streams == 1
        assert (await api.get("/events", headers=_auth(token))).status_code == 401


async def test_too_many_streams_are_refused(gw: Gateway) -> None:
    live = live_settings(_app(gw))
    live.max_streams = 1
    token = make_token(gw.loaded, Role.VIEWER)
    async with (
        httpx.AsyncClient(base_url=gw.api_url, timeout=10) as api,
        api.stream("GET", "/events", headers=_auth(token)) as first,
    ):
        reader = Events(first)  # kept: dropping it would close the first stream
        assert (await reader.next())[0] == "hello"  # type: ignore[index]
        async with api.stream("GET", "/events", headers=_auth(token)) as second:
            assert second.status_code == 503, live.open_streams
            assert second.headers["retry-after"]


async def test_gateway_stop_ends_open_streams_without_waiting(gw: Gateway) -> None:
    token = make_token(gw.loaded, Role.VIEWER)
    async with httpx.AsyncClient(base_url=gw.api_url, timeout=10) as api:
        streams = [api.stream("GET", "/events", headers=_auth(token)) for _ in range(2)]
        opened = [await s.__aenter__() for s in streams]
        events = [Events(r) for r in opened]
        for ev in events:
            assert (await ev.until("overview")) is not None
        t0 = time.monotonic()
        problems = await asyncio.wait_for(gw.stop(), 20)
        took = time.monotonic() - t0
        assert problems == [], problems
        assert took < 5, f"shutdown took {took:.1f}s with two pages open"
        for ev in events:
            # each stream says goodbye and ends (nothing hangs on it)
            names = []
            while (got := await ev.next(timeout=5)) is not None:
                names.append(got[0])
            assert names[-1:] == ["bye"], names
        for s in streams:
            await s.__aexit__(None, None, None)
        # a page that tries again is turned away
        try:
            again = await api.get("/events", headers=_auth(token))
        except httpx.HTTPError:
            pass
        else:
            assert again.status_code == 503 and "stopped" in again.json()["detail"]
    assert live_settings(_app(gw)).open_streams == 0


# -- equipment dry run ---------------------------------------------------------------------


async def test_validate_answers_exactly_as_the_real_calls(gw: Gateway) -> None:
    tech = make_token(gw.loaded, Role.TECHNICIAN)
    async with httpx.AsyncClient(base_url=gw.api_url, headers=_auth(tech), timeout=10) as api:
        bad_docs: list[Any] = [
            {**MACHINE, "sharing": {"shared": True}, "location": {}},
            {**MACHINE, "id": "bad id!", "type": "spaceship", "capabilities": [{"name": "X"}]},
            {
                **MACHINE,
                "sharing": {
                    **MACHINE["sharing"],
                    "weekly": [{"days": ["mon"], "start": "18:00", "end": "06:00"}],
                },
                "owner": {"org": "Test Co-op", "phone": "call me"},
            },
            {"id": "x"},
            [1, 2],
        ]
        for doc in bad_docs:
            dry = await api.post("/equipment/validate", json=doc)
            real = await api.post("/equipment", json=doc)
            assert dry.status_code == real.status_code == 422, (doc, dry.text)
            assert dry.json() == real.json()
        problems = (await api.post("/equipment/validate", json=bad_docs[2])).json()["detail"]
        assert any(p.startswith("sharing.weekly.0.end: ") for p in problems["problems"])
        assert any(p.startswith("owner.phone: ") and "***" in p for p in problems["problems"])
        # the same problems as data, for the page to say in the reader's language
        details = {d["path"]: d for d in problems["details"]}
        assert [d["message"] for d in problems["details"]] and len(details) == len(
            problems["problems"]
        )
        assert details["sharing.weekly.0.end"]["code"] == "window_end_before_start"
        assert details["sharing.weekly.0.end"]["params"] == {"start": "18:00"}
        assert details["owner.phone"]["code"] == "phone_format"
        assert details["owner.phone"]["got"] == "***" and "call me" not in json.dumps(details)
        for raw in (b"{not json", b"x" * 70_000):
            dry = await api.post("/equipment/validate", content=raw)
            real = await api.post("/equipment", content=raw)
            assert dry.status_code == real.status_code and dry.json() == real.json()
            assert dry.status_code in (400, 413)

        # a good document: the machine as it would be stored, and nothing stored
        ok = await api.post("/equipment/validate", json=MACHINE)
        assert ok.status_code == 200, ok.text
        normalized = ok.json()["machine"]
        assert normalized["sharing"]["min_booking_hours"] == 1.0
        assert normalized["owner"]["contact_name"] == "Li Wei"
        assert (await api.get("/equipment/pump-2")).status_code == 404
        created = await api.post("/equipment", json=MACHINE)
        assert created.status_code == 201
        dry, real = (
            await api.post("/equipment/validate", json=MACHINE),
            await api.post("/equipment", json=MACHINE),
        )
        assert dry.status_code == real.status_code == 409 and dry.json() == real.json()

        # an edit: merged into the stored machine as PATCH does
        patch = {"id": "pump-2", "name": "Renamed", "sharing": {"min_booking_hours": 3}}
        dry = await api.post("/equipment/validate?replaces=pump-2", json=patch)
        assert dry.status_code == 200
        merged = dry.json()["machine"]
        assert merged["name"] == "Renamed" and merged["sharing"]["shared"] is True
        assert merged["sharing"]["min_booking_hours"] == 3
        cases: list[tuple[dict[str, Any], str, str]] = [
            ({"id": "pump-9"}, "pump-2", "1"),  # the id cannot change
            ({"sharing": {"weekly": [{"days": [], "start": "7", "end": "x"}]}}, "pump-2", "1"),
            ({"name": "x"}, "pump-2", "7"),  # stale version
            ({"name": "x"}, "nope", "1"),  # unknown machine
        ]
        for body, mid, version in cases:
            dry = await api.post(
                f"/equipment/validate?replaces={mid}", json=body, headers={"If-Match": version}
            )
            real = await api.patch(f"/equipment/{mid}", json=body, headers={"If-Match": version})
            assert dry.status_code == real.status_code, (body, dry.text, real.text)
            assert dry.status_code in (404, 409, 422) and dry.json() == real.json()
        current = (await api.get("/equipment/pump-2")).json()
        assert current["version"] == 1 and current["machine"]["name"] == "Spare pump"
    actions = [e.action for e in gw.audit.entries(limit=1000)]
    assert actions.count("equipment.add") == 1  # the dry runs left no trace


# -- commissioning -------------------------------------------------------------------------


async def test_commissioning_runs_the_check_through_the_running_drivers(gw: Gateway) -> None:
    tech = make_token(gw.loaded, Role.TECHNICIAN, subject="tech-on-site")
    async with httpx.AsyncClient(base_url=gw.api_url, headers=_auth(tech), timeout=60) as api:
        r = await api.post("/commissioning")
        assert r.status_code == 200, r.text
        report = r.json()
        by_device: dict[str, list[dict[str, Any]]] = {}
        for line in report["results"]:
            by_device.setdefault(line["device"], []).append(line)
        assert all(x["ok"] for x in by_device["pump-1"])
        flow = next(x for x in by_device["pump-1"] if x["point"] == "flow_rate")
        assert isinstance(flow["value"], float) and flow["unit"] == "m3/h"
        assert by_device["ghost-1"] and not any(x["ok"] for x in by_device["ghost-1"])
        assert all(x["reason"] for x in by_device["ghost-1"])
        assert report["ok"] is False and report["devices_online"] == ["pump-1"]
        assert report["devices_total"] == 2
        assert report["points_ok"] == len(by_device["pump-1"])
        assert "devices online: 1/2 (50%)" in report["report"]  # the `millrace check` text
        assert "ghost-1: " in report["report"]

        # one at a time
        lock = _app(gw).state.commissioning_lock
        async with lock:
            busy = await api.post("/commissioning")
        assert busy.status_code == 409
    (entry,) = gw.audit.entries(action="commissioning.run")
    assert entry.who.startswith("tech-on-site [token ")
    assert entry.detail["result"] == "failures" and entry.detail["devices_online"] == 1
