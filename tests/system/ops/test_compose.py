"""docker-compose.yml: what it is for, closed by default, valid, scalable — and its wiring works.

The static tests read the compose file with its ``${VAR:-default}`` /
``${VAR:?message}`` interpolation done here (and by ``docker-compose config``
where it is installed, which must agree). The last test translates what only
exists inside Docker (the shared socket volume becomes a temporary directory,
the ``rabbitmq`` service the test broker, the stack's RabbitMQ user a fresh
one, fixed ports free ones) and starts the agent and two workers as
processes with exactly the compose file's commands, environment and policy.
The agent runs as uid 10001, as in the stack, when the test runs as root
(from the single-file build, which needs no venv).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import pytest
import yaml

from execbus.agent.cli import build_parser as agent_parser
from execbus.agent.config import make_config
from execbus.cli.worker import build_parser as worker_parser
from execbus.errors import Forbidden
from execbus.testing.processes import Managed, WorkerProcess, child_env, free_port
from execbus.wire.config import ExecConfig
from execbus.worker.policy_file import load_policy
from tests.conftest import ROOT
from tests.system.integration.bus import Bus, unb64

COMPOSE = ROOT / "docker-compose.yml"
SOCKET_VOLUME = "/run/execbus"
# What a user must provide (no default password exists).
USER_ENV = {"EXECBUS_MQ_PASSWORD": "not-guest-0123"}
IMAGE_UID = 10001
_VAR = re.compile(r"\$\{(\w+)(?:(:?)([-?])([^}]*))?\}")


class Missing(Exception):
    """A ``${VAR:?message}`` without VAR."""


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's variable substitution, recursively (``$$`` is not used in the file)."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        name, colon, op, arg = match.groups()
        current = env.get(name)
        unset = current is None or (colon == ":" and current == "")
        if op == "?" and unset:
            raise Missing(arg or f"{name} is required")
        if op == "-" and unset:
            return str(arg)
        return current or ""

    return _VAR.sub(one, value)


def raw() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return doc


def services(**env: str) -> dict[str, Any]:
    """The services as compose sees them with ``USER_ENV`` (plus ``env``) set."""
    result: dict[str, Any] = interpolate(raw()["services"], {**USER_ENV, **env})
    return result


def flag(args: list[str], name: str) -> str | None:
    """The value of ``--name VALUE`` in an argv (the last one wins, as in argparse)."""
    values = [args[i + 1] for i, a in enumerate(args[:-1]) if a == name]
    return values[-1] if values else None


def docker_compose(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("EXECBUS_")}
    return subprocess.run(
        ["docker-compose", "-f", str(COMPOSE), *args],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


needs_compose = pytest.mark.skipif(
    shutil.which("docker-compose") is None, reason="docker-compose not installed"
)


@needs_compose
def test_compose_file_validates_and_agrees_with_this_test() -> None:
    result = docker_compose(USER_ENV, "config")
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)["services"]
    mine = services()
    for name in ("rabbitmq", "agent", "worker"):
        env = resolved[name].get("environment", {})
        assert env == {k: str(v) for k, v in mine[name].get("environment", {}).items()}, name
    assert resolved["agent"]["user"] == mine["agent"]["user"] == "10001:10001"
    ports = sorted(str(p) for p in resolved["rabbitmq"]["ports"])
    assert ports == ["127.0.0.1:15673:15672/tcp", "127.0.0.1:5673:5672/tcp"]


@needs_compose
def test_compose_refuses_to_start_without_a_password() -> None:
    result = docker_compose({}, "config", "-q")
    assert result.returncode != 0
    assert "set EXECBUS_MQ_PASSWORD" in result.stderr


def test_the_file_says_what_it_is_for() -> None:
    head = []
    for line in COMPOSE.read_text().splitlines():
        if not line.startswith("#"):
            break
        head.append(line)
    text = "\n".join(head)
    assert "reference stack" in text and "not a production setup" in text
    for variable in ("EXECBUS_MQ_PASSWORD", "EXECBUS_MQ_PORT", "EXECBUS_AGENT_USER"):
        assert variable in text, f"the header documents {variable}"


def test_ports_are_on_loopback_configurable_and_clear_of_a_local_broker() -> None:
    published = {name: svc.get("ports", []) for name, svc in raw()["services"].items()}
    assert set(published) >= {"rabbitmq"} and published["rabbitmq"]
    for name, ports in published.items():
        for port in ports:
            assert str(port).startswith("127.0.0.1:"), (
                f"{name}: {port} is published beyond loopback"
            )
            found = re.fullmatch(r"127\.0\.0\.1:\$\{\w+:-(\d+)\}:\d+", str(port))
            assert found, f"{name}: the host port of {port} is not configurable"
            assert int(found.group(1)) not in (5672, 15672), "clashes with a local broker"
    moved = services(EXECBUS_MQ_PORT="6001", EXECBUS_MQ_UI_PORT="6002")["rabbitmq"]["ports"]
    assert moved == ["127.0.0.1:6001:5672", "127.0.0.1:6002:15672"]


def test_credentials_come_from_the_environment() -> None:
    text = COMPOSE.read_text()
    assert "guest:" not in text and "guest@" not in text, "no guest:guest anywhere"
    with pytest.raises(Missing, match="set EXECBUS_MQ_PASSWORD"):
        interpolate(raw()["services"], {})
    svc = services(EXECBUS_MQ_USER="alice")
    env = svc["rabbitmq"]["environment"]
    assert env["RABBITMQ_DEFAULT_USER"] == "alice"
    assert env["RABBITMQ_DEFAULT_PASS"] == USER_ENV["EXECBUS_MQ_PASSWORD"]
    url = f"amqp://alice:{USER_ENV['EXECBUS_MQ_PASSWORD']}@rabbitmq:5672/"
    for name in ("worker", "cli"):
        assert svc[name]["environment"]["EXECBUS_AMQP_URL"] == url, name


def policy_mount() -> tuple[Path, str]:
    """(the policy file on the host, where the workers read it)."""
    worker = services()["worker"]
    target = worker["environment"]["EXECBUS_POLICY_FILE"]
    mounts = [v for v in worker["volumes"] if v.split(":")[1] == target]
    assert len(mounts) == 1, worker["volumes"]
    source, _, mode = mounts[0].split(":")
    assert mode == "ro", "the policy is mounted read-only"
    return (ROOT / source).resolve(), target


def test_a_policy_is_shipped_and_means_what_it_says() -> None:
    path, _ = policy_mount()
    assert path == ROOT / "deploy" / "policy.toml"
    policy = load_policy(path)
    ok = ExecConfig(cmd=["uname", "-a"], timeout=60)
    assert policy.check_exec("execbus", "box", ok) in policy.rules
    for caller, agent, config in [
        ("execbus", "box", ExecConfig(cmd=["id"])),  # no timeout
        ("execbus", "box", ExecConfig(cmd=["id"], timeout=60, user="root")),
        ("execbus", "box", ExecConfig(cmd=["id"], timeout=60, privileged=True)),
        ("execbus", "box", ExecConfig(cmd=["id"], timeout=60, container_id="c1")),
        ("execbus", "other", ok),
        ("mallory", "box", ok),
    ]:
        with pytest.raises(Forbidden):
            policy.check_exec(caller, agent, config)


def test_workers_scale_and_run_unprivileged_and_the_agent_is_not_root() -> None:
    svc = services()
    worker = svc["worker"]
    assert "container_name" not in worker and "ports" not in worker, "--scale worker=3 must work"
    assert worker.get("user") in (None, "10001", "10001:10001"), "the worker runs unprivileged"
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"FROM base AS worker\nUSER 10001:10001\n", dockerfile)
    assert re.search(r"FROM base AS agent\n(?:.*\n)*?USER 10001:10001\n", dockerfile)
    assert "install -d -m 0750 -o 10001 -g 10001 /run/execbus" in dockerfile
    assert "--gid 10001" in dockerfile and "--uid 10001" in dockerfile
    assert svc["agent"]["user"] == "10001:10001", "the agent is not root unless asked"
    assert services(EXECBUS_AGENT_USER="0:0")["agent"]["user"] == "0:0"
    agent_cmd = svc["agent"]["command"]
    assert flag(agent_cmd, "--socket-mode") == "0660"
    assert flag(agent_cmd, "--socket-group") == "10001", "the workers' group may use the socket"
    for name in ("rabbitmq", "agent", "worker"):
        assert svc[name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        assert svc[name].get("restart") == "unless-stopped", name
    assert worker["depends_on"]["agent"]["condition"] == "service_healthy"
    assert worker["depends_on"]["rabbitmq"]["condition"] == "service_healthy"


def test_worker_healthcheck_is_liveness() -> None:
    svc = services()
    probe = " ".join(svc["worker"]["healthcheck"]["test"])
    assert "9180/healthz" in probe
    assert "readyz" not in probe and "--health" not in probe
    assert "9181/readyz" in " ".join(svc["agent"]["healthcheck"]["test"])


def test_dockerignore_keeps_the_context_small() -> None:
    entries = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    wanted = {".venv", ".git", "dist", "node_modules", ".mypy_cache", ".pytest_cache"}
    assert wanted <= entries, wanted - entries
    assert "**/__pycache__" in entries and ".ruff_cache" in entries and ".hypothesis" in entries
    copied = re.findall(r"^COPY (.+) \S+$", (ROOT / "Dockerfile").read_text(), re.M)
    for sources in copied:
        for source in sources.split():
            assert source not in entries, f"the Dockerfile needs {source}"


def test_compose_commands_parse() -> None:
    """The agent and worker commands are accepted by today's command lines."""
    svc = services()
    agent_cmd = svc["agent"]["command"]
    assert agent_cmd[0] == "agent"
    args = [str(os.getgid()) if a == "10001" else a for a in agent_cmd[1:]]
    config = make_config(agent_parser().parse_args(args))
    assert config.options.http_port == 9181 and config.options.socket_mode == 0o660
    worker_cmd = svc["worker"]["command"]
    assert worker_cmd[0] == "worker"
    parsed = worker_parser().parse_args(worker_cmd[1:])
    assert parsed.http_port == 9180


