"""Hostile tenants and poison messages, with exactly the permissions docs/security.md grants.

Every user here gets the permissions ``execbus permissions`` prints (the same
text docs/security.md shows): two tenants (alice, bob), an operator (ops) and
the worker's own user. Each test reproduces an attack from issue #16 as an
outsider would run it (raw AMQP with the attacker's credentials) against a
policy-guarded worker and a real agent, and checks that it fails and that
nothing ran, leaked or was lost.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import aio_pika
import aiormq
import pytest
from aio_pika.abc import AbstractIncomingMessage

from execbus.testing.processes import WorkerProcess, child_env, delete_namespace
from execbus.wire.permissions import permissions
from tests.system.integration.bus import Bus, unb64
from tests.system.ops.scrape import scrape, value

pytestmark = pytest.mark.integration

PASSWORD = "pw-" + uuid.uuid4().hex[:8]


@dataclass(frozen=True)
class Tenants:
    """The namespace of this module and its users' AMQP URLs."""

    ns: str
    base_url: str
    suffix: str

    def user(self, role: str) -> str:
        return f"eb-{role}-{self.suffix}"

    def url(self, role: str) -> str:
        parts = urlsplit(self.base_url)
        netloc = f"{quote(self.user(role))}:{PASSWORD}@{parts.hostname or 'localhost'}"
        if parts.port:
            netloc += f":{parts.port}"
        return urlunsplit(parts._replace(netloc=netloc))


def _ctl(*args: str) -> None:
    proc = subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {args[0]} failed: {proc.stderr.strip()}")


def _grant(user: str, role: str, ns: str, vhost: str) -> None:
    granted = permissions(role, user, ns, agents="a-.*")
    _ctl("set_permissions", "-p", vhost, user, granted.configure, granted.write, granted.read)
    for topic in granted.topics:
        _ctl("set_topic_permissions", "-p", vhost, user, topic.exchange, topic.write, topic.read)


@pytest.fixture(scope="module")
def tenants(amqp_url: str) -> Iterator[Tenants]:
    if shutil.which("rabbitmqctl") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("rabbitmqctl is needed to add RabbitMQ users")
        pytest.skip("rabbitmqctl is needed to add RabbitMQ users")
    t = Tenants(f"t{uuid.uuid4().hex[:10]}", amqp_url, uuid.uuid4().hex[:6])
    vhost = urlsplit(amqp_url).path.lstrip("/") or "/"
    roles = {"alice": "caller", "bob": "caller", "ops": "caller", "w": "worker"}
    try:
        for name, role in roles.items():
            _ctl("add_user", t.user(name), PASSWORD)
            _grant(t.user(name), role, t.ns, vhost)
        yield t
    finally:
        for name in roles:
            with contextlib.suppress(RuntimeError):
                _ctl("delete_user", t.user(name))
        asyncio.run(delete_namespace(amqp_url, t.ns))


@pytest.fixture
def namespace(tenants: Tenants) -> str:
    """Every test of this module works in the tenants' namespace (permissions name it)."""
    return tenants.ns


@pytest.fixture
def agent_name(request: pytest.FixtureRequest) -> str:
    return f"a-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def guarded(
    tenants: Tenants, start_agent: Any, start_worker: Any, tmp_path: Path, agent_name: str
) -> WorkerProcess:
    """A worker running as the worker user, with a policy: alice and bob may run as
    nobody on the a-* agents; ops may also act on everyone's execs."""
    policy = tmp_path / "policy.toml"
    policy.write_text(
        textwrap.dedent(
            f"""
            [[rule]]
            name = "tenants"
            callers = ["{tenants.user("alice")}", "{tenants.user("bob")}"]
            agents = ["a-*"]
            containers = [""]
            users = ["", "nobody"]
            max_timeout = 120

            [[rule]]
            name = "operators"
            callers = ["{tenants.user("ops")}"]
            agents = ["a-*"]
            all_execs = true
            """
        )
    )
    agent = start_agent(agent_name)
    worker = start_worker(
        "--agent",
        f"{agent_name}={agent.address}",
        "--policy-file",
        str(policy),
        env={"EXECBUS_AMQP_URL": tenants.url("w"), "EXECBUS_LOG_LEVEL": "info"},
    )
    worker.wait_owner(agent_name)
    asyncio.run(purge_dead_letters(tenants))  # the namespace is shared by this module
    return worker


