"""The technician's page: static files the gateway serves itself, so a phone on the plant
network needs nothing from the internet and nothing is built before it ships.

`static/` holds the whole page: `index.html`, ES modules (`app.js` and its helpers), one
stylesheet and the message catalogue `messages.json` (Simplified Chinese first, English). The
files carry no data of the box; every number on the page comes from the token-guarded API.
`gateway.api_ui` serves them; this module only finds them and describes each one once
(media type, ETag), so serving is a dictionary lookup.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from importlib import resources

#: What a file may be served as; anything else in the folder is not served.
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
}
INDEX = "index.html"


@dataclass(frozen=True, slots=True)
class Asset:
    name: str
    body: bytes
    media_type: str
    #: A strong validator from the content: a browser revalidates and gets 304 until the
    #: gateway is upgraded.
    etag: str


@cache
def assets() -> dict[str, Asset]:
    """Every servable file of `static/` by name (read once; a few tens of kilobytes)."""
    out: dict[str, Asset] = {}
    for entry in (resources.files(__name__) / "static").iterdir():
        name = entry.name
        suffix = name[name.rfind(".") :] if "." in name else ""
        if not entry.is_file() or suffix not in MEDIA_TYPES or name.startswith("."):
            continue
        body = entry.read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        out[name] = Asset(name, body, MEDIA_TYPES[suffix], etag)
    return out
