"""A bad agent is visible: refused tokens, untrusted certificates, dead sockets, silence.

For each cause a real worker owns a real (or deliberately broken) agent and
the test checks what an operator and a caller see: one WARNING naming the
cause, the link state in /readyz, the metrics and ``execbus status``, a
request that fails within the agent call timeout with the cause and its own
code, and one INFO line once the agent is back.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from execbus.testing.processes import WorkerProcess, child_env
from tests.system.integration.bus import Bus
from tests.system.ops.scrape import scrape, value
from tests.system.security.support import AgentDaemon, Certs

pytestmark = pytest.mark.integration

CALL_TIMEOUT = 2.0
Daemon = Callable[..., AgentDaemon]


def wait_link(worker: WorkerProcess, agent: str, timeout: float = 15.0) -> dict[str, Any]:
    """The worker's link state of ``agent`` once it owns it and the link is down."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = ((worker.readyz() or {}).get("agents") or {}).get(agent) or {}  # type: ignore[union-attr, attr-defined]
        link = info.get("link")
        # Down, and the first attempt is over (not the initial state).
        if info.get("owner") and link and link.get("reason") not in (None, "not connected yet"):
            return dict(link)
        time.sleep(0.05)
    raise AssertionError(f"no down link for {agent!r}:\n{worker.log()}")


def warnings_about(worker: WorkerProcess, text: str) -> list[str]:
    return [line for line in worker.log().splitlines() if "WARNING" in line and text in line]


async def run_fails_fast(amqp_url: str, namespace: str, agent: str) -> tuple[dict[str, Any], float]:
    """An exec.run to a down agent: its reply and how long it took."""
    async with Bus(amqp_url, namespace) as bus:
        started = time.monotonic()
        body = {"type": "exec.run", "exec_id": uuid.uuid4().hex, "config": {"cmd": ["true"]}}
        reply = await bus.call(agent, body, timeout=30)
        return reply, time.monotonic() - started