async def purge_dead_letters(tenants: Tenants) -> None:
    connection = await aio_pika.connect(tenants.base_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.get_queue(f"{tenants.ns}.dead", ensure=False)
        await queue.purge()


@contextlib.asynccontextmanager
async def as_user(tenants: Tenants, role: str) -> AsyncIterator[Bus]:
    """A raw AMQP peer with ``role``'s credentials; it looks exchanges up passively."""
    bus = TenantBus(tenants.url(role), tenants.ns, tenants.user(role))
    async with bus:
        yield bus


class TenantBus(Bus):
    """The test's raw peer, without the declares a tenant has no right to make."""

    async def __aenter__(self) -> TenantBus:
        self.connection = await aio_pika.connect(self.amqp_url)
        self.channel = await self.connection.channel(publisher_confirms=True)
        self.reply_queue = await self.channel.declare_queue(exclusive=True, auto_delete=True)
        await self.reply_queue.consume(self._on_reply, no_ack=True)
        return self


def run_body(cmd: list[str], **config: Any) -> dict[str, Any]:
    config.setdefault("timeout", 60)
    return {"type": "exec.run", "exec_id": uuid.uuid4().hex, "config": {"cmd": cmd, **config}}


def connection_losses(worker: WorkerProcess) -> float:
    return value(scrape(worker.http_port), "execbus_broker_reconnects_total")


# -- 1. tenants read each other's output --------------------------------------


async def test_a_caller_cannot_delete_or_redeclare_the_events_exchange(
    tenants: Tenants, guarded: WorkerProcess, agent_name: str
) -> None:
    events = f"{tenants.ns}.events"
    async with as_user(tenants, "bob") as bob:
        assert bob.connection is not None
        channel = await bob.connection.channel()
        with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
            await channel.exchange_delete(events)
        channel = await bob.connection.channel()
        with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
            await channel.declare_exchange(events, aio_pika.ExchangeType.FANOUT, durable=True)
        # A wide binding beyond the agents its topic permissions name is refused too.
        channel = await bob.connection.channel()
        queue = await channel.declare_queue(exclusive=True)
        with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
            await queue.bind(events, "#")
    async with as_user(tenants, "alice") as alice:
        assert alice.channel is not None
        events_queue = await alice.channel.declare_queue(exclusive=True)
        await events_queue.bind(events, f"exec.{agent_name}.#")
        got: list[Any] = []

        async def collect(message: AbstractIncomingMessage) -> None:
            got.append(json.loads(message.body))

        await events_queue.consume(collect, no_ack=True)
        reply = await alice.call(agent_name, run_body(["echo", "still-topic"]))
        assert reply["ok"], reply
        async with asyncio.timeout(10):
            while not any(e["type"] == "exec.exited" for e in got):
                await asyncio.sleep(0.05)
    assert connection_losses(guarded) == 1


# -- 2. poison messages -----------------------------------------------------------


def publish_non_utf8(url: str, ns: str, routing_key: str, user: str) -> None:
    """Publish a request whose message_id, type and a header name are not UTF-8: a
    subprocess whose encoder writes lone surrogates as raw bytes, as a hostile client
    library would."""
    script = textwrap.dedent(
        f"""
        import asyncio, aio_pika
        from pamqp import encode
        def raw(value):
            data = value.encode("utf-8", "surrogateescape")
            return bytes([len(data)]) + data
        encode.short_str = raw
        encode.METHODS["shortstr"] = raw
        async def main():
            conn = await aio_pika.connect({url!r})
            ch = await conn.channel(publisher_confirms=True)
            ex = await ch.get_exchange({ns + ".requests"!r}, ensure=False)
            body = b'{{"v": 1, "type": "exec.run", "config": {{"cmd": ["true"]}}}}'
            msg = aio_pika.Message(body, message_id="\\udcff\\udcfe", type="\\udcc3",
                                   user_id={user!r})
            await ex.publish(msg, {routing_key!r})
            await conn.close()
        asyncio.run(main())
        """
    )
    env = child_env()
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=60)


async def test_a_non_utf8_property_is_dead_lettered_and_the_worker_stays_connected(
    tenants: Tenants, guarded: WorkerProcess, agent_name: str
) -> None:
    publish_non_utf8(tenants.url("bob"), tenants.ns, f"agent.{agent_name}", tenants.user("bob"))
    async with Bus(tenants.base_url, tenants.ns) as operator:  # an aio-pika reader of <ns>.dead
        (letter,) = await operator.dead_letters(1)
        reason = str((letter.headers or {}).get("x-execbus-reason"))
        assert reason == "invalid: the AMQP property message_id is not valid UTF-8", reason
        assert letter.message_id is not None and "\ufffd" in letter.message_id
    async with as_user(tenants, "alice") as alice:
        assert (await alice.call(agent_name, run_body(["true"])))["ok"]
    assert connection_losses(guarded) == 1, "one poison message cost a broker connection"


