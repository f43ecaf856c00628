"""Serves the technician's page (`gateway.web`) at `/ui/`; `/` sends a browser there.

The files hold no data of the box, so like `/health` they answer without a token: the page
asks for one and sends it with every data call (`Authorization: Bearer`), which the API
checks as for any other client. What the page may do is set by headers here:

* `Content-Security-Policy` allows scripts, styles, images, fonts and connections from the
  gateway itself only, no inline script or style, no framing: a value a device or a user
  typed cannot run as code on the page, and the page cannot send the token elsewhere.
* `Cache-Control: no-cache` with a content `ETag`: a phone revalidates (a 304 on the plant
  LAN) and never runs an old script against a newer gateway after an upgrade.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from gateway.web import INDEX, Asset, assets

router = APIRouter(include_in_schema=False)

#: Paths served without a token (tests and docs/security.md list them with /health).
OPEN_PATHS = ("/", "/ui", "/ui/", "/ui/{name}")

CSP = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "font-src 'self'",
        "connect-src 'self'",
        "manifest-src 'self'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    # the form's "use my location" needs geolocation (on https); nothing else is used
    "Permissions-Policy": "camera=(), microphone=(), payment=(), usb=(), geolocation=(self)",
    "Cache-Control": "no-cache",
}


def _serve(request: Request, asset: Asset) -> Response:
    headers = {**HEADERS, "ETag": asset.etag}
    match = request.headers.get("if-none-match", "")
    if asset.etag in (tag.strip() for tag in match.split(",")):
        return Response(status_code=304, headers=headers)
    body = b"" if request.method == "HEAD" else asset.body
    response = Response(body, media_type=asset.media_type, headers=headers)
    if request.method == "HEAD":
        response.headers["Content-Length"] = str(len(asset.body))
    return response


@router.api_route("/", methods=["GET", "HEAD"])
async def root() -> RedirectResponse:
    return RedirectResponse("/ui/", status_code=307)


@router.api_route("/ui", methods=["GET", "HEAD"])
async def ui_slash() -> RedirectResponse:
    return RedirectResponse("/ui/", status_code=307)


@router.api_route("/ui/", methods=["GET", "HEAD"])
async def index(request: Request) -> Response:
    return _serve(request, assets()[INDEX])


@router.api_route("/ui/{name}", methods=["GET", "HEAD"])
async def asset(request: Request, name: str) -> Response:
    """One file of the page by its name; nothing outside the served set (no paths)."""
    found = assets().get(name)
    if found is None:
        return Response("not found", status_code=404, media_type="text/plain", headers=HEADERS)
    return _serve(request, found)
