"""The console's web app (Starlette): the page, its JSON, server-sent events, login, control.

Routes:

* ``GET /`` the page; ``/static/*`` its modules, styles and the vendored uPlot;
* ``GET /api/state?...`` one snapshot (the first message of the stream);
* ``GET /api/stream?...`` server-sent events: a snapshot, then what changed,
  at most every ``MIN_GAP`` seconds and at least every second. Parameters:
  the list's filters (``agent``, ``container`` (``~``: the host), ``state``,
  ``result``, ``label`` (``key`` or ``key=value``), ``q`` (exec id part)),
  ``limit``, ``exec`` (``agent/exec_id``: that exec's record and output) and
  ``chart`` (an agent, or overall);
* ``GET /api/session``; ``POST /api/login``, ``/api/logout`` and
  ``/api/execs/{agent}/{exec_id}/signal`` (``--allow-control`` only);
* ``GET /healthz``, ``GET /metrics``.

Everything the bus says (argv, labels, output, reasons) goes to the page as
JSON data, never as markup; the page puts it in the DOM as text. Responses
carry a strict Content-Security-Policy (scripts and styles from the console
only), and only the host names the console is reached by are accepted (DNS
rebinding). POSTs need the session's CSRF token in ``X-CSRF-Token`` and an
``Origin`` of the console itself.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from execbus.console.auth import LoginFailed, LoginUnavailable, Session, Sessions
from execbus.console.metrics import ConsoleMetrics
from execbus.console.store import ConsoleStore
from execbus.console.views import ExecFilter
from execbus.errors import ExecbusError

STATIC = Path(__file__).resolve().parent / "static"
MIN_GAP = 0.15  # seconds between two messages of one stream
MAX_GAP = 1.0  # a message at least this often (ages, charts)
MAX_LIMIT = 500
MAX_STREAMS = 64
COOKIE = "execbus_console"
SIGNALS = ("SIGTERM", "SIGKILL", "SIGINT", "SIGHUP")
NAME = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
]


class SecurityHeaders:
    """Adds the security headers to every HTTP response (pure ASGI: streams untouched)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers += [(n, v) for n, v in SECURITY_HEADERS if n not in present]
                if scope["path"].startswith("/api/") and b"cache-control" not in present:
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class Notifier:
    """Wakes the streams when the store changes (cheap enough to call per event)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()

    async def wait(self, timeout: float) -> None:
        """Until the next change, or ``timeout``. Callers check the store's version
        first: a change made before the call may not wake it."""
        event = self._event
        if event.is_set():
            self._event = asyncio.Event()
            event = self._event
        try:
            async with asyncio.timeout(timeout):
                await event.wait()
        except TimeoutError:
            return


def dumps(doc: Any) -> str:
    """JSON for the page: ASCII only, no newline (safe in an SSE data line)."""
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


class View:
    """What one page follows: the list's filter, one exec, one chart."""

    def __init__(self, params: Mapping[str, str]) -> None:
        self.filter = ExecFilter.parse(params)
        try:
            self.limit = max(1, min(MAX_LIMIT, int(params.get("limit", "200"))))
        except ValueError:
            self.limit = 200
        agent, _, exec_id = (params.get("exec") or "").partition("/")
        self.exec = (agent, exec_id) if NAME.match(agent) and NAME.match(exec_id) else None
        chart = params.get("chart") or ""
        self.chart = chart if NAME.match(chart) else None
        # What this page has been sent.
        self.execs_version = -1
        self.fleet_version = -1
        self.exec_changed = -1
        self.output_next = 0
        self.slow_at = 0.0