async def test_a_request_with_huge_headers_is_dead_lettered_in_one_piece(
    tenants: Tenants, guarded: WorkerProcess, agent_name: str
) -> None:
    # ~120 KiB of headers: the request fits the broker's frame_max (128 KiB), a
    # verbatim dead-letter copy with the reason added would not.
    headers = {f"h{i:05d}": "x" * 100 for i in range(1150)}
    async with as_user(tenants, "bob") as bob:
        assert bob.channel is not None
        exchange = await bob.channel.get_exchange(f"{tenants.ns}.requests", ensure=False)
        message = aio_pika.Message(b"not json", headers=headers, user_id=tenants.user("bob"))
        await exchange.publish(message, f"agent.{agent_name}", timeout=10)
    async with Bus(tenants.base_url, tenants.ns) as operator:
        (letter,) = await operator.dead_letters(1)
    dead = letter.headers or {}
    assert str(dead["x-execbus-reason"]).startswith("invalid: body is not valid JSON")
    assert int(dead["x-execbus-headers-dropped"]) > 100_000  # type: ignore[call-overload]
    assert letter.body == b"not json"
    assert connection_losses(guarded) == 1


# -- 3. a closed publishing channel -------------------------------------------------


async def test_a_closed_publishing_channel_starts_a_new_session(
    tenants: Tenants, guarded: WorkerProcess, agent_name: str
) -> None:
    async with Bus(tenants.base_url, tenants.ns) as operator:  # an operator deletes it
        assert operator.channel is not None
        await operator.channel.exchange_delete(f"{tenants.ns}.events")
    async with as_user(tenants, "alice") as alice:
        # The exec's created event hits the missing exchange: the channel closes.
        first = await alice.publish(f"agent.{agent_name}", {"v": 1, **run_body(["true"])})
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and connection_losses(guarded) < 2:
            await asyncio.sleep(0.1)
        assert connection_losses(guarded) == 2, "a new session (with the exchange redeclared)"
        guarded.wait_owner(agent_name)
        reply = await alice.reply(first, timeout=30)  # the request was requeued and run
        assert reply["ok"], reply
        again = await alice.call(agent_name, run_body(["echo", "after"]))
        assert unb64(again["result"]["exit"]["stdout"]) == b"after\n"
    assert "the publishing channel closed" in guarded.log()


# -- 4. callers' own queues ---------------------------------------------------------


async def test_a_caller_cannot_touch_another_callers_queues(tenants: Tenants) -> None:
    durable = f"{tenants.ns}.client.{tenants.user('alice')}.exits"
    async with as_user(tenants, "alice") as alice:
        assert alice.channel is not None
        await alice.channel.declare_queue(durable, durable=True)
    try:
        async with as_user(tenants, "bob") as bob:
            assert bob.connection is not None

            async def ignore(message: AbstractIncomingMessage) -> None:
                pass

            channel = await bob.connection.channel()
            queue = await channel.get_queue(durable, ensure=False)
            with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
                await queue.consume(ignore)
            channel = await bob.connection.channel()
            queue = await channel.get_queue(durable, ensure=False)
            with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
                await queue.purge()
            channel = await bob.connection.channel()
            with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
                await channel.queue_delete(durable)
            channel = await bob.connection.channel()
            with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
                await channel.declare_queue(f"{tenants.ns}.client.x.y", durable=True)
    finally:
        async with as_user(tenants, "alice") as alice:
            assert alice.channel is not None
            await alice.channel.queue_delete(durable)


# -- execs belong to their caller ------------------------------------------------------


