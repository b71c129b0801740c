"""``execbus run --pool``: runs sent to a pool of agents, against a real broker and worker."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

from tests.system.cli.conftest import Execbus

pytestmark = pytest.mark.integration

POOL_AGENTS = {"a1", "a2"}


@pytest.fixture
def pool_worker(start_worker: Any) -> Any:
    """A real worker with in-process agents a1 and a2 and the pool p of both."""
    worker = start_worker("--agent", "a1=local", "--agent", "a2=local", "--pool", "p=a1+a2")
    worker.wait_owner("a1")
    worker.wait_owner("a2")
    deadline = time.monotonic() + 15
    while not ((worker.readyz() or {}).get("pools") or {}).get("p"):
        assert time.monotonic() < deadline, f"pool p not consumed:\n{worker.log()}"
        time.sleep(0.05)
    return worker


def test_pool_run_streams_and_exits_with_the_status(execbus: Execbus, pool_worker: Any) -> None:
    done = execbus("run", "--pool", "p", "--", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert done.returncode == 3, done.stderr
    assert (done.stdout, done.stderr) == (b"out\n", b"err\n")


def test_pool_output_streams_while_the_command_runs(
    cli_env: dict[str, str], pool_worker: Any
) -> None:
    cmd = [sys.executable, "-m", "execbus", "run", "--pool", "p", "--"]
    script = "echo first; sleep 1.5; echo second"
    with subprocess.Popen([*cmd, "sh", "-c", script], env=cli_env, stdout=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"first\n"
        assert proc.poll() is None, "the first line arrived before the command ended"
        assert proc.stdout.read() == b"second\n"
    assert proc.returncode == 0


def test_pool_run_forwards_stdin(execbus: Execbus, pool_worker: Any) -> None:
    data = b"".join(b"line %d\n" % i for i in range(20000))
    done = execbus("run", "-i", "--pool", "p", "--", "cat", input=data)
    assert done.returncode == 0, done.stderr
    assert done.stdout == data


def test_pool_run_forwards_signals(cli_env: dict[str, str], pool_worker: Any) -> None:
    script = 'trap "echo got-term; exit 5" TERM; echo ready; while :; do sleep 0.1; done'
    cmd = [sys.executable, "-m", "execbus", "run", "--pool", "p", "--", "sh", "-c", script]
    with subprocess.Popen(cmd, env=cli_env, stdout=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n"
        proc.send_signal(signal.SIGTERM)
        assert proc.stdout.read() == b"got-term\n"
    assert proc.returncode == 5


def test_detached_pool_run_names_its_agent(execbus: Execbus, pool_worker: Any) -> None:
    detached = execbus("run", "-d", "--pool", "p", "--", "sleep", "60")
    assert detached.returncode == 0, detached.stderr
    exec_id = detached.stdout.decode().strip()
    assert re.fullmatch(r"\S+", exec_id), "stdout is the exec id alone"
    match = re.fullmatch(r"agent: (\S+)\n", detached.stderr.decode())
    assert match is not None, detached.stderr
    agent = match.group(1)
    assert agent in POOL_AGENTS
    info = json.loads(execbus("inspect", exec_id, "--agent", agent).stdout)
    assert (info["exec_id"], info["agent"], info["state"]) == (exec_id, agent, "running")
    killed = execbus("kill", exec_id, "--agent", agent)
    assert (killed.returncode, killed.stdout.decode().strip()) == (0, exec_id)


def test_pool_and_agent_are_exclusive(offline_execbus: Execbus) -> None:
    both = offline_execbus("run", "--pool", "p", "--agent", "a1", "--", "true")
    assert both.returncode == 2
    assert "not allowed with argument" in both.stderr.decode()
    neither = offline_execbus("run", "--", "true")
    assert neither.returncode == 2
    assert "--agent" in neither.stderr.decode() and "--pool" in neither.stderr.decode()


def test_unknown_pool(offline_execbus: Execbus) -> None:
    done = offline_execbus("run", "--pool", "nobody-serves-me", "--", "true")
    assert done.returncode == 125
    text = done.stderr.decode()
    assert "Traceback" not in text
    assert "no worker serves pool 'nobody-serves-me'" in text


def test_stopping_to_wait_names_the_agent(cli_env: dict[str, str], pool_worker: Any) -> None:
    script = 'trap "" TERM; echo ready; sleep 30'
    cmd = [sys.executable, "-m", "execbus", "run", "--pool", "p", "--", "sh", "-c", script]
    popen = subprocess.Popen(cmd, env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with popen as proc:
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.readline() == b"ready\n"
        proc.send_signal(signal.SIGTERM)  # forwarded (and ignored by the command)
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)  # stop waiting
        stderr = proc.stderr.read().decode()
    assert proc.returncode == 143
    match = re.search(r"`execbus kill (\S+) --agent (\S+)`", stderr)
    assert match is not None, stderr
    assert match.group(2) in POOL_AGENTS
