"""A local stand-in of balena's API: just the endpoints `sync.fleet` calls through balena-sdk.

balena's cloud cannot be reached from the test machine, so this serves the same URLs and
bodies the SDK sends (found by reading balena-sdk 17's `models/device.py`,
`dependent_resource.py` and pine-client's `upsert`), over real HTTP on loopback:

    GET   /v7/device(uuid='<uuid>')?$select=...        the device (OData: {"d": [...]})
    GET   /v7/device(<id>)?$select=id                   the same by id
    GET   /v7/application_environment_variable?$filter=application eq <id>   fleet variables
    GET   /v7/device_environment_variable?$filter=device eq <id>             device variables
    GET   /v7/device_tag?$filter=device eq <id>                              tags
    POST  /v7/device_tag  {"device", "tag_key", "value"}   201, or 409 "unique" if it exists
    PATCH /v7/device_tag?$filter=(device eq <id>) and (tag_key eq '<key>')  {"value"}

Every request must carry `Authorization: Bearer <api key>` (401 otherwise). It is not balena:
no permissions model, no rate limit, no pagination; `fail_with` makes it answer an error.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import unquote

#: pine-client's upsert falls back to PATCH with `$filter=(device eq 7) and (tag_key eq 'k')`.
_PATCH_TAG = re.compile(r"^/v7/device_tag\?.*device eq (\d+)\)? and \(?tag_key eq '([^']+)'")


@dataclass
class StandinDevice:
    id: int
    uuid: str
    name: str
    fleet_id: int
    variables: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class BalenaStandin:
    api_key: str
    devices: list[StandinDevice]
    fleet_variables: dict[int, dict[str, str]] = field(default_factory=dict)
    #: (method, path, JSON body or None) of every request, in order.
    requests: list[tuple[str, str, Any]] = field(default_factory=list)
    #: When set, every request is answered with this status.
    fail_with: int | None = None
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_port}/"

    def device(self, uuid: str) -> StandinDevice:
        return next(d for d in self.devices if d.uuid == uuid)

    def __enter__(self) -> Self:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(n) or b"null") if n else None
                path = unquote(self.path)
                with standin._lock:
                    standin.requests.append((self.command, path, body))
                    status, out = standin._route(
                        self.command, path, body, self.headers.get("Authorization")
                    )
                data = json.dumps(out).encode() if out is not None else b""
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_DELETE = _answer

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="balena-standin", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None and self._thread is not None
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    # -- routing (called under the lock) -------------------------------------------------

    def _route(self, method: str, path: str, body: Any, auth: str | None) -> tuple[int, Any]:
        if self.fail_with is not None:
            return self.fail_with, {"error": "stand-in told to fail"}
        if auth != f"Bearer {self.api_key}":
            return 401, {"error": "Unauthorized"}
        if m := re.match(r"^/v7/device\((?:uuid='([0-9a-f]+)'|(\d+))\)", path):
            dev = next(
                (d for d in self.devices if d.uuid == m[1] or (m[2] and d.id == int(m[2]))), None
            )
            if dev is None:
                return 200, {"d": []}
            return 200, {
                "d": [
                    {
                        "id": dev.id,
                        "uuid": dev.uuid,
                        "device_name": dev.name,
                        "belongs_to__application": {"__id": dev.fleet_id},
                    }
                ]
            }
        if m := re.match(r"^/v7/application_environment_variable\?.*application eq (\d+)", path):
            fleet = self.fleet_variables.get(int(m[1]), {})
            return 200, {"d": [{"name": k, "value": v} for k, v in sorted(fleet.items())]}
        if m := re.match(r"^/v7/device_environment_variable\?.*device eq (\d+)", path):
            dev = self._by_id(int(m[1]))
            items = sorted(dev.variables.items()) if dev else []
            return 200, {"d": [{"name": k, "value": v} for k, v in items]}
        if method == "GET" and (m := re.match(r"^/v7/device_tag\?.*device eq (\d+)", path)):
            dev = self._by_id(int(m[1]))
            items = sorted(dev.tags.items()) if dev else []
            return 200, {"d": [{"tag_key": k, "value": v} for k, v in items]}
        if method == "POST" and path == "/v7/device_tag":
            dev = self._by_id(int(body["device"]))
            if dev is None:
                return 400, {"error": "no such device"}
            if body["tag_key"] in dev.tags:
                return 409, "Unique key constraint violated"
            dev.tags[body["tag_key"]] = body["value"]
            return 201, {"id": len(dev.tags), **body}
        if method == "PATCH" and (m := _PATCH_TAG.match(path)):
            dev = self._by_id(int(m[1]))
            if dev is None or m[2] not in dev.tags:
                return 200, None
            dev.tags[m[2]] = body["value"]
            return 200, None
        return 404, {"error": f"the stand-in does not serve {method} {path}"}

    def _by_id(self, dev_id: int) -> StandinDevice | None:
        return next((d for d in self.devices if d.id == dev_id), None)