# -- the wiring, as processes ------------------------------------------------


class Translation:
    """Maps what only exists inside the compose project onto this test's resources."""

    def __init__(
        self, sock_dir: Path, amqp_url: str, namespace: str, user: str, policy: Path
    ) -> None:
        self.sock_dir = sock_dir
        self.amqp_url = amqp_url
        self.namespace = namespace
        self.user = user
        self.policy = policy
        self.socket_gid = IMAGE_UID if os.geteuid() == 0 else os.getgid()

    def path(self, value: str) -> str:
        return value.replace(SOCKET_VOLUME, str(self.sock_dir))

    def args(self, args: list[str], ports: dict[str, str]) -> list[str]:
        out = []
        for i, arg in enumerate(args):
            previous = args[i - 1] if i else ""
            if previous == "--http-port":
                arg = ports[arg]
            elif previous == "--http-host":
                arg = "127.0.0.1"
            elif previous == "--socket-group":
                arg = str(self.socket_gid)  # the image's execbus group, or the test's own
            out.append(self.path(arg))
        return out

    def env(self, environment: dict[str, Any]) -> dict[str, str]:
        env = {k: self.path(str(v)) for k, v in environment.items()}
        compose_url = urlsplit(env["EXECBUS_AMQP_URL"])
        assert compose_url.hostname == "rabbitmq", env
        assert compose_url.username == self.user, "the stack's user, from EXECBUS_MQ_USER"
        env["EXECBUS_AMQP_URL"] = self.amqp_url
        env["EXECBUS_NAMESPACE"] = self.namespace
        _, target = policy_mount()
        assert env["EXECBUS_POLICY_FILE"] == target
        env["EXECBUS_POLICY_FILE"] = str(self.policy)
        return env


