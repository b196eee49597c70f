"""Who may use the web page and API.

- Bound to a loopback address, only loopback Host names are answered (a DNS-rebinding page cannot reach
  the device through the browser).
- With an access token configured (required to listen on the network) every request needs it: the page
  asks once and keeps a cookie derived from it (HttpOnly, SameSite=Strict); API clients send
  `Authorization: Bearer <token>`. Repeated wrong tokens lock the login for a while.
- State-changing requests (POST) coming from another site are refused: browsers send `Sec-Fetch-Site`
  and `Origin` with them, and both must say "this site". Clients that are not browsers (curl, scripts)
  send neither and are not affected.
"""
from __future__ import annotations

import hashlib
import hmac
import threading
import time
from urllib.parse import urlsplit

from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

COOKIE = "leukoscreen_access"
LOGIN_PATH = "/api/login"
UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
MAX_FAILURES, LOCKOUT_S = 5, 60.0

LOGIN_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>LeukoScreen: access</title>
<link rel="stylesheet" href="/static/style.css"></head><body><main class="login">
<h1>LeukoScreen</h1><p>This device needs its access token (or PIN).</p>
<form method="post" action="/api/login"><label>Access token <input name="token" type="password"
autocomplete="current-password" required autofocus></label><button type="submit">Open</button></form>
<p class="error">{error}</p>
<p class="notice">Research use only. Not for use in diagnostic procedures.</p></main></body></html>"""


def cookie_value(token: str) -> str:
    """What the cookie holds: derived from the token, so the cookie does not reveal the token itself."""
    return hmac.new(token.encode(), b"leukoscreen web session", hashlib.sha256).hexdigest()


def cross_site(request: Request) -> str | None:
    """Why an unsafe request looks cross-site, or None."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return f"Sec-Fetch-Site is {site!r}"
    origin = request.headers.get("origin")
    if origin is not None and urlsplit(origin).netloc != request.headers.get("host"):
        return f"Origin {origin!r} is not this device"
    return None


class AccessControl(BaseHTTPMiddleware):
    def __init__(self, app, token: str = ""):
        super().__init__(app)
        self.token = token
        self.expected_cookie = cookie_value(token) if token else ""
        self.failures: list[float] = []
        self.lock = threading.Lock()

    def authorized(self, request: Request) -> bool:
        if not self.token:
            return True
        bearer = request.headers.get("authorization", "")
        if bearer.startswith("Bearer ") and hmac.compare_digest(bearer[7:].encode(), self.token.encode()):
            return True
        return hmac.compare_digest(request.cookies.get(COOKIE, "").encode(), self.expected_cookie.encode())

    async def dispatch(self, request: Request, call_next) -> Response:
        if request.method in UNSAFE_METHODS and (reason := cross_site(request)):
            return JSONResponse({"detail": f"cross-site request refused ({reason}); use the device's own page"},
                                status_code=403)
        if request.url.path == LOGIN_PATH and request.method == "POST":
            return await self.login(request)
        if self.authorized(request) or request.url.path == "/static/style.css":
            return await call_next(request)
        if request.url.path.startswith("/api/"):
            return JSONResponse({"detail": "access token required: send 'Authorization: Bearer <token>' or "
                                           "log in on the device's page"}, status_code=401,
                                headers={"WWW-Authenticate": "Bearer"})
        return HTMLResponse(LOGIN_PAGE.format(error=""), status_code=401)

    async def login(self, request: Request) -> Response:
        with self.lock:
            now = time.monotonic()
            self.failures = [t for t in self.failures if now - t < LOCKOUT_S]
            locked = len(self.failures) >= MAX_FAILURES
        if locked:
            return HTMLResponse(LOGIN_PAGE.format(error="Too many wrong tokens: wait a minute and try again."),
                                status_code=429, headers={"Retry-After": str(int(LOCKOUT_S))})
        form = await request.form(max_files=0, max_fields=2)
        given = str(form.get("token", ""))
        if not self.token or not hmac.compare_digest(given.encode(), self.token.encode()):
            with self.lock:
                self.failures.append(time.monotonic())
            error = "This device has no access token: just open the page." if not self.token else "Wrong token."
            return HTMLResponse(LOGIN_PAGE.format(error=error), status_code=401)
        response = Response(status_code=303, headers={"Location": "/"})
        response.set_cookie(COOKIE, self.expected_cookie, max_age=30 * 24 * 3600, httponly=True,
                            samesite="strict", path="/")
        return response
