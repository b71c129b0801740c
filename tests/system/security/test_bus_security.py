"""Security over the bus: caller identity, the policy, limits, secrets, TLS agents.

Real RabbitMQ (with real users made by ``rabbitmqctl``), real workers, real
agent processes.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import aiormq
import pytest

from tests.system.integration.bus import Bus, b64, unb64
from tests.system.security.conftest import BrokerUsers
from tests.system.security.support import Certs

pytestmark = pytest.mark.integration

SECRET_ENV = "s3cr3t-value-123"
SECRET_STDIN = "stdin-secret-456"


class CallerBus(Bus):
    """A :class:`Bus` that publishes with an AMQP ``user_id`` (or none)."""

    def __init__(self, url: str, ns: str, user_id: str | None) -> None:
        super().__init__(url, ns, user_id)


def run_body(cmd: list[str], **config: Any) -> dict[str, Any]:
    return {"type": "exec.run", "exec_id": uuid.uuid4().hex, "config": {"cmd": cmd, **config}}


def write_policy(path: Path, users: BrokerUsers) -> Path:
    path.write_text(
        f"""
[[rule]]
name = "alice"
callers = ["{users.alice}"]
agents = ["a1"]
containers = [""]          # the agent's host
users = ["", "nobody"]     # the agent's default user, or nobody
privileged = false
max_timeout = 60
"""
    )
    return path


def agent_ready(log_path: Path, timeout: float = 10.0) -> dict[str, Any]:
    """The agent's "agent ready" log line (JSON logs), once it is written."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log_path.read_text().splitlines():
            if '"agent ready"' in line:
                doc: dict[str, Any] = json.loads(line)
                return doc
        time.sleep(0.02)
    raise AssertionError(f"agent not ready: {log_path.read_text()}")


async def reasons(amqp_url: str, ns: str, count: int) -> list[str]:
    async with Bus(amqp_url, ns) as bus:
        letters = await bus.dead_letters(count)
    return [str((m.headers or {}).get("x-execbus-reason", "")) for m in letters]


@pytest.fixture
def policy_worker(
    broker_users: BrokerUsers, start_agent: Any, start_worker: Any, tmp_path: Path
) -> Any:
    """A worker serving agent ``a1`` under the test policy (alice allowed, mallory not)."""
    agent = start_agent("a1")
    policy = write_policy(tmp_path / "policy.toml", broker_users)
    worker = start_worker("--agent", f"a1={agent.address}", "--policy-file", str(policy))
    worker.wait_owner("a1")
    return worker


# -- identity ------------------------------------------------------------------


async def test_the_broker_refuses_a_forged_user_id(
    amqp_url: str,
    namespace: str,
    broker_users: BrokerUsers,
    policy_worker: Any,
    tmp_path: Path,
) -> None:
    marker = tmp_path / "forged"
    # mallory's connection claims to be alice, who the policy allows
    async with CallerBus(
        broker_users.url(broker_users.mallory), namespace, broker_users.alice
    ) as bus:
        with pytest.raises(aiormq.exceptions.ChannelPreconditionFailed) as refused:
            await bus.call("a1", run_body(["touch", str(marker)], timeout=10))
        # aiormq maps reply code 406 to this class; the broker names both users
        text = str(refused.value)
        assert "PRECONDITION_FAILED" in text and "user_id property set to" in text, text
        assert broker_users.alice in text and broker_users.mallory in text, text
    await asyncio.sleep(0.5)
    assert not marker.exists(), "a message with a forged user_id ran"


