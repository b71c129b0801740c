"""docker-compose.yml: valid, scalable, unprivileged workers — and its wiring works without Docker.

The last test reads the compose file, translates what only exists inside
Docker (the shared socket volume becomes a temporary directory, the
``rabbitmq`` service the test broker, fixed ports free ones) and starts the
agent and two workers as processes with exactly the compose file's
commands and environment.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from execbus.agent.cli import build_parser as agent_parser
from execbus.agent.cli import make_config
from execbus.cli.worker import build_parser as worker_parser
from tests.conftest import ROOT, WorkerProcess, child_env, free_port
from tests.integration.bus import Bus, unb64

COMPOSE = ROOT / "docker-compose.yml"
SOCKET_VOLUME = "/run/execbus"


def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return doc


def services() -> dict[str, Any]:
    result: dict[str, Any] = compose()["services"]
    return result


def flag(args: list[str], name: str) -> str | None:
    """The value of ``--name VALUE`` in an argv (the last one wins, as in argparse)."""
    values = [args[i + 1] for i, a in enumerate(args[:-1]) if a == name]
    return values[-1] if values else None


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
def test_compose_file_validates() -> None:
    result = subprocess.run(
        ["docker-compose", "-f", str(COMPOSE), "config", "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_workers_scale_and_run_unprivileged() -> None:
    svc = services()
    worker = svc["worker"]
    assert "container_name" not in worker and "ports" not in worker, "--scale worker=3 must work"
    assert worker.get("user") in (None, "10001", "10001:10001"), "the worker runs unprivileged"
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"FROM base AS worker\nUSER 10001:10001\n", dockerfile)
    assert "--gid 10001" in dockerfile and "--uid 10001" in dockerfile
    agent_cmd = svc["agent"]["command"]
    assert flag(agent_cmd, "--socket-mode") == "0660"
    assert flag(agent_cmd, "--socket-group") == "10001", "the workers' group may use the socket"
    for name in ("rabbitmq", "agent", "worker"):
        assert svc[name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        assert svc[name].get("restart") == "unless-stopped", name
    assert worker["depends_on"]["agent"]["condition"] == "service_healthy"
    assert worker["depends_on"]["rabbitmq"]["condition"] == "service_healthy"


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
    assert svc["worker"]["healthcheck"]["test"][-1] == "9180"
    assert "9181/readyz" in svc["agent"]["healthcheck"]["test"][-1]


class Translation:
    """Maps what only exists inside the compose project onto this test's resources."""

    def __init__(self, sock_dir: Path, amqp_url: str, namespace: str) -> None:
        self.sock_dir = sock_dir
        self.amqp_url = amqp_url
        self.namespace = namespace

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
                arg = str(os.getgid())  # the image's execbus group; here the test's own
            out.append(self.path(arg))
        return out

    def env(self, environment: dict[str, Any]) -> dict[str, str]:
        env = {k: self.path(str(v)) for k, v in environment.items()}
        assert "@rabbitmq:" in env["EXECBUS_AMQP_URL"], env
        env["EXECBUS_AMQP_URL"] = self.amqp_url
        env["EXECBUS_NAMESPACE"] = self.namespace
        return env


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        with contextlib.suppress(Exception):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            proc.wait(10)


def spawn(
    procs: list[subprocess.Popen[bytes]], argv: list[str], env: dict[str, str], log: Path
) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "execbus", *argv],
            env=child_env(**env),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    procs.append(proc)
    return proc


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


@pytest.mark.integration
async def test_compose_wiring_without_docker(
    amqp_url: str, namespace: str, tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    svc = services()
    sock_dir = tmp_path / "run-execbus"
    sock_dir.mkdir()
    tr = Translation(sock_dir, amqp_url, namespace)

    # The agent, with the compose command (the image's entrypoint is `execbus`).
    agent_ports = {"9181": str(free_port())}
    agent_argv = tr.args(svc["agent"]["command"], agent_ports)
    spawn(processes, agent_argv, {}, tmp_path / "agent.log")
    agent_health = svc["agent"]["healthcheck"]["test"]
    deadline = time.monotonic() + 15
    while healthcheck(agent_health, agent_ports, {}) != 0:
        assert processes[0].poll() is None, (tmp_path / "agent.log").read_text()
        assert time.monotonic() < deadline, "the agent never became healthy"
        time.sleep(0.1)
    sock = sock_dir / "agent.sock"
    assert sock.is_socket() and (sock.stat().st_mode & 0o777) == 0o660
    assert sock.stat().st_gid == os.getgid()

    # Two workers: the compose command and environment (`<<: *execbus-env` merged).
    worker_env = tr.env(svc["worker"]["environment"])
    assert worker_env["EXECBUS_AGENTS"] == f"box=unix://{sock}"
    workers = []
    for i in range(2):
        ports = {"9180": str(free_port())}
        argv = tr.args(svc["worker"]["command"], ports)
        log = tmp_path / f"worker-{i}.log"
        proc = spawn(processes, argv, worker_env, log)
        worker = WorkerProcess(proc, int(ports["9180"]), log, argv)
        worker.wait_ready()
        assert healthcheck(svc["worker"]["healthcheck"]["test"], ports, worker_env) == 0
        workers.append(worker)

    # The workers converge on the designated owner (a standby that took the lock
    # first hands it over once the membership view has settled).
    settled = [(False, "standby"), (True, "owner")]
    deadline = time.monotonic() + 20
    while sorted(owners(workers, "box")) != settled:
        assert time.monotonic() < deadline, owners(workers, "box")
        time.sleep(0.1)

    async with Bus(amqp_url, namespace) as bus:
        exec_id = uuid.uuid4().hex
        body = {"type": "exec.run", "exec_id": exec_id, "config": {"cmd": ["echo", "box"]}}
        reply = await bus.call("box", body)
        assert reply["ok"], reply
        assert unb64(reply["result"]["exit"]["stdout"]) == b"box\n"
        event = await bus.wait_event(exec_id, "exited")
        assert bus.event_keys[bus.events.index(event)] == "exec.box.~.exited"

    # Still exactly one owner, and both workers say which one it is.
    state = owners(workers, "box")
    assert sorted(state) == settled, state
    execs = [(w.readyz() or {})["agents"]["box"]["execs"] for w in workers]  # type: ignore[index]
    owner_index = [o for o, _ in state].index(True)
    assert execs[owner_index] == 1 and execs[1 - owner_index] == 0, execs
