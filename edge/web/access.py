"""Who may use the web page and API: a dependency of every route that shows or changes results.

- Bound to a loopback address, only loopback Host names are answered (a DNS-rebinding page cannot reach
  the device through the browser; TrustedHostMiddleware in `app.py`).
- With an access token configured (required to listen on the network) every request needs it: the page
  asks once and keeps a cookie derived from it (HttpOnly, SameSite=Strict); API clients send
  `Authorization: Bearer <token>`. Five wrong tokens within a minute, by login or by Bearer header, lock out
  that client address (not the others) for a minute.
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

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from leukoscreen.edge.web.dependencies import within_time

COOKIE = "leukoscreen_access"
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


class AccessRequired(Exception):
    """Raised by the access rule; answered with the login page (the page) or 401 (the API)."""


class LockedOut(HTTPException):
    def __init__(self):
        super().__init__(429, "too many wrong tokens from this address: wait a minute and try again",
                         headers={"Retry-After": str(int(LOCKOUT_S))})


def access_required_response(request: Request, _: AccessRequired) -> Response:
    if request.url.path.startswith("/api/"):
        return JSONResponse({"detail": "access token required: send 'Authorization: Bearer <token>' or log in on "
                                       "the device's page"}, status_code=401, headers={"WWW-Authenticate": "Bearer"})
    return HTMLResponse(LOGIN_PAGE.format(error=""), status_code=401)


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


def refuse_cross_site(request: Request) -> None:
    if request.method in UNSAFE_METHODS and (reason := cross_site(request)):
        raise HTTPException(403, f"cross-site request refused ({reason}); use the device's own page")


class AccessRule:
    """The dependency: `Depends(rule)` on a route refuses cross-site writes and requests without the token."""

    def __init__(self, token: str = ""):
        self.token = token
        self.expected_cookie = cookie_value(token) if token else ""
        self.failures: dict[str, list[float]] = {}   # client address -> times of its wrong tokens
        self.lock = threading.Lock()

    def authorized(self, request: Request) -> bool:
        if not self.token:
            return True
        if hmac.compare_digest(request.cookies.get(COOKIE, "").encode(), self.expected_cookie.encode()):
            return True
        bearer = request.headers.get("authorization", "")
        if not bearer:
            return False
        if self.locked(request):
            raise LockedOut()
        if bearer.startswith("Bearer ") and hmac.compare_digest(bearer[7:].encode(), self.token.encode()):
            return True
        self.failed(request)
        return False

    def __call__(self, request: Request) -> None:
        refuse_cross_site(request)
        if not self.authorized(request):
            raise AccessRequired()

    @staticmethod
    def client(request: Request) -> str:
        return request.client.host if request.client else "unknown"

    def failed(self, request: Request) -> None:
        with self.lock:
            self.failures.setdefault(self.client(request), []).append(time.monotonic())

    def locked(self, request: Request) -> bool:
        with self.lock:
            now = time.monotonic()
            for client in list(self.failures):  # forget old failures (and clients) as they expire
                self.failures[client] = [t for t in self.failures[client] if now - t < LOCKOUT_S]
                if not self.failures[client]:
                    del self.failures[client]
            return len(self.failures.get(self.client(request), ())) >= MAX_FAILURES

    def router(self) -> APIRouter:
        """POST /api/login: the page's form sends the token; a right one sets the cookie."""
        router = APIRouter()

        @router.post("/api/login", include_in_schema=False)
        async def login(request: Request) -> Response:
            refuse_cross_site(request)
            if self.locked(request):
                return HTMLResponse(LOGIN_PAGE.format(error="Too many wrong tokens: wait a minute and try again."),
                                    status_code=429, headers={"Retry-After": str(int(LOCKOUT_S))})
            form = await within_time(request.form(max_files=0, max_fields=2))
            given = str(form.get("token", ""))
            if not self.token or not hmac.compare_digest(given.encode(), self.token.encode()):
                self.failed(request)
                error = "This device has no access token: just open the page." if not self.token else "Wrong token."
                return HTMLResponse(LOGIN_PAGE.format(error=error), status_code=401)
            response = Response(status_code=303, headers={"Location": "/"})
            response.set_cookie(COOKIE, self.expected_cookie, max_age=30 * 24 * 3600, httponly=True,
                                samesite="strict", path="/")
            return response

        return router