async def test_policy_allows_and_denies_by_verified_caller(
    amqp_url: str,
    namespace: str,
    broker_users: BrokerUsers,
    policy_worker: Any,
    tmp_path: Path,
) -> None:
    alice, mallory = broker_users.alice, broker_users.mallory
    ran = tmp_path / "alice-ran"
    markers = {name: tmp_path / name for name in ("m1", "m2", "m3", "m4", "m5")}
    env = [f"SECRET_TOKEN={SECRET_ENV}"]
    denied: list[tuple[dict[str, Any], str, str]] = []  # (reply, exec id, why)
    async with Bus(amqp_url, namespace) as watcher:
        async with CallerBus(broker_users.url(alice), namespace, alice) as as_alice:
            ok = await as_alice.call("a1", run_body(["touch", str(ran)], timeout=30))
            assert ok["ok"], ok
            assert ran.exists()
            allowed_id = ok["exec_id"]
            inspect = {"type": "exec.inspect", "exec_id": allowed_id}
            assert (await as_alice.call("a1", inspect))["ok"]
            nobody = await as_alice.call("a1", run_body(["id", "-un"], timeout=30, user="nobody"))
            assert unb64(nobody["result"]["exit"]["stdout"]) == b"nobody\n"
            for name, config, why in [
                ("m2", {"timeout": 30, "user": "root"}, "user 'root' is not allowed"),
                ("m3", {}, "a timeout is required (at most 60 s)"),
                ("m4", {"timeout": 30, "privileged": True}, "privileged execs are not allowed"),
            ]:
                body = run_body(["touch", str(markers[name])], env=env, **config)
                denied.append((await as_alice.call("a1", body), body["exec_id"], why))
        async with CallerBus(broker_users.url(mallory), namespace, mallory) as as_mallory:
            body = run_body(["touch", str(markers["m1"])], timeout=30, env=env)
            why = f"caller {mallory!r} is not allowed"
            denied.append((await as_mallory.call("a1", body), body["exec_id"], why))
            reply = await as_mallory.call("a1", inspect)
            denied.append((reply, allowed_id, f"caller {mallory!r} is not allowed"))
        async with CallerBus(amqp_url, namespace, None) as anonymous:  # guest, no user_id
            body = run_body(["touch", str(markers["m5"])], timeout=30)
            reply = await anonymous.call("a1", body)
            denied.append((reply, body["exec_id"], "the request has no user_id"))
        await asyncio.sleep(0.3)
        touched = {e["exec_id"] for e in watcher.events}

    for reply, exec_id, why in denied:
        assert not reply["ok"], reply
        assert reply["error"]["code"] == "forbidden", reply
        assert why in reply["error"]["message"], (why, reply)
        if exec_id != allowed_id:
            assert exec_id not in touched, "a denied request reached the registry"
    for marker in markers.values():
        assert not marker.exists(), f"a denied request ran ({marker.name})"
    got = await reasons(amqp_url, namespace, len(denied))
    assert all(r.startswith("forbidden: ") for r in got), got
    for _, _, why in denied:
        assert any(why in r for r in got), (why, got)
    assert not any(SECRET_ENV in r for r in got)
    log = policy_worker.log_path.read_text()
    assert "denied exec.run from caller" in log
    assert SECRET_ENV not in log
    assert "no authorization policy" not in log


async def test_pool_requests_are_authorized_against_the_agent_chosen(
    amqp_url: str,
    namespace: str,
    broker_users: BrokerUsers,
    start_agent: Any,
    start_worker: Any,
    tmp_path: Path,
) -> None:
    alice, mallory = broker_users.alice, broker_users.mallory
    policy = tmp_path / "policy.toml"
    policy.write_text(
        f"""
[[rule]]
callers = ["{alice}"]
agents = ["a1"]             # the pool's member
containers = [""]
users = [""]

[[rule]]
callers = ["{mallory}"]
agents = ["p"]              # the pool's name is not an agent
containers = [""]
users = [""]
"""
    )
    agent = start_agent("a1")
    worker = start_worker(
        "--agent", f"a1={agent.address}", "--pool", "p=a1", "--policy-file", str(policy)
    )  # fmt: skip
    worker.wait_owner("a1")
    marker = tmp_path / "mallory-ran"
    async with CallerBus(broker_users.url(alice), namespace, alice) as as_alice:
        corr = await as_alice.publish("pool.p", {"v": 1, **run_body(["true"])})
        reply = await as_alice.reply(corr)
        assert reply["ok"] and reply["agent"] == "a1", reply
    async with CallerBus(broker_users.url(mallory), namespace, mallory) as as_mallory:
        body = {"v": 1, **run_body(["touch", str(marker)])}
        reply = await as_mallory.reply(await as_mallory.publish("pool.p", body))
        assert reply["error"]["code"] == "forbidden", reply
        assert f"caller {mallory!r} may not use agent 'a1'" in reply["error"]["message"]
    assert not marker.exists()


# -- limits -------------------------------------------------------------------------