@pytest.fixture
def processes() -> Iterator[list[Managed]]:
    procs: list[Managed] = []
    yield procs
    for proc in procs:
        proc.kill_group()


@pytest.fixture
def stack_user(amqp_url: str) -> Iterator[tuple[str, str, str]]:
    """A fresh RabbitMQ user standing for the stack's: (name, password, its URL)."""
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("rabbitmqctl is needed to add the stack's RabbitMQ user")
    name, password = f"ebcompose-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    parts = urlsplit(amqp_url)
    vhost = parts.path.lstrip("/") or "/"

    def ctl(*args: str) -> None:
        subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)

    ctl("add_user", name, password)
    try:
        ctl("set_permissions", "-p", vhost, name, ".*", ".*", ".*")
        netloc = f"{quote(name)}:{password}@{parts.hostname}" + (
            f":{parts.port}" if parts.port else ""
        )
        yield name, password, urlunsplit(parts._replace(netloc=netloc))
    finally:
        ctl("delete_user", name)


def spawn(procs: list[Managed], proc: Managed) -> Managed:
    procs.append(proc)
    return proc.start()


def healthcheck(test: list[str], ports: dict[str, str], env: dict[str, str]) -> int:
    """Run a compose healthcheck (``["CMD", ...]``) here, on the translated ports."""
    assert test[0] == "CMD", test
    argv = test[1:]
    if argv[0] == "python3":
        argv = [sys.executable, *argv[1:]]
    elif argv[0] == "execbus":
        argv = [sys.executable, "-m", "execbus", *argv[1:]]
    for old, new in ports.items():
        argv = [a.replace(f":{old}/", f":{new}/") if a != old else new for a in argv]
    result = subprocess.run(
        argv, env=child_env(**env), capture_output=True, timeout=15, check=False
    )
    return result.returncode


