"""No exec outlives its timeout or the agent that started it, and no orphan goes unreported.

What an exec starts in the background is tracked after its exit (its cgroup
when the agent runs as root, else its process group): its timeout kills it,
a shutdown kills it, and so does the agent's death (the lifeline). With a
state directory, a restarted agent kills whatever survived of its previous
life's execs and says which of these happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from execbus.agent import cgroups
from execbus.agent.cli import main as agent_main
from execbus.agent.lifeline import Lifeline, read_log
from execbus.testing.waiting import wait_until_sync
from tests.system.agent.harness import (
    IS_ROOT,
    SRC,
    AgentFactory,
    AgentProcess,
    is_running,
    start_time,
    wait_for_file,
    wait_process_gone,
)

# cgroups: the agent's default when it runs as root on a system with a hierarchy
DEFAULT_ROOT = cgroups.default_root() if IS_ROOT else None
CGROUPS = DEFAULT_ROOT is not None
V1_MOUNT = next(
    (m.point for m in cgroups._mounts() if m.version == 1 and "pids" in m.options), None
)
MODES = [
    pytest.param(
        "cgroup", marks=pytest.mark.skipif(not CGROUPS, reason="needs root and a cgroup hierarchy")
    ),
    pytest.param(
        "cgroup-v1",
        marks=pytest.mark.skipif(
            not IS_ROOT or V1_MOUNT is None, reason="needs root and a v1 pids hierarchy"
        ),
    ),
    "off",
]
CGROUP_MODES = MODES[:2]


def _private_root(parent: str) -> Iterator[str]:
    path = os.path.join(parent, f"execbus-test-{uuid.uuid4().hex[:12]}")
    yield path
    if os.path.isdir(path):
        cgroups.kill(path)
        cgroups.wait_empty(path, 5)
        cgroups.remove(path)


@pytest.fixture
def cgroup_root() -> Iterator[str]:
    """A cgroup root of the test's own: agents under the shared default root remove
    what dead agents left there, and other tests' agents start at any time."""
    if DEFAULT_ROOT is None:
        pytest.skip("needs root and a cgroup hierarchy")
    yield from _private_root(os.path.dirname(DEFAULT_ROOT))


@pytest.fixture
def mode_args(request: pytest.FixtureRequest) -> Iterator[list[str]]:
    """``--cgroup-root`` for the test's ``mode`` parameter: a private root (in the
    default hierarchy, or in cgroup v1's pids one), or off."""
    mode = request.node.callspec.params["mode"]
    if mode == "off":
        yield ["--cgroup-root", "off"]
    elif mode == "cgroup-v1":
        assert V1_MOUNT is not None
        for root in _private_root(V1_MOUNT):
            yield ["--cgroup-root", root]
    else:
        yield ["--cgroup-root", request.getfixturevalue("cgroup_root")]


def bg_script(pidfile: str, then: str) -> list[str]:
    """A shell that starts ``sleep 600`` in the background, writes its pid, then ``then``."""
    return ["sh", "-c", f"sleep 600 & echo $! > {pidfile}; {then}"]


def bg_pid(pidfile: str) -> tuple[int, str | None]:
    pid = int(wait_for_file(pidfile))
    return pid, start_time(pid)


def cgroups_of(pid: int) -> list[str]:
    """The cgroup of the process in each hierarchy (``/proc/<pid>/cgroup``)."""
    with open(f"/proc/{pid}/cgroup", encoding="utf-8", errors="replace") as f:
        return [line.split(":", 2)[2] for line in f.read().splitlines()]


def sleeper_in(cgroup: str) -> subprocess.Popen[bytes]:
    """A ``sleep 600`` moved into ``cgroup``."""
    proc = subprocess.Popen(["sleep", "600"])
    with open(os.path.join(cgroup, "cgroup.procs"), "w", encoding="ascii") as f:
        f.write(str(proc.pid))
    return proc


