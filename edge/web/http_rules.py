"""Two HTTP rules applied to every request before the routes (a small ASGI middleware).

- Bound to a loopback address, the device answers only loopback Host names (a DNS-rebinding page cannot
  reach it through a browser); IPv6 hosts such as `[::1]:8080` are read correctly.
- HEAD is answered like GET, without the body (the server leaves it out).
"""
from __future__ import annotations

from urllib.parse import urlsplit

from starlette.responses import PlainTextResponse

LOOPBACK_NAMES = {"127.0.0.1", "localhost", "::1"}


def host_name(host_header: str) -> str | None:
    """The host of a Host header without its port ("[::1]:8080" -> "::1"); None when it cannot be read."""
    try:
        return urlsplit(f"//{host_header}").hostname
    except ValueError:
        return None


class HttpRules:
    def __init__(self, app, loopback_only: bool):
        self.app, self.loopback_only = app, loopback_only

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.loopback_only:
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            if host_name(host) not in LOOPBACK_NAMES:
                return await PlainTextResponse("Invalid host header", status_code=400)(scope, receive, send)
        if scope["method"] == "HEAD":
            scope = dict(scope, method="GET")
        await self.app(scope, receive, send)