def status_text(amqp_url: str, namespace: str) -> str:
    env = child_env(EXECBUS_AMQP_URL=amqp_url, EXECBUS_NAMESPACE=namespace)
    proc = subprocess.run(
        [sys.executable, "-m", "execbus", "status", "--listen", "1.5"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.stdout


@pytest.fixture
def worker_env(tmp_path: Path) -> dict[str, str]:
    return {"EXECBUS_AGENT_CALL_TIMEOUT": str(CALL_TIMEOUT), "EXECBUS_LOG_LEVEL": "info"}


async def test_a_refused_token_is_an_auth_failure_everywhere(
    amqp_url: str,
    namespace: str,
    daemon: Daemon,
    token_file: Path,
    start_worker: Any,
    worker_env: dict[str, str],
    tmp_path: Path,
) -> None:
    agent = daemon("--listen", "tcp://127.0.0.1:0", "--token-file", str(token_file))
    wrong = tmp_path / "wrong-token"
    wrong.write_text("not-the-token\n")
    address = f"tcp://127.0.0.1:{agent.port('tcp')}"
    worker = start_worker(
        "--agent", f"vm1={address}", env={**worker_env, "EXECBUS_AGENT_TOKEN_FILE": str(wrong)}
    )
    link = wait_link(worker, "vm1")
    assert link["code"] == "agent_auth_failed"
    assert "refused our token" in link["reason"]
    reply, took = await run_fails_fast(amqp_url, namespace, "vm1")
    assert reply["error"]["code"] == "agent_auth_failed", reply
    assert "refused our token" in reply["error"]["message"]
    assert took < CALL_TIMEOUT, f"an auth failure is known: fail at once, took {took:.2f} s"
    metrics = scrape(worker.http_port)
    assert value(metrics, "execbus_agent_connected", agent="vm1") == 0.0
    assert value(metrics, "execbus_agent_owned", agent="vm1") == 1.0
    assert value(metrics, "execbus_agent_link_down_total", agent="vm1") == 1.0
    assert "DOWN (agent_auth_failed): agent 'vm1' refused our token" in status_text(
        amqp_url, namespace
    )
    assert len(warnings_about(worker, "refused our token")) == 1, "one WARNING per change"


async def test_an_untrusted_agent_certificate_names_its_subject(
    amqp_url: str,
    namespace: str,
    daemon: Daemon,
    certs: Certs,
    token_file: Path,
    start_worker: Any,
    worker_env: dict[str, str],
) -> None:
    agent = daemon(
        "--listen", "tls://127.0.0.1:0", "--token-file", str(token_file),
        "--tls-cert", str(certs.pem("server")), "--tls-key", str(certs.key("server")),
    )  # fmt: skip
    env = {
        **worker_env,
        "EXECBUS_AGENT_TOKEN_FILE": str(token_file),
        "EXECBUS_AGENT_TLS_CA_FILE": str(certs.pem("rogue")),
    }
    worker = start_worker("--agent", f"vm1=tls://127.0.0.1:{agent.port('tls')}", env=env)
    link = wait_link(worker, "vm1")
    assert link["code"] == "agent_auth_failed"
    assert "failed verification" in link["reason"]
    assert "(subject CN=execbus-agent)" in link["reason"]
    reply, took = await run_fails_fast(amqp_url, namespace, "vm1")
    assert reply["error"]["code"] == "agent_auth_failed"
    assert took < CALL_TIMEOUT
    assert len(warnings_about(worker, "failed verification")) == 1


async def test_an_agent_that_refuses_our_client_certificate(
    amqp_url: str,
    namespace: str,
    daemon: Daemon,
    certs: Certs,
    token_file: Path,
    start_worker: Any,
    worker_env: dict[str, str],
) -> None:
    agent = daemon(
        "--listen", "tls://127.0.0.1:0", "--token-file", str(token_file),
        "--tls-cert", str(certs.pem("server")), "--tls-key", str(certs.key("server")),
        "--tls-client-ca", str(certs.pem("ca")),
    )  # fmt: skip
    env = {
        **worker_env,
        "EXECBUS_AGENT_TOKEN_FILE": str(token_file),
        "EXECBUS_AGENT_TLS_CA_FILE": str(certs.pem("ca")),
    }
    worker = start_worker("--agent", f"vm1=tls://127.0.0.1:{agent.port('tls')}", env=env)
    link = wait_link(worker, "vm1")
    assert link["code"] == "agent_auth_failed"
    assert "requires a client certificate it trusts (mTLS)" in link["reason"]
    assert "this worker presents none (set EXECBUS_AGENT_TLS_CERT_FILE)" in link["reason"]
    reply, took = await run_fails_fast(amqp_url, namespace, "vm1")
    assert reply["error"]["code"] == "agent_auth_failed"
    assert took < CALL_TIMEOUT


async def test_connection_refused_fails_within_the_call_timeout_and_recovers(
    amqp_url: str,
    namespace: str,
    start_worker: Any,
    start_agent: Any,
    worker_env: dict[str, str],
    tmp_path: Path,
) -> None:
    sock = tmp_path / "later.sock"
    worker = start_worker("--agent", f"vm1=unix://{sock}", env=worker_env)
    link = wait_link(worker, "vm1")
    assert link["code"] == "agent_unavailable"
    assert str(sock) in link["reason"]
    reply, took = await run_fails_fast(amqp_url, namespace, "vm1")
    assert reply["error"]["code"] == "agent_unavailable", reply
    assert str(sock) in reply["error"]["message"]
    assert took < CALL_TIMEOUT + 0.5, f"within the call timeout, not twice it: {took:.2f} s"
    assert len(warnings_about(worker, str(sock))) == 1
    start_agent("vm1", socket_path=sock)
    worker.wait_owner("vm1")
    async with Bus(amqp_url, namespace) as bus:
        ok = await bus.call("vm1", {"type": "exec.run", "config": {"cmd": ["true"]}})
    assert ok["ok"], ok
    assert any("connected again after" in line for line in worker.log().splitlines())


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP port that accepts connections and never says a word."""
    server = socket.create_server(("127.0.0.1", 0))
    server.listen(16)
    yield server.getsockname()[1]
    server.close()


async def test_an_agent_that_never_answers_times_out(
    amqp_url: str,
    namespace: str,
    silent_server: int,
    token_file: Path,
    start_worker: Any,
    worker_env: dict[str, str],
) -> None:
    env = {**worker_env, "EXECBUS_AGENT_TOKEN_FILE": str(token_file)}
    worker = start_worker("--agent", f"vm1=tcp://127.0.0.1:{silent_server}", env=env)
    link = wait_link(worker, "vm1")
    assert link["code"] == "agent_unavailable"
    assert "timed out" in link["reason"]
    reply, took = await run_fails_fast(amqp_url, namespace, "vm1")
    assert reply["error"]["code"] == "agent_unavailable"
    assert "timed out" in reply["error"]["message"]
    assert took < CALL_TIMEOUT + 0.5