@pytest.fixture
def strays() -> Iterator[list[int]]:
    """Pids a test expects to die; killed at teardown if a test failed before."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


async def lost_execs(agent: AgentProcess) -> dict[str, dict[str, Any]]:
    c = await agent.connect()
    try:
        return {e["exec_id"]: e for e in (await c.call("list"))["execs"]}
    finally:
        await c.close()


def journal_entries(state_dir: str) -> list[str]:
    return [n for n in os.listdir(state_dir) if n.endswith(".exec.json")]


def kill_agent_and_lifeline(agent: AgentProcess) -> None:
    """SIGKILL the agent and its lifeline together (the lifeline never acts); returns
    once both are gone, so nothing of theirs can still kill anything."""
    lifeline = agent.lifeline()
    since = start_time(lifeline)
    os.kill(lifeline, signal.SIGSTOP)
    agent.kill()
    os.kill(lifeline, signal.SIGKILL)
    wait_process_gone(lifeline, since)


# -- timeouts ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_timeout_kills_what_the_exec_left_running_after_its_exit(
    agent_factory: AgentFactory, tmp_dir: str, mode: str, mode_args: list[str], strays: list[int]
) -> None:
    agent = agent_factory(*mode_args)
    c = await agent.connect()
    try:
        pidfile = os.path.join(tmp_dir, "bg")
        t0 = time.monotonic()
        state, _, _ = await c.run(bg_script(pidfile, "exit 0"), timeout=1.0)
        assert state["exit"]["exit_code"] == 0 and state["exit"]["timed_out"] is False
        pid, started = bg_pid(pidfile)
        strays.append(pid)
        assert is_running(pid, started), "the background process outlives the exit"
        await asyncio.to_thread(wait_process_gone, pid, started)
        assert time.monotonic() - t0 >= 1.0, "killed at the timeout, not before"
    finally:
        await c.close()


@pytest.mark.skipif(not CGROUPS, reason="needs root and a cgroup hierarchy")
async def test_a_cgroup_catches_what_left_the_process_group(
    agent_factory: AgentFactory, tmp_dir: str, cgroup_root: str, strays: list[int]
) -> None:
    agent = agent_factory("--cgroup-root", cgroup_root)
    c = await agent.connect()
    try:
        pidfile = os.path.join(tmp_dir, "bg")
        script = ["sh", "-c", f"setsid sleep 600 & echo $! > {pidfile}; sleep 600"]
        state, _, _ = await c.run(script, timeout=0.5)
        assert state["exit"]["timed_out"] is True
        pid, started = bg_pid(pidfile)
        strays.append(pid)
        await asyncio.to_thread(wait_process_gone, pid, started)
    finally:
        await c.close()


@pytest.mark.parametrize("mode", CGROUP_MODES)
async def test_what_an_exec_forks_at_once_is_born_in_its_cgroup(
    agent_factory: AgentFactory, tmp_dir: str, mode: str, mode_args: list[str], strays: list[int]
) -> None:
    """The exec is in its cgroup from its first instruction: a daemon it forks before
    anything else (``setsid``, and the exec exits at once, orphaning it) is there too
    and dies at the timeout. The agent, which stepped in for the spawn, is back out."""
    agent = agent_factory(*mode_args)
    root = "/" + os.path.basename(mode_args[1]) + "/"
    c = await agent.connect()
    try:
        pidfile = os.path.join(tmp_dir, "bg")
        exec_id = uuid.uuid4().hex
        script = ["sh", "-c", f"setsid sleep 600 & echo $! > {pidfile}; exit 0"]
        t0 = time.monotonic()
        state, _, _ = await c.run(script, exec_id=exec_id, timeout=1.0)
        assert state["exit"]["exit_code"] == 0
        pid, started = bg_pid(pidfile)
        strays.append(pid)
        inside = [path for path in cgroups_of(pid) if root in path]
        assert inside and all(path.endswith("/" + exec_id) for path in inside), cgroups_of(pid)
        assert not [path for path in cgroups_of(agent.pid) if root in path], "the agent is home"
        await asyncio.to_thread(wait_process_gone, pid, started)
        assert time.monotonic() - t0 >= 1.0, "killed at the timeout, not before"
    finally:
        await c.close()


@pytest.mark.skipif(not CGROUPS, reason="needs root and a cgroup hierarchy")
async def test_the_journal_identifies_the_leader_of_an_exec_in_a_cgroup(
    agent_factory: AgentFactory, tmp_path: Path, cgroup_root: str, strays: list[int]
) -> None:
    """With a journal, the leader of an exec contained in its cgroup is identified a
    turn of the event loop after the spawn (not while the child is still in execve)
    and journaled with the cgroup."""
    state_dir = tmp_path / "state"
    agent = agent_factory("--state-dir", str(state_dir), "--cgroup-root", cgroup_root)
    c = await agent.connect()
    try:
        started = await c.call("start", exec_id="long", cmd=["sleep", "600"])
        pid = started["pid"]
        strays.append(pid)
        entry = state_dir / "long.exec.json"

        def identified() -> dict[str, Any] | None:
            doc: dict[str, Any] = json.loads(entry.read_text())
            return doc if doc.get("groups") else None

        doc = await asyncio.to_thread(wait_until_sync, identified, 5.0, what="the identity")
        assert doc is not None
        assert doc["groups"] == [[pid, start_time(pid)]]
        assert doc["cgroup"].startswith(cgroup_root + "/") and doc["cgroup"].endswith("/long")
    finally:
        await c.close()


async def test_without_a_cgroup_setsid_escapes_the_timeout(
    agent_factory: AgentFactory, tmp_dir: str, strays: list[int]
) -> None:
    """What docs/agent-protocol.md says escapes where no cgroup is used."""
    agent = agent_factory("--cgroup-root", "off")
    c = await agent.connect()
    try:
        pidfile = os.path.join(tmp_dir, "bg")
        script = ["sh", "-c", f"setsid sleep 600 & echo $! > {pidfile}; exit 0"]
        await c.run(script, timeout=0.3)
        pid, started = bg_pid(pidfile)
        strays.append(pid)
        await asyncio.sleep(0.8)
        assert is_running(pid, started)
    finally:
        await c.close()


async def test_shutdown_kills_what_finished_execs_left_running(
    agent_factory: AgentFactory, tmp_dir: str, strays: list[int]
) -> None:
    agent = agent_factory()
    c = await agent.connect()
    try:
        pidfile = os.path.join(tmp_dir, "bg")
        exec_id = uuid.uuid4().hex
        await c.run(bg_script(pidfile, "exit 0"), exec_id=exec_id)
        await c.call("ack", exec_id=exec_id)
        pid, started = bg_pid(pidfile)
        strays.append(pid)
        assert is_running(pid, started)
    finally:
        await c.close()
    assert await asyncio.to_thread(agent.terminate) == 0
    wait_process_gone(pid, started, timeout=5)


# -- the agent killed outright ---------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_execs_die_with_a_killed_agent(
    agent_factory: AgentFactory, tmp_dir: str, mode: str, mode_args: list[str], strays: list[int]
) -> None:
    agent = agent_factory(*mode_args)
    c = await agent.connect()
    pidfile = os.path.join(tmp_dir, "bg")
    started = await c.call("start", exec_id="long", cmd=bg_script(pidfile, "sleep 600"))
    main = (started["pid"], start_time(started["pid"]))
    bg = bg_pid(pidfile)
    strays.extend([main[0], bg[0]])
    await c.close()
    agent.kill()
    for pid, since in (main, bg):
        await asyncio.to_thread(wait_process_gone, pid, since)
        assert not is_running(pid, since), f"exec process {pid} outlived the killed agent"


async def test_restart_reports_an_exec_killed_with_the_agent(
    agent_factory: AgentFactory, tmp_path: Path, strays: list[int]
) -> None:
    state_dir = str(tmp_path / "state")
    agent = agent_factory("--state-dir", state_dir)
    c = await agent.connect()
    started = await c.call("start", exec_id="long", cmd=["sleep", "600"])
    await c.close()
    main = (started["pid"], start_time(started["pid"]))
    strays.append(main[0])
    agent.kill()
    await asyncio.to_thread(wait_process_gone, *main)

    again = agent_factory("--state-dir", state_dir)
    lost = (await lost_execs(again))["long"]
    assert lost["state"] == "failed" and lost["error"]["code"] == "agent_lost"
    assert "killed when the agent died" in lost["error"]["message"]
    c = await again.connect()
    try:
        await c.call("ack", exec_id="long")
    finally:
        await c.close()
    assert not journal_entries(state_dir), "acknowledged: nothing left"


@pytest.mark.parametrize("mode", MODES)
async def test_restart_kills_what_survived_the_agent_and_its_lifeline(
    agent_factory: AgentFactory,
    tmp_path: Path,
    tmp_dir: str,
    mode: str,
    mode_args: list[str],
    strays: list[int],
) -> None:
    state_dir = str(tmp_path / "state")
    agent = agent_factory("--state-dir", state_dir, *mode_args)
    c = await agent.connect()
    pidfile = os.path.join(tmp_dir, "bg")
    started = await c.call("start", exec_id="long", cmd=bg_script(pidfile, "sleep 600"))
    await c.close()
    main = (started["pid"], start_time(started["pid"]))
    bg = bg_pid(pidfile)
    strays.extend([main[0], bg[0]])
    await asyncio.to_thread(kill_agent_and_lifeline, agent)
    assert is_running(*main) and is_running(*bg), "nothing killed them (yet)"

    again = agent_factory("--state-dir", state_dir, *mode_args)
    assert not is_running(*main) and not is_running(*bg), "killed before the agent is ready"
    lost = (await lost_execs(again))["long"]
    assert lost["error"]["code"] == "agent_lost"
    assert "still running and have been killed" in lost["error"]["message"]


async def test_restart_reports_an_exec_that_had_ended(
    agent_factory: AgentFactory, tmp_path: Path
) -> None:
    state_dir = str(tmp_path / "state")
    agent = agent_factory("--state-dir", state_dir)
    c = await agent.connect()
    await c.run(["true"], exec_id="quick")
    await c.close()
    agent.kill()
    lost = (await lost_execs(agent_factory("--state-dir", state_dir)))["quick"]
    assert lost["error"]["code"] == "agent_lost"
    assert "had already ended" in lost["error"]["message"]


async def test_restart_kills_what_an_acknowledged_exec_left_running(
    agent_factory: AgentFactory, tmp_path: Path, tmp_dir: str, strays: list[int]
) -> None:
    state_dir = str(tmp_path / "state")
    private = ["--cgroup-root", "off"]  # no other agent may sweep it meanwhile
    agent = agent_factory("--state-dir", state_dir, *private)
    c = await agent.connect()
    pidfile = os.path.join(tmp_dir, "bg")
    await c.run(bg_script(pidfile, "exit 0"), exec_id="daemonizer")
    await c.call("ack", exec_id="daemonizer")
    await c.close()
    bg = bg_pid(pidfile)
    strays.append(bg[0])
    journaled = json.loads((Path(state_dir) / "daemonizer.exec.json").read_text())
    assert journaled["acked"] is True and journaled["groups"]
    await asyncio.to_thread(kill_agent_and_lifeline, agent)
    assert is_running(*bg)

    again = agent_factory("--state-dir", state_dir, *private)
    assert not is_running(*bg)
    assert "daemonizer" not in await lost_execs(again), "acknowledged before: not reported again"
    assert not journal_entries(state_dir)


@pytest.mark.skipif(not CGROUPS, reason="needs root and a cgroup hierarchy")
async def test_a_new_agent_kills_what_dead_agents_left_in_their_cgroups(
    agent_factory: AgentFactory, tmp_dir: str, cgroup_root: str, strays: list[int]
) -> None:
    agent = agent_factory("--cgroup-root", cgroup_root)  # no state dir: only cgroups remember
    c = await agent.connect()
    pidfile = os.path.join(tmp_dir, "bg")
    script = ["sh", "-c", f"setsid sleep 600 & echo $! > {pidfile}; exit 0"]
    await c.run(script)
    await c.close()
    bg = bg_pid(pidfile)
    strays.append(bg[0])
    await asyncio.to_thread(kill_agent_and_lifeline, agent)
    assert is_running(*bg)
    newcomer = agent_factory("--cgroup-root", cgroup_root)
    assert not is_running(*bg)
    assert any("dead agent" in str(e.get("msg")) for e in newcomer.log_lines())


@pytest.mark.skipif(not CGROUPS, reason="needs root and a cgroup hierarchy")
def test_the_lifeline_kills_what_is_left_in_the_cgroups_of_its_life(
    cgroup_root: str, tmp_path: Path
) -> None:
    """Nobody registers an exec's cgroup with the lifeline: it is given the agent's
    life directory and kills what runs in any cgroup there, but the agent's refuge."""
    life = os.path.join(cgroup_root, "a1-2-3")
    for name in ("e1", "e2.1", "gone", cgroups.REFUGE):
        os.makedirs(os.path.join(life, name))
    execs = [sleeper_in(os.path.join(life, name)) for name in ("e1", "e2.1")]
    refugee = sleeper_in(os.path.join(life, cgroups.REFUGE))
    try:
        guard = Lifeline(str(tmp_path), life)
        guard.start()
        guard.close()  # end of file: as if the agent died
        for proc in execs:
            assert proc.wait(5) == -signal.SIGKILL
        assert refugee.poll() is None, "the agent's own cgroup is not the lifeline's to kill"
        assert cgroups.children(life) == [cgroups.REFUGE]
        assert sorted(read_log(str(tmp_path))) == ["e1", "e2"]
    finally:
        for proc in [*execs, refugee]:
            proc.kill()
            proc.wait()