async def test_execs_belong_to_their_caller(
    tenants: Tenants, guarded: WorkerProcess, agent_name: str, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    secret = run_body(["sh", "-c", f"echo ran >> {marker}; echo alice-secret; sleep 30"])
    secret["config"]["attach_stdin"] = True
    secret["config"]["detach"] = True
    exec_id = secret["exec_id"]
    async with as_user(tenants, "alice") as alice, as_user(tenants, "bob") as bob:
        assert (await alice.call(agent_name, secret))["ok"]
        for body in (
            {"type": "exec.inspect", "exec_id": exec_id, "include_output": True},
            {"type": "exec.wait", "exec_id": exec_id},
            {"type": "exec.signal", "exec_id": exec_id, "signal": "SIGKILL"},
            {"type": "exec.stdin", "exec_id": exec_id, "data": base64.b64encode(b"x").decode()},
            {"type": "exec.resize", "exec_id": exec_id, "width": 80, "height": 24},
            {"type": "exec.remove", "exec_id": exec_id, "force": True},
            {"type": "exec.start", "exec_id": exec_id},
            secret,  # a "retry" of alice's run would hand bob its outcome
        ):
            reply = await bob.call(agent_name, body)
            assert reply["error"]["code"] == "forbidden", (body["type"], reply)
            assert "belongs to another caller" in reply["error"]["message"]
        listed = await bob.call(agent_name, {"type": "exec.list"})
        assert exec_id not in [e["exec_id"] for e in listed["result"]["execs"]]
        mine = await alice.call(agent_name, {"type": "exec.list"})
        assert exec_id in [e["exec_id"] for e in mine["result"]["execs"]]
    async with as_user(tenants, "ops") as ops:
        seen = await ops.call(agent_name, {"type": "exec.list"})
        assert exec_id in [e["exec_id"] for e in seen["result"]["execs"]]
        killed = await ops.call(agent_name, {"type": "exec.signal", "exec_id": exec_id})
        assert killed["ok"], killed
    assert marker.read_text() == "ran\n"


# -- 8. the worker permissions as documented -----------------------------------------


async def test_the_documented_worker_permissions_are_enough(
    tenants: Tenants, guarded: WorkerProcess, agent_name: str
) -> None:
    """The ``guarded`` worker runs as the worker user: requests, replies, events,
    dead letters, membership and unknown agents all work with those permissions."""
    async with as_user(tenants, "alice") as alice:
        reply = await alice.call(agent_name, run_body(["echo", "hi"]))
        assert unb64(reply["result"]["exit"]["stdout"]) == b"hi\n"
        unknown = await alice.call("a-nobody-serves", run_body(["true"]))
        assert unknown["error"]["code"] == "unknown_agent"
    doc = guarded.readyz() or {}
    assert doc["broker"]["connected"] is True  # type: ignore[index]
    assert "ACCESS_REFUSED" not in guarded.log()


async def test_a_worker_without_enough_permissions_gives_up_with_one_line(
    tenants: Tenants, start_worker: Any, start_agent: Any, amqp_url: str, agent_name: str
) -> None:
    """Without write on the default exchange and amq.gen-* (the old hardening guide)."""
    user = f"eb-weak-{uuid.uuid4().hex[:6]}"
    vhost = urlsplit(amqp_url).path.lstrip("/") or "/"
    _ctl("add_user", user, PASSWORD)
    try:
        pattern = f"^{tenants.ns}\\..*$"
        _ctl("set_permissions", "-p", vhost, user, pattern, pattern, pattern)
        url = Tenants(tenants.ns, amqp_url, "").url("x").replace("eb-x-", user)
        agent = start_agent(agent_name)
        started = time.monotonic()
        worker = start_worker(
            "--agent", f"{agent_name}={agent.address}", wait=None, env={"EXECBUS_AMQP_URL": url}
        )
        code = worker.proc.wait(60)
        took = time.monotonic() - started
        log = worker.log()
        assert code == 1, log
        assert took < 30, f"gave up after {took:.1f} s"
        sessions = log.count("connected to amqp://")
        assert 2 <= sessions <= 10, f"backed off between sessions: {sessions}\n{log}"
        assert "Traceback" not in log
        assert log.count("giving up") == 1
        assert "refused this worker's user an operation" in log
    finally:
        _ctl("delete_user", user)


#: A worker's text log line: time, level, logger name, message.
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z [A-Z]+ ([\w.]+): ")


@pytest.mark.parametrize(
    "wrong",
    [
        "password",
        "vhost",
    ],
)
async def test_a_worker_refused_at_login_gives_up_with_one_line(
    tenants: Tenants, start_worker: Any, wrong: str
) -> None:
    """A wrong password (or vhost) is permanent: a few tries with backoff, then one
    "giving up" line with the broker's reason, and exit 1. Only execbus's own lines:
    no traceback, nothing from aiormq/aio-pika, and never the password."""
    secret = "wrong-" + uuid.uuid4().hex if wrong == "password" else PASSWORD
    url = tenants.url("w").replace(f":{PASSWORD}@", f":{secret}@")
    if wrong == "vhost":
        url = urlunsplit(urlsplit(url)._replace(path=f"/eb-no-such-vhost-{tenants.suffix}"))
    started = time.monotonic()
    worker = start_worker(wait=None, env={"EXECBUS_AMQP_URL": url})
    try:
        code = worker.proc.wait(30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running after 30 s:\n{worker.log()}")
    took = time.monotonic() - started
    log = worker.log_text()
    assert code == 1, log
    assert took < 30, f"gave up after {took:.1f} s"
    giving_up = [line for line in log.splitlines() if "giving up" in line]
    assert len(giving_up) == 1, log
    if wrong == "password":
        assert "refused our credentials (ACCESS_REFUSED - Login was refused" in giving_up[0]
    else:  # aiormq drops the broker's reply text (NOT_ALLOWED - vhost ... not found)
        assert "refused the connection" in giving_up[0], giving_up
    assert " ERROR execbus.worker: giving up: " in giving_up[0]
    assert "Traceback" not in log
    loggers = [LOG_LINE.match(line) for line in log.splitlines() if line.strip()]
    assert all(loggers), f"a line that is not a log line:\n{log}"
    names = {m.group(1) for m in loggers if m is not None}
    assert not {n for n in names if n.split(".")[0] in ("aiormq", "aio_pika")}, log
    assert secret not in log and quote(secret, safe="") not in log


# -- 9. amplification and foreign reply targets ------------------------------------------


async def test_inspect_and_list_do_not_amplify(
    tenants: Tenants, guarded: WorkerProcess, agent_name: str
) -> None:
    big = run_body(["head", "-c", "1048576", "/dev/zero"], output_limit=1048576)
    async with as_user(tenants, "alice") as alice:
        ran = await alice.call(agent_name, big)
        assert len(ran["result"]["exit"]["stdout"]) > 1_000_000  # the run's own result has it
        assert alice.channel is not None
        sizes: list[int] = []
        queue = await alice.channel.declare_queue(exclusive=True)

        async def measure(message: AbstractIncomingMessage) -> None:
            sizes.append(len(message.body))

        await queue.consume(measure, no_ack=True)
        exchange = await alice.channel.get_exchange(f"{tenants.ns}.requests", ensure=False)
        for i in range(50):
            kind = "exec.list" if i % 10 == 0 else "exec.inspect"
            body = {"v": 1, "type": kind, "exec_id": big["exec_id"]}
            if kind == "exec.list":
                body.pop("exec_id")
            message = aio_pika.Message(
                json.dumps(body).encode(), reply_to=queue.name, user_id=tenants.user("alice")
            )
            await exchange.publish(message, f"agent.{agent_name}", timeout=10)
        async with asyncio.timeout(20):
            while len(sizes) < 50:
                await asyncio.sleep(0.05)
    assert max(sizes) < 10_000, f"largest reply {max(sizes)} bytes"


async def test_a_reply_to_someone_elses_queue_is_refused(
    tenants: Tenants, guarded: WorkerProcess, agent_name: str, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    victim = f"{tenants.ns}.agent.{agent_name}-victim"
    async with Bus(tenants.base_url, tenants.ns) as operator:
        assert operator.channel is not None
        await operator.channel.declare_queue(victim, durable=True)
    async with as_user(tenants, "bob") as bob:
        assert bob.channel is not None
        exchange = await bob.channel.get_exchange(f"{tenants.ns}.requests", ensure=False)
        body = {"v": 1, **run_body(["touch", str(marker)])}
        message = aio_pika.Message(
            json.dumps(body).encode(), reply_to=victim, user_id=tenants.user("bob")
        )
        await exchange.publish(message, f"agent.{agent_name}", timeout=10)
    async with Bus(tenants.base_url, tenants.ns) as operator:
        (letter,) = await operator.dead_letters(1)
        assert operator.channel is not None
        depth = await operator.channel.declare_queue(victim, passive=True)
        assert depth.declaration_result.message_count == 0, "the worker wrote into the victim"
        await operator.channel.queue_delete(victim)
    reason = str((letter.headers or {}).get("x-execbus-reason"))
    assert "is not one of the caller's own queues" in reason, reason
    assert not marker.exists()


# -- 11. deep JSON to an unknown agent ---------------------------------------------------


async def test_deep_json_to_an_unknown_agent_does_not_wedge_the_unrouted_consumer(
    tenants: Tenants, guarded: WorkerProcess
) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    async with as_user(tenants, "bob") as bob:
        corr = await bob.publish("agent.a-unknown-1", deep)
        assert (await bob.reply(corr))["error"]["code"] == "unknown_agent"
        after = await bob.call("a-unknown-2", run_body(["true"]))
        assert after["error"]["code"] == "unknown_agent"