class ConsoleApp:
    """The routes, over a store that the feed fills."""

    def __init__(
        self,
        store: ConsoleStore,
        metrics: ConsoleMetrics,
        *,
        namespace: str,
        sessions: Sessions | None = None,
        allowed_hosts: list[str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.namespace = namespace
        self.sessions = sessions
        self.clock = clock
        self.notifier = Notifier()
        self.closing = asyncio.Event()
        store.on_change = self.notifier.notify
        routes = [
            Route("/", self.index),
            Route("/healthz", self.healthz),
            Route("/metrics", self.prometheus),
            Route("/api/state", self.state),
            Route("/api/stream", self.stream),
            Route("/api/session", self.session),
            Route("/api/login", self.login, methods=["POST"]),
            Route("/api/logout", self.logout, methods=["POST"]),
            Route("/api/execs/{agent}/{exec_id}/signal", self.signal, methods=["POST"]),
            Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
        ]
        middleware = [Middleware(SecurityHeaders)]
        if allowed_hosts and "*" not in allowed_hosts:
            middleware.append(Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts))
        self.app = Starlette(routes=routes, middleware=middleware)

    # -- page and health ----------------------------------------------------

    async def index(self, request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"cache-control": "no-store"})

    async def healthz(self, request: Request) -> Response:
        broker = self.store.broker
        return JSONResponse({"status": "alive", "broker_connected": broker["connected"]})

    async def prometheus(self, request: Request) -> Response:
        return Response(self.metrics.render(), media_type="text/plain; version=0.0.4")

    # -- the view -------------------------------------------------------------

    def snapshot(self, view: View, now: float, *, full: bool) -> dict[str, Any] | None:
        """What changed for ``view`` since its last message (everything if ``full``)."""
        store = self.store
        doc: dict[str, Any] = {"now": now}
        if full:
            doc["namespace"] = self.namespace
            doc["control"] = self.sessions is not None
        if full or store.execs_version != view.execs_version:
            rows, matched = store.query(view.filter, view.limit)
            doc["execs"] = {"rows": rows, "matched": matched, "limit": view.limit}
            view.execs_version = store.execs_version
        slow = full or now - view.slow_at >= MAX_GAP
        if slow or store.fleet.version != view.fleet_version:
            doc["fleet"] = store.fleet.snapshot(now)
            doc["agents"] = store.agents()
            view.fleet_version = store.fleet.version
        if slow:
            doc["counts"] = store.counts()
            doc["broker"] = store.broker
            doc["notices"] = sorted(store.notices.values())
            doc["stats"] = store.stats.series(view.chart, now)
            view.slow_at = now
        if view.exec is not None:
            self._exec_part(view, doc, full)
        if len(doc) == 1:
            return None
        return doc

    def _exec_part(self, view: View, doc: dict[str, Any], full: bool) -> None:
        assert view.exec is not None
        agent, exec_id = view.exec
        exec_view = self.store.get(agent, exec_id)
        if exec_view is None:
            if full or view.exec_changed != 0:
                doc["exec"] = None
                view.exec_changed = 0
            return
        if full or exec_view.changed != view.exec_changed:
            doc["exec"] = self.store.detail(agent, exec_id)
            view.exec_changed = exec_view.changed
        output = self.store.output.since(exec_view.key, view.output_next)
        if output is not None and (output["segments"] or output["reset"] or full):
            doc["output"] = output
            view.output_next = output["next"]

    async def state(self, request: Request) -> Response:
        doc = self.snapshot(View(request.query_params), self.clock(), full=True)
        return JSONResponse(doc)

    async def stream(self, request: Request) -> Response:
        if self.metrics.streams >= MAX_STREAMS:
            return JSONResponse({"error": "too many pages follow this console"}, status_code=503)
        view = View(request.query_params)
        return StreamingResponse(
            self._messages(view),
            media_type="text/event-stream",
            headers={"cache-control": "no-store", "x-accel-buffering": "no"},
        )

    async def _messages(self, view: View) -> AsyncIterator[str]:
        self.metrics.streams += 1
        try:
            yield "retry: 1000\n\n"
            full = True
            while not self.closing.is_set():
                started = time.monotonic()
                seen = self.store.version
                doc = self.snapshot(view, self.clock(), full=full)
                full = False
                if doc is not None:
                    yield f"data: {dumps(doc)}\n\n"
                await asyncio.sleep(max(0.0, MIN_GAP - (time.monotonic() - started)))
                if self.store.version == seen:
                    await self.notifier.wait(MAX_GAP - MIN_GAP)
        finally:
            self.metrics.streams -= 1

    # -- sessions and control ---------------------------------------------------

    def _session(self, request: Request) -> Session | None:
        if self.sessions is None:
            return None
        return self.sessions.lookup(request.cookies.get(COOKIE))

    async def session(self, request: Request) -> Response:
        session = self._session(request)
        return JSONResponse(
            {
                "control": self.sessions is not None,
                "namespace": self.namespace,
                "user": session.user if session else None,
                "csrf": session.csrf if session else None,
            }
        )

    @staticmethod
    def _same_origin(request: Request) -> bool:
        origin = request.headers.get("origin")
        host = request.headers.get("host")
        return (
            origin is not None and host is not None and origin == f"{request.url.scheme}://{host}"
        )

    @staticmethod
    def _refuse(status: int, message: str) -> Response:
        return JSONResponse({"ok": False, "error": message}, status_code=status)

    async def _json(self, request: Request) -> dict[str, Any] | None:
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return None
        try:
            body = await request.body()
            doc = json.loads(body) if len(body) <= 8192 else None
        except ValueError:
            return None
        return doc if isinstance(doc, dict) else None

    async def login(self, request: Request) -> Response:
        if self.sessions is None:
            return self._refuse(404, "control is off (start the console with --allow-control)")
        if not self._same_origin(request):
            return self._refuse(403, "cross-origin request refused")
        doc = await self._json(request)
        if doc is None:
            return self._refuse(400, 'send JSON: {"user": ..., "password": ...}')
        user, password = doc.get("user"), doc.get("password")
        if not isinstance(user, str) or not isinstance(password, str):
            return self._refuse(400, "user and password must be strings")
        try:
            session = await self.sessions.login(user, password)
        except LoginFailed as exc:
            self.metrics.logins.labels("refused").inc()
            return self._refuse(401, str(exc))
        except LoginUnavailable as exc:
            self.metrics.logins.labels("unavailable").inc()
            return self._refuse(503, str(exc))
        self.metrics.logins.labels("ok").inc()
        self.metrics.sessions = len(self.sessions)
        response = JSONResponse({"ok": True, "user": session.user, "csrf": session.csrf})
        response.set_cookie(
            COOKIE,
            session.token,
            max_age=int(self.sessions.lifetime),
            path="/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    async def logout(self, request: Request) -> Response:
        session = self._session(request)
        if session is not None:
            if not self._same_origin(request) or not session.csrf_ok(
                request.headers.get("x-csrf-token")
            ):
                return self._refuse(403, "missing or wrong CSRF token")
            assert self.sessions is not None
            await self.sessions.logout(session.token)
            self.metrics.sessions = len(self.sessions)
        response = JSONResponse({"ok": True})
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return response

    async def signal(self, request: Request) -> Response:
        if self.sessions is None:
            return self._refuse(404, "control is off (start the console with --allow-control)")
        session = self._session(request)
        if session is None:
            return self._refuse(401, "log in first")
        if not self._same_origin(request) or not session.csrf_ok(
            request.headers.get("x-csrf-token")
        ):
            return self._refuse(403, "missing or wrong CSRF token")
        agent, exec_id = request.path_params["agent"], request.path_params["exec_id"]
        if not NAME.match(agent) or not NAME.match(exec_id):
            return self._refuse(400, "invalid agent or exec id")
        doc = await self._json(request)
        signal = doc.get("signal", "SIGKILL") if doc is not None else None
        if signal not in SIGNALS:
            return self._refuse(400, f"signal must be one of {', '.join(SIGNALS)}")
        try:
            info = await session.client.signal(agent, exec_id, signal)
        except ExecbusError as exc:
            self.metrics.signals.labels(str(exc.code)).inc()
            status = {"forbidden": 403, "not_found": 404, "conflict": 409}.get(str(exc.code), 502)
            return JSONResponse(
                {"ok": False, "code": str(exc.code), "error": exc.message}, status_code=status
            )
        self.metrics.signals.labels("ok").inc()
        return JSONResponse({"ok": True, "state": str(info.state), "user": session.user})