async def test_a_lifeline_that_dies_is_replaced(
    agent_factory: AgentFactory, strays: list[int]
) -> None:
    agent = agent_factory()
    c = await agent.connect()
    try:
        started = await c.call("start", exec_id="long", cmd=["sleep", "600"])
        main = (started["pid"], start_time(started["pid"]))
        strays.append(main[0])
        first = agent.lifeline()
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while agent.lifeline() == first and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert agent.lifeline() != first
        assert is_running(*main), "the old lifeline's death killed nothing"
    finally:
        await c.close()
    agent.kill()
    await asyncio.to_thread(wait_process_gone, *main)


def test_the_lifeline_ignores_terminal_signals(agent_factory: AgentFactory) -> None:
    """Ctrl-C in the agent's terminal (SIGINT to the group) must not leave execs unguarded."""

    async def scenario() -> tuple[int, str | None]:
        agent = agent_factory()
        c = await agent.connect()
        try:
            started = await c.call("start", exec_id="long", cmd=["sleep", "600"])
        finally:
            await c.close()
        lifeline = agent.lifeline()
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            os.kill(lifeline, signum)
        await asyncio.sleep(0.2)
        assert agent.lifeline() == lifeline
        agent.kill()
        return started["pid"], start_time(started["pid"])

    main = asyncio.run(scenario())
    wait_process_gone(*main)


def test_the_agent_runs_without_a_lifeline_when_it_cannot_start_one() -> None:
    """No python executable known (an embedding host): execs still run."""
    code = (
        "import asyncio, sys; sys.executable = ''\n"
        "from execbus.agent.core import AgentCore\n"
        "from execbus.agent.execspec import ExecSpec\n"
        "async def main():\n"
        "    core = AgentCore()\n"
        "    exe, _ = await core.supervisor.start(ExecSpec(exec_id='x', cmd=['true']))\n"
        "    await exe.finished\n"
        "    print(exe.exit['exit_code'])\n"
        "    await core.aclose(0)\n"
        "asyncio.run(main())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(SRC)},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.stdout.strip() == "0", out.stderr


def test_a_cgroup_root_that_cannot_be_used_is_a_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--listen", f"unix://{tmp_path}/a.sock", "--cgroup-root", str(tmp_path)]
    assert agent_main(argv) == 2
    err = capsys.readouterr().err
    assert "not in a cgroup file system" in err and err.count("\n") == 1


def test_help_says_what_happens_without_a_cgroup(capsys: pytest.CaptureFixture[str]) -> None:
    assert agent_main(["--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--cgroup-root" in out and "setsid escapes timeouts and shutdown" in out