def owners(workers: list[WorkerProcess], agent: str) -> list[tuple[bool, str]]:
    """``(holds the lock and is connected, role)`` of ``agent`` as each worker reports it."""
    found = []
    for worker in workers:
        doc = worker.readyz() or {}
        info = doc.get("agents", {}).get(agent, {})  # type: ignore[attr-defined]
        found.append((bool(info.get("owner")) and bool(info.get("connected")), info.get("role")))
    return found


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory other users can reach (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="eb-compose-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.integration
async def test_compose_wiring_without_docker(
    namespace: str,
    tmp_path: Path,
    shared_dir: Path,
    processes: list[Managed],
    stack_user: tuple[str, str, str],
) -> None:
    user, password, url = stack_user
    svc = services(EXECBUS_MQ_USER=user, EXECBUS_MQ_PASSWORD=password)
    sock_dir = shared_dir / "run-execbus"
    sock_dir.mkdir(mode=0o750)  # the image's /run/execbus: 0750, owned by 10001
    # The shipped policy, with the stack's user standing for "execbus".
    policy_source, _ = policy_mount()
    policy = tmp_path / "policy.toml"
    policy.write_text(
        policy_source.read_text().replace('callers = ["execbus"]', f'callers = ["{user}"]')
    )
    tr = Translation(sock_dir, url, namespace, user, policy)

    # The agent, with the compose command (the image's entrypoint is `execbus`).
    agent_ports = {"9181": str(free_port())}
    agent_argv = tr.args(svc["agent"]["command"], agent_ports)
    if os.geteuid() == 0:
        # As in the stack: uid/gid 10001 (no root), from the single-file build.
        from execbus.cli.bundle import build

        os.chown(sock_dir, IMAGE_UID, IMAGE_UID)
        pyz = build(shared_dir / "execbus-agent.pyz").path
        pyz.chmod(0o755)
        argv = ["/usr/bin/python3", "-I", str(pyz), *agent_argv[1:]]
        env = {"PATH": "/usr/bin:/bin"}
        ids = {"user": IMAGE_UID, "group": IMAGE_UID}
        spawn(processes, Managed("agent", argv, env, shared_dir / "agent.log", **ids))
    else:
        argv = [sys.executable, "-m", "execbus", *agent_argv]
        spawn(processes, Managed("agent", argv, child_env(), shared_dir / "agent.log"))
    agent_health = svc["agent"]["healthcheck"]["test"]
    deadline = time.monotonic() + 15
    while healthcheck(agent_health, agent_ports, {}) != 0:
        assert processes[0].alive, processes[0].log_text()
        assert time.monotonic() < deadline, "the agent never became healthy"
        time.sleep(0.1)
    sock = sock_dir / "agent.sock"
    assert sock.is_socket() and (sock.stat().st_mode & 0o777) == 0o660
    assert sock.stat().st_gid == tr.socket_gid
    if os.geteuid() == 0:
        assert sock.stat().st_uid == IMAGE_UID, "the agent is not root"

    # Two workers: the compose command and environment (`<<: *execbus-env` merged).
    worker_env = tr.env(svc["worker"]["environment"])
    assert worker_env["EXECBUS_AGENTS"] == f"box=unix://{sock}"
    workers = []
    for i in range(2):
        ports = {"9180": str(free_port())}
        argv = [sys.executable, "-m", "execbus", *tr.args(svc["worker"]["command"], ports)]
        port = int(ports["9180"])
        worker = WorkerProcess(
            f"worker-{i}", tmp_path, child_env(**worker_env), {}, http_port=port, argv=argv
        )
        spawn(processes, worker)
        worker.wait_ready()
        assert healthcheck(svc["worker"]["healthcheck"]["test"], ports, worker_env) == 0
        assert "no authorization policy" not in worker.log(), "the policy is in force"
        workers.append(worker)

    # The workers converge on the designated owner (a standby that took the lock
    # first hands it over once the membership view has settled).
    settled = [(False, "standby"), (True, "owner")]
    deadline = time.monotonic() + 20
    while sorted(owners(workers, "box")) != settled:
        assert time.monotonic() < deadline, owners(workers, "box")
        time.sleep(0.1)

    async with Bus(url, namespace, user_id=user) as bus:
        exec_id = uuid.uuid4().hex
        config = {"cmd": ["sh", "-c", "echo box; id -u"], "timeout": 60}
        reply = await bus.call("box", {"type": "exec.run", "exec_id": exec_id, "config": config})
        assert reply["ok"], reply
        stdout = unb64(reply["result"]["exit"]["stdout"]).decode()
        expected_uid = IMAGE_UID if os.geteuid() == 0 else os.geteuid()
        assert stdout == f"box\n{expected_uid}\n", "as the agent's own, unprivileged, user"
        event = await bus.wait_event(exec_id, "exited")
        assert bus.event_keys[bus.events.index(event)] == "exec.box.~.exited"
        # The policy is in force: no timeout, or another user, is refused.
        for denied in ({"cmd": ["true"]}, {"cmd": ["true"], "timeout": 5, "user": "root"}):
            body = {"type": "exec.run", "exec_id": uuid.uuid4().hex, "config": denied}
            refused = await bus.call("box", body)
            assert not refused["ok"] and refused["error"]["code"] == "forbidden", refused

    # Still exactly one owner, and both workers say which one it is.
    state = owners(workers, "box")
    assert sorted(state) == settled, state
    execs = [(w.readyz() or {})["agents"]["box"]["execs"] for w in workers]  # type: ignore[index]
    owner_index = [o for o, _ in state].index(True)
    assert execs[owner_index] == 1 and execs[1 - owner_index] == 0, execs