async def test_oversized_inputs_are_refused_with_clear_errors(
    amqp_url: str, namespace: str, start_agent: Any, start_worker: Any, tmp_path: Path
) -> None:
    agent = start_agent("a1")
    limits = {
        "EXECBUS_MAX_MESSAGE_BYTES": "65536",
        "EXECBUS_MAX_ARGV_ENTRIES": "8",
        "EXECBUS_MAX_ARGV_BYTES": "4096",
        "EXECBUS_MAX_ENV_ENTRIES": "4",
        "EXECBUS_MAX_ENV_BYTES": "1024",
        "EXECBUS_MAX_OUTPUT_LIMIT": "65536",
    }
    worker = start_worker("--agent", f"a1={agent.address}", env=limits)
    worker.wait_owner("a1")
    marker = tmp_path / "ran"
    touch = ["sh", "-c", f"touch {marker}", "sh"]
    cases: list[tuple[dict[str, Any] | bytes, str, str]] = [
        ({"cmd": [*touch, *"abcde"]}, "limit_exceeded", "cmd has 9 arguments; this worker "
         "accepts at most 8 (EXECBUS_MAX_ARGV_ENTRIES)"),
        ({"cmd": [*touch, "x" * 5000]}, "limit_exceeded", "(EXECBUS_MAX_ARGV_BYTES)"),
        ({"cmd": touch, "env": [f"K{i}=v" for i in range(5)]}, "limit_exceeded",
         "env has 5 entries; this worker accepts at most 4 (EXECBUS_MAX_ENV_ENTRIES)"),
        ({"cmd": touch, "env": [f"SECRET={SECRET_ENV}" + "x" * 2000]}, "limit_exceeded",
         "env is 2023 bytes; this worker accepts at most 1024 (EXECBUS_MAX_ENV_BYTES)"),
        ({"cmd": touch, "output_limit": 100_000}, "limit_exceeded",
         "output_limit is 100000 bytes; this worker accepts at most 65536"),
        # the wire contract's own caps
        ({"cmd": [*touch, *["x"] * 5000]}, "invalid", "cmd: List should have at most 4096"),
        ({"cmd": touch, "output_limit": 5 * 1024 * 1024}, "invalid", "output_limit"),
        ({"cmd": touch, "env": ["A=" + "x" * 40_000]}, "invalid", "longer than 32768 bytes"),
        # the message size
        ({"cmd": touch, "env": [f"K{i}=" + "x" * 30_000 for i in range(3)]}, "invalid",
         "exceeds the limit of 65536"),
    ]  # fmt: skip
    async with Bus(amqp_url, namespace) as bus:
        for config, code, message in cases:
            reply = await bus.call("a1", run_body(**config))  # type: ignore[arg-type]
            assert not reply["ok"], reply
            assert reply["error"]["code"] == code, (message, reply)
            assert message in reply["error"]["message"], (message, reply)
            assert SECRET_ENV not in reply["error"]["message"]
        # within the limits it runs
        ok = await bus.call("a1", run_body(touch, env=["A=1"], output_limit=1024))
        assert ok["ok"], ok
    got = await reasons(amqp_url, namespace, len(cases))
    assert sorted(r.partition(":")[0] for r in got) == sorted(c[1] for c in cases), got
    assert not any(SECRET_ENV in r for r in got)
    assert marker.exists()  # only the last one ran
    marker.unlink()


# -- secrets ---------------------------------------------------------------------------


