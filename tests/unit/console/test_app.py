"""The console's web app without a broker: headers, JSON, the stream, login, CSRF.

Logins use a stand-in for the broker check (the browser test logs in against
the real broker); everything else is the real app over a real store.
"""

from __future__ import annotations

import json
from typing import Any, cast

import pytest
import yaml
from starlette.testclient import TestClient

from execbus.client import Client
from execbus.console.app import COOKIE, ConsoleApp, Notifier, View
from execbus.console.auth import LoginFailed, Sessions, user_url
from execbus.console.cli import allowed_hosts, build_parser, listen_address
from execbus.console.metrics import ConsoleMetrics
from execbus.console.store import ConsoleStore
from execbus.errors import Forbidden
from execbus.settings import load_settings
from execbus.wire.records import ExecInfo
from tests.conftest import ROOT
from tests.unit.console.test_store import created, exited, output

HOST = "http://127.0.0.1:8089"


class FakeClient:
    """What a session's client is asked: signal and close."""

    def __init__(self, user: str) -> None:
        self.user = user
        self.signals: list[tuple[str, str, str]] = []
        self.closed = False

    async def signal(self, agent: str, exec_id: str, signal: str) -> ExecInfo:
        if agent == "denied":
            raise Forbidden(f"{self.user} may not signal on {agent}")
        self.signals.append((agent, exec_id, signal))
        return ExecInfo.model_validate(
            {
                "exec_id": exec_id,
                "agent": agent,
                "state": "running",
                "cmd": ["sleep"],
                "created_at": "2026-01-01T00:00:00Z",
            }
        )

    async def close(self) -> None:
        self.closed = True


def make_app(control: bool = False) -> tuple[ConsoleApp, ConsoleStore, list[FakeClient]]:
    store = ConsoleStore(100)
    clients: list[FakeClient] = []

    async def connect(user: str, password: str) -> Client:
        if password != "right":
            raise LoginFailed("the broker refused these credentials")
        client = FakeClient(user)
        clients.append(client)
        return cast(Client, client)

    sessions = Sessions(load_settings(), connect=connect, failure_pause=0.0) if control else None
    app = ConsoleApp(
        store,
        ConsoleMetrics(store),
        namespace="ns1",
        sessions=sessions,
        allowed_hosts=allowed_hosts("127.0.0.1", []),
        clock=lambda: 1000.0,
    )
    return app, store, clients


def http(app: ConsoleApp) -> TestClient:
    return TestClient(app.app, base_url=HOST)


def test_page_health_metrics_and_headers() -> None:
    app, store, _ = make_app()
    store.apply_event(created("x1"), 1000.0)
    with http(app) as c:
        page = c.get("/")
        assert page.status_code == 200 and "<title>execbus console</title>" in page.text
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert page.headers["x-content-type-options"] == "nosniff"
        assert c.get("/static/js/app.js").status_code == 200
        assert c.get("/static/vendor/uplot/uPlot.iife.min.js").status_code == 200
        assert c.get("/healthz").json() == {"status": "alive", "broker_connected": False}
        metrics = c.get("/metrics").text
        assert 'execbus_console_execs{state="created"} 1.0' in metrics
        assert "execbus_console_events_malformed_total 0.0" in metrics
        assert c.get("/api/state").headers["cache-control"] == "no-store"


def test_unknown_host_names_are_refused() -> None:
    app, _, _ = make_app()
    with TestClient(app.app, base_url="http://evil.example:8089") as c:
        assert c.get("/api/state").status_code == 400


def test_state_filters_and_exec() -> None:
    app, store, _ = make_app()
    store.apply_event(created("x1", agent="a1"), 1000.0)
    store.apply_event(output("x1", b"\x1b[31m<script>\x1b[0m", agent="a1"), 1000.0)
    store.apply_event(created("x2", agent="a2"), 1000.0)
    store.apply_event(exited("x2", 4, agent="a2"), 1000.0)
    with http(app) as c:
        doc = c.get("/api/state", params={"agent": "a1", "exec": "a1/x1"}).json()
    assert [r["id"] for r in doc["execs"]["rows"]] == ["x1"]
    assert doc["exec"]["id"] == "x1" and doc["namespace"] == "ns1"
    assert doc["output"]["segments"] == [["stdout", "<script>", {"fg": 1}]]
    assert doc["stats"]["totals"]["nonzero"] == 1


def test_stream_sends_only_what_changed() -> None:
    app, store, _ = make_app()
    store.apply_event(created("x1"), 1000.0)
    view = View({"exec": "a1/x1"})
    first = app.snapshot(view, 1000.0, full=True)
    assert first is not None and {"execs", "fleet", "stats", "exec"} <= set(first)
    assert app.snapshot(view, 1000.1, full=False) is None  # nothing changed, not a second yet
    store.apply_event(output("x1", b"hello\n"), 1000.2)
    later = app.snapshot(view, 1000.2, full=False)
    assert later is not None and "execs" in later and "fleet" not in later
    assert later["output"]["segments"] == [["stdout", "hello\n", None]]
    assert app.snapshot(view, 1001.5, full=False) is not None  # the slow parts, each second