async def test_secrets_stay_out_of_logs_events_metrics_and_dead_letter_reasons(
    amqp_url: str, namespace: str, start_agent: Any, start_worker: Any
) -> None:
    agent = start_agent("a1", "--log-level", "debug", "--log-format", "json")
    worker = start_worker("--agent", f"a1={agent.address}", "--log-format", "json")
    worker.wait_owner("a1")
    env = [f"SECRET_TOKEN={SECRET_ENV}", "PLAIN=1"]
    async with Bus(amqp_url, namespace) as bus:
        # a run that reads its stdin (and prints neither secret)
        body = run_body(
            ["sh", "-c", 'cat >/dev/null; test -n "$SECRET_TOKEN" && echo finished'],
            env=env,
            attach_stdin=True,
            stream_output=True,
            timeout=30,
        )
        corr = await bus.publish("agent.a1", {"v": 1, **body})
        await bus.wait_event(body["exec_id"], "started")
        stdin = {"v": 1, "type": "exec.stdin", "exec_id": body["exec_id"]}
        data = f"{SECRET_STDIN}\n".encode()
        assert (await bus.call("a1", {**stdin, "data": b64(data), "close": True}))["ok"]
        reply = await bus.reply(corr)
        assert reply["ok"], reply
        assert unb64(reply["result"]["exit"]["stdout"]) == b"finished\n"
        # failures that carry secrets: invalid, unknown exec, start failure
        bad = run_body(["true"], env=[*env, "NO_EQUALS_SIGN"])
        assert (await bus.call("a1", bad))["error"]["code"] == "invalid"
        unknown = {**stdin, "exec_id": uuid.uuid4().hex, "data": b64(data)}
        assert (await bus.call("a1", unknown))["error"]["code"] == "not_found"
        failing = run_body(["true"], env=env, user="no-such-user-xyz")
        assert (await bus.call("a1", failing))["error"]["code"] == "unknown_user"
        await bus.wait_event(failing["exec_id"], "failed")
        events = json.dumps(bus.events)
    dead = await reasons(amqp_url, namespace, 1)
    url = f"http://127.0.0.1:{worker.http_port}/metrics"
    metrics = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read())
    places = {
        "worker log": worker.log_path.read_text(),
        "agent log": agent.log_path.read_text(),
        "events": events,
        "dead-letter reasons": json.dumps(dead),
        "metrics": metrics.decode(),
    }
    assert "SECRET_TOKEN" in events  # env keys are published, values never
    assert '"exec.output"' in events or "exec.exited" in events
    secrets = [SECRET_ENV, SECRET_STDIN, b64(data), base64.b64encode(SECRET_ENV.encode()).decode()]
    for where, text in places.items():
        assert text, where
        for secret in secrets:
            assert secret not in text, f"{secret!r} leaked into the {where}"
    assert "no authorization policy" in places["worker log"]  # the startup warning


# -- TLS agents ------------------------------------------------------------------------------


async def test_worker_runs_on_an_mtls_agent(
    amqp_url: str,
    namespace: str,
    certs: Certs,
    token_file: Path,
    start_agent: Any,
    start_worker: Any,
) -> None:
    agent = start_agent(
        "a1",
        "--listen", "tls://127.0.0.1:0", "--token-file", str(token_file),
        "--tls-cert", str(certs.pem("server")), "--tls-key", str(certs.key("server")),
        "--tls-client-ca", str(certs.pem("ca")), "--log-format", "json",
    )  # fmt: skip
    ready = agent_ready(agent.log_path)
    port = int(next(u for u in ready["listen"] if u.startswith("tls://")).rsplit(":", 1)[1])
    worker = start_worker(
        "--agent", f"a1=tls://127.0.0.1:{port}",
        "--agent-token-file", str(token_file),
        "--agent-tls-ca", str(certs.pem("ca")),
        "--agent-tls-cert", str(certs.pem("client")),
        "--agent-tls-key", str(certs.key("client")),
    )  # fmt: skip
    worker.wait_owner("a1")
    async with Bus(amqp_url, namespace) as bus:
        reply = await bus.call("a1", run_body(["sh", "-c", "echo over mutual tls"], timeout=30))
        assert reply["ok"], reply
        assert unb64(reply["result"]["exit"]["stdout"]) == b"over mutual tls\n"
    assert "CN=worker-1" in agent.log_path.read_text()


async def test_sdk_requests_carry_the_callers_verified_identity(
    namespace: str,
    broker_users: BrokerUsers,
    policy_worker: Any,
    tmp_path: Path,
) -> None:
    from execbus import Client
    from execbus.errors import Forbidden

    async with Client(broker_users.url(broker_users.alice), namespace=namespace) as client:
        result = await client.run("a1", ["echo", "hi"], timeout=30)
        assert result.stdout == b"hi\n"
    marker = tmp_path / "mallory-ran"
    async with Client(broker_users.url(broker_users.mallory), namespace=namespace) as client:
        with pytest.raises(Forbidden, match=r"not allowed|may not"):
            await client.run("a1", ["touch", str(marker)], timeout=30)
    assert not marker.exists()