async def test_notifier_wakes_waiters() -> None:
    import asyncio

    notifier = Notifier()
    waiter = asyncio.create_task(notifier.wait(5.0))
    await asyncio.sleep(0)  # the waiter starts waiting
    assert not waiter.done()
    loop = asyncio.get_running_loop()
    notified = loop.time()
    notifier.notify()
    await asyncio.wait_for(waiter, 1.0)
    assert loop.time() - notified < 1.0, "woken by the notification, not by its 5 s timeout"


def test_control_is_off_by_default() -> None:
    app, _, _ = make_app()
    with http(app) as c:
        assert c.get("/api/session").json()["control"] is False
        r = c.post("/api/login", json={"user": "u", "password": "right"}, headers={"origin": HOST})
        assert r.status_code == 404


def login(c: TestClient, password: str = "right", origin: str = HOST) -> Any:
    return c.post(
        "/api/login", json={"user": "alice", "password": password}, headers={"origin": origin}
    )


def test_login_session_cookie_and_csrf() -> None:
    app, _, clients = make_app(control=True)
    with http(app) as c:
        assert login(c, origin="http://evil.example").status_code == 403
        assert (
            c.post("/api/login", content=b"user=alice", headers={"origin": HOST}).status_code == 400
        )
        assert login(c, password="wrong").status_code == 401
        r = login(c)
        assert r.status_code == 200
        cookie = r.headers["set-cookie"]
        assert f"{COOKIE}=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
        csrf = r.json()["csrf"]
        assert c.get("/api/session").json()["user"] == "alice"

        url = "/api/execs/a1/x1/signal"
        body = {"signal": "SIGKILL"}
        assert c.post(url, json=body, headers={"origin": HOST}).status_code == 403
        assert (
            c.post(url, json=body, headers={"origin": HOST, "x-csrf-token": "nope"}).status_code
            == 403
        )
        evil = {"origin": "http://evil.example", "x-csrf-token": csrf}
        assert c.post(url, json=body, headers=evil).status_code == 403
        ok = c.post(url, json=body, headers={"origin": HOST, "x-csrf-token": csrf})
        assert ok.status_code == 200 and ok.json() == {
            "ok": True,
            "state": "running",
            "user": "alice",
        }
        assert clients[0].signals == [("a1", "x1", "SIGKILL")]
        bad = c.post(
            url, json={"signal": "SIGSTOP"}, headers={"origin": HOST, "x-csrf-token": csrf}
        )
        assert bad.status_code == 400
        denied = c.post(
            "/api/execs/denied/x1/signal", json=body, headers={"origin": HOST, "x-csrf-token": csrf}
        )
        assert denied.status_code == 403 and denied.json()["code"] == "forbidden"

        assert (
            c.post("/api/logout", headers={"origin": HOST, "x-csrf-token": csrf}).status_code == 200
        )
        assert clients[0].closed
        assert c.get("/api/session").json()["user"] is None
        assert (
            c.post(url, json=body, headers={"origin": HOST, "x-csrf-token": csrf}).status_code
            == 401
        )


async def test_sessions_expire_and_are_bounded() -> None:
    now = [0.0]

    async def connect(user: str, password: str) -> Client:
        return cast(Client, FakeClient(user))

    sessions = Sessions(
        load_settings(), connect=connect, clock=lambda: now[0], idle=10, max_sessions=2
    )
    first = await sessions.login("a", "p")
    second = await sessions.login("b", "p")
    now[0] = 5
    assert sessions.lookup(first.token) is first
    await sessions.login("c", "p")  # over the bound: the least recently used (b) goes
    assert sessions.lookup(second.token) is None
    now[0] = 100
    assert sessions.lookup(first.token) is None  # idle too long
    with pytest.raises(LoginFailed):
        await sessions.login("", "p")


def test_user_url_keeps_the_broker_and_quotes_credentials() -> None:
    url = user_url("amqps://console:secret@mq.example:5671/vh?heartbeat=10", "a@b", "p:/w")
    assert url == "amqps://a%40b:p%3A%2Fw@mq.example:5671/vh?heartbeat=10"


def test_cli_arguments_and_the_compose_service() -> None:
    assert listen_address("0.0.0.0:9000") == ("0.0.0.0", 9000)
    assert listen_address("[::1]:0") == ("::1", 0)
    assert listen_address(":8089") == ("127.0.0.1", 8089)
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    command = compose["services"]["console"]["command"]
    assert command[0] == "console"
    args = build_parser().parse_args(command[1:])
    assert args.listen == ("0.0.0.0", 8089) and args.max_execs == 10_000
    assert not args.allow_control
    ports = compose["services"]["console"]["ports"]
    assert all(str(p).startswith("127.0.0.1:") for p in ports)


def test_page_uses_no_markup_sinks() -> None:
    """The page builds DOM from data as text only."""
    static = ROOT / "src" / "execbus" / "console" / "static" / "js"
    for path in static.glob("*.js"):
        text = path.read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
            assert sink not in text, f"{path.name} uses {sink}"
    index = (ROOT / "src" / "execbus" / "console" / "static" / "index.html").read_text()
    assert "<script>" not in index and "style=" not in index  # CSP: no inline code or style
    assert json.loads(json.dumps({"k": "</script>"}))  # JSON, not markup, carries data
