"""The runc backend against a real busybox container (root, runc and busybox-static)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from execbus.testing.agent_peer import AgentPeer, split_captures
from tests.system.agent.harness import (
    IS_ROOT,
    AgentProcess,
    is_running,
    live_members,
    start_time,
    wait_process_gone,
)

pytestmark = pytest.mark.runc

RUNC = shutil.which("runc")
BUSYBOX = "/bin/busybox"
HOSTNAME = "ebtest"
PASSWD = "root:x:0:0:root:/root:/bin/sh\nebuser:x:1234:1234:eb:/home/ebuser:/bin/sh\n"
GROUP = "root:x:0:\nebgroup:x:1234:\nextra:x:2345:ebuser\n"


def _skip_reason() -> str | None:
    if not IS_ROOT:
        return "runc tests need root"
    if RUNC is None:
        return "runc is not on PATH"
    if not os.path.exists(BUSYBOX):
        return f"{BUSYBOX} (busybox-static) is missing"
    ldd = subprocess.run(["ldd", BUSYBOX], capture_output=True, text=True, check=False)
    if "not a dynamic executable" not in ldd.stdout + ldd.stderr:
        return f"{BUSYBOX} is not statically linked (install busybox-static)"
    return None


@dataclass
class Container:
    runc_root: str
    bundle: str
    id: str

    def runc(self, *args: str) -> subprocess.CompletedProcess[str]:
        assert RUNC is not None
        return subprocess.run(
            [RUNC, "--root", self.runc_root, *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )


def _make_bundle(base: str) -> str:
    bundle = os.path.join(base, "bundle")
    rootfs = os.path.join(bundle, "rootfs")
    for sub in ("bin", "etc", "home/ebuser", "proc", "dev", "sys"):
        os.makedirs(os.path.join(rootfs, sub), exist_ok=True)
    shutil.copy(BUSYBOX, os.path.join(rootfs, "bin", "busybox"))
    applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, check=True)
    for name in applets.stdout.split():
        if name != "busybox":
            os.symlink("busybox", os.path.join(rootfs, "bin", name))
    for name, text in (("passwd", PASSWD), ("group", GROUP)):
        with open(os.path.join(rootfs, "etc", name), "w") as f:
            f.write(text)
    assert RUNC is not None
    subprocess.run([RUNC, "spec"], cwd=bundle, check=True)
    with open(os.path.join(bundle, "config.json")) as f:
        config = json.load(f)
    config["process"].update(args=["sleep", "1000"], terminal=False)
    config["root"]["readonly"] = False
    config["hostname"] = HOSTNAME
    with open(os.path.join(bundle, "config.json"), "w") as f:
        json.dump(config, f)
    return bundle


def _run_detached(ctr: Container, action: str = "run", cid: str = "") -> str | None:
    """``runc run -d``/``runc create``; None or runc's error.

    Its stdio goes to files: the container's init inherits it, so pipes would
    never reach end of file.
    """
    assert RUNC is not None
    log = os.path.join(os.path.dirname(ctr.bundle), f"{action}.log")
    argv = [RUNC, "--root", ctr.runc_root, action, *(["-d"] if action == "run" else [])]
    with open(log, "w") as f:
        code = subprocess.call(
            [*argv, "--bundle", ctr.bundle, cid or ctr.id],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=f,
            timeout=30,
        )
    with open(log) as f:
        return None if code == 0 else f.read().strip() or f"exit code {code}"


@pytest.fixture(scope="module")
def container() -> Iterator[Container]:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    base = tempfile.mkdtemp(prefix="eb-runc-")
    ctr = Container(os.path.join(base, "state"), _make_bundle(base), f"eb-{uuid.uuid4().hex[:8]}")
    try:
        error = _run_detached(ctr)
        if error is not None:
            pytest.skip(f"runc cannot run containers here: {error}")
        yield ctr
    finally:
        ctr.runc("delete", "-f", ctr.id)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def runc_agent(container: Container) -> Iterator[AgentProcess]:
    agent = AgentProcess(["--grace", "0", "--runc-root", container.runc_root, "--allow-privileged"])
    try:
        yield agent.start()
    finally:
        agent.terminate()
        agent.cleanup()


@pytest.fixture
async def rc(runc_agent: AgentProcess) -> AsyncIterator[AgentPeer]:
    c = await runc_agent.connect()
    try:
        yield c
    finally:
        await c.close()


def _cap_eff(status: str) -> int:
    match = re.search(r"^CapEff:\s*([0-9a-f]+)$", status, re.M)
    assert match, status
    return int(match.group(1), 16)


async def test_exec_runs_inside_the_container(rc: AgentPeer, container: Container) -> None:
    assert "containers" in rc.hello_result["capabilities"]
    _, out, _ = await rc.run(["hostname"], container_id=container.id)
    assert out == f"{HOSTNAME}\n".encode()
    _, out, _ = await rc.run(["cat", "/proc/1/cmdline"], container_id=container.id)
    assert out == b"sleep\x001000\x00"


async def test_capabilities_never_exceed_the_containers(
    rc: AgentPeer, container: Container
) -> None:
    init = container.runc("exec", container.id, "cat", "/proc/1/status")
    assert init.returncode == 0, init.stderr
    init_caps = _cap_eff(init.stdout)
    _, out, _ = await rc.run(["grep", "CapEff", "/proc/self/status"], container_id=container.id)
    caps = _cap_eff(out.decode())
    assert caps & ~init_caps == 0, f"exec has {caps:x}, container init {init_caps:x}"
    state, out, err = await rc.run(
        ["grep", "CapEff", "/proc/self/status"], container_id=container.id, privileged=True
    )
    assert state["exit"], (state["error"], err)
    assert state["exit"]["exit_code"] == 0
    assert _cap_eff(out.decode()) & ~init_caps != 0  # privileged: every capability


async def test_exit_codes_and_start_failures(rc: AgentPeer, container: Container) -> None:
    cid = {"container_id": container.id}
    state, out, err = await rc.run(["sh", "-c", "echo out; echo err >&2; exit 3"], **cid)
    assert (state["exit"]["exit_code"], out, err) == (3, b"out\n", b"err\n")
    state, _, _ = await rc.run(["sh", "-c", "kill -KILL $$"], **cid)
    assert (state["exit"]["exit_code"], state["exit"]["signal"]) == (137, "SIGKILL")
    expected = {
        ("no-such-command",): ("command_not_found", 127),
        ("/etc/passwd",): ("command_not_executable", 126),
    }
    for cmd, (code, exit_code) in expected.items():
        state, _, _ = await rc.run(list(cmd), **cid)
        assert state["state"] == "failed", state
        assert (state["error"]["code"], state["error"]["exit_code"]) == (code, exit_code)
    state, _, _ = await rc.run(["pwd"], working_dir="/missing", **cid)
    assert state["error"]["code"] == "invalid_working_dir"
    _, out, _ = await rc.run(["pwd"], working_dir="/etc", **cid)
    assert out == b"/etc\n"


async def test_unknown_or_stopped_containers(rc: AgentPeer, container: Container) -> None:
    state, _, _ = await rc.run(["true"], container_id="no-such-container")
    assert state["error"]["code"] == "container_not_found"
    created = f"{container.id}-created"
    error = _run_detached(container, "create", created)
    assert error is None, error
    try:
        state, _, _ = await rc.run(["true"], container_id=created)
        assert state["error"]["code"] == "container_not_running"
    finally:
        container.runc("delete", "-f", created)


async def test_users_resolve_in_the_containers_passwd(rc: AgentPeer, container: Container) -> None:
    script = 'echo "$(id -u) $(id -g) $(id -G) $HOME"'
    _, out, _ = await rc.run(["sh", "-c", script], user="ebuser", container_id=container.id)
    assert out.decode().split() == ["1234", "1234", "1234", "2345", "/home/ebuser"]
    _, out, _ = await rc.run(["sh", "-c", script], user="ebuser:extra", container_id=container.id)
    assert out.decode().split()[:3] == ["1234", "2345", "2345"]
    state, _, _ = await rc.run(["id"], user="nobody", container_id=container.id)
    assert state["error"]["code"] == "unknown_user"  # the host has it, the container not


async def test_env_and_stdin(rc: AgentPeer, container: Container) -> None:
    _, out, _ = await rc.run(["env"], env=["A=1"], container_id=container.id)
    env = dict(line.split("=", 1) for line in out.decode().splitlines())
    assert env["A"] == "1"
    assert "/bin" in env["PATH"]
    exec_id = uuid.uuid4().hex
    await rc.call("start", exec_id=exec_id, cmd=["cat"], stdin=True, container_id=container.id)
    await rc.call("stdin", b"through runc", exec_id=exec_id, close=True)
    frame = await rc.request("wait", exec_id=exec_id)
    assert split_captures(frame.header["result"], frame.payload)[0] == b"through runc"


async def test_signal_and_timeout_reach_the_container_process(
    rc: AgentPeer, container: Container
) -> None:
    tree = ["sh", "-c", "sleep 100 & sleep 100"]
    exec_id = uuid.uuid4().hex
    started = await rc.call("start", exec_id=exec_id, cmd=tree, container_id=container.id)
    await rc.call("signal", exec_id=exec_id, signal="TERM")
    state = await rc.call("wait", exec_id=exec_id)
    assert (state["exit"]["exit_code"], state["exit"]["signal"]) == (143, "SIGTERM")
    _assert_no_live_members(started["pid"])
    t0 = time.monotonic()
    state, _, _ = await rc.run(tree, timeout=0.5, container_id=container.id)
    assert time.monotonic() - t0 < 10
    assert state["exit"]["timed_out"] is True
    assert (state["exit"]["exit_code"], state["exit"]["signal"]) == (137, "SIGKILL")
    _assert_no_live_members(state["pid"])


def _assert_no_live_members(pgid: int) -> None:
    # Killed orphans stay zombies of the container's init (busybox sleep never
    # reaps), so only live processes are checked here.
    deadline = time.monotonic() + 5
    while live_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not live_members(pgid)


async def test_tty_in_the_container(rc: AgentPeer, container: Container) -> None:
    cid = {"container_id": container.id, "tty": True}
    _, out, _ = await rc.run(["tty"], **cid)
    # \r* : runc switches newline translation between two terminals (see runc/backend.py).
    assert re.fullmatch(rb"/dev/pts/\d+\r*\n", out), out
    _, out, _ = await rc.run(["stty", "size"], console_size={"width": 123, "height": 45}, **cid)
    assert re.fullmatch(rb"45 123\r*\n", out), out
    exec_id = uuid.uuid4().hex
    await rc.call(
        "start", exec_id=exec_id, cmd=["sh", "-c", "read x; stty size"], stdin=True, **cid
    )
    await rc.call("resize", exec_id=exec_id, width=132, height=50)
    await rc.call("stdin", b"go\n", exec_id=exec_id)
    frame = await rc.request("wait", exec_id=exec_id)
    assert re.search(rb"50 132\r*\n$", split_captures(frame.header["result"], frame.payload)[0])


async def test_container_state_is_reused_until_the_container_changes(
    container: Container,
) -> None:
    """`runc state` runs once per container life, not per exec, and a stopped,
    paused or re-created container is still noticed."""
    assert RUNC is not None
    base = os.path.dirname(container.bundle)
    calls = os.path.join(base, "runc-calls.log")
    wrapper = os.path.join(base, "runc-logging")
    with open(wrapper, "w") as f:
        f.write(f'#!/bin/sh\necho "$*" >> {calls}\nexec {RUNC} "$@"\n')
    os.chmod(wrapper, 0o755)
    cid = f"{container.id}-cache"
    assert _run_detached(container, "run", cid) is None
    agent = AgentProcess(
        ["--grace", "0", "--runc-root", container.runc_root, "--runc-binary", wrapper]
    )
    agent.start()
    rc = await agent.connect()

    def state_calls() -> int:
        with open(calls) as f:
            return sum(line.split()[2:3] == ["state"] for line in f)  # --root <dir> state <id>

    try:
        for _ in range(3):
            state, out, _ = await rc.run(["hostname"], container_id=cid)
            assert out == f"{HOSTNAME}\n".encode(), state
        assert state_calls() == 1
        paused = container.runc("pause", cid)
        if paused.returncode == 0:  # needs the freezer cgroup
            state, _, _ = await rc.run(["true"], container_id=cid)
            assert state["error"]["code"] == "container_not_running", state
            assert container.runc("resume", cid).returncode == 0
        container.runc("kill", cid, "KILL")
        deadline = time.monotonic() + 10
        while '"stopped"' not in container.runc("state", cid).stdout:
            assert time.monotonic() < deadline, "the container did not stop"
            time.sleep(0.05)
        state, _, _ = await rc.run(["true"], container_id=cid)
        assert state["error"]["code"] == "container_not_running", state
        container.runc("delete", "-f", cid)
        assert _run_detached(container, "run", cid) is None  # the same id, a new container
        state, _, _ = await rc.run(["cat", "/proc/1/cmdline"], container_id=cid)
        assert state["exit"]["exit_code"] == 0, state
        assert state_calls() == 3  # first exec, after the stop, after the re-creation
    finally:
        await rc.close()
        agent.terminate()
        agent.cleanup()
        container.runc("delete", "-f", cid)


def _runc_exec_children(agent_pid: int) -> list[tuple[int, str | None]]:
    """The agent's ``runc exec`` children (pid and start time)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if ppid == agent_pid and b"exec" in argv and any(a.endswith(b"runc") for a in argv):
            found.append((int(entry), start_time(int(entry))))
    return found


async def _start_container_exec(
    agent: AgentProcess, container: Container
) -> list[tuple[int, str | None]]:
    """A container exec with a background process; every process of it (host pids)."""
    c = await agent.connect()
    try:
        cmd = ["sh", "-c", "sleep 600 & sleep 600"]
        started = await c.call("start", exec_id="boxed", cmd=cmd, container_id=container.id)
    finally:
        await c.close()
    pgid = started["pid"]
    deadline = time.monotonic() + 10
    # two sleeps (busybox sh execs its last command), or sh and two sleeps
    while len(live_members(pgid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    procs = [(pid, start_time(pid)) for pid in live_members(pgid)]
    runc = _runc_exec_children(agent.pid)
    assert len(procs) >= 2 and len(runc) == 1, (procs, runc)
    return procs + runc


async def _lost(agent: AgentProcess) -> dict[str, Any]:
    c = await agent.connect()
    try:
        execs = {e["exec_id"]: e for e in (await c.call("list"))["execs"]}
        await c.call("ack", exec_id="boxed")
    finally:
        await c.close()
    lost: dict[str, Any] = execs["boxed"]
    assert lost["state"] == "failed" and lost["error"]["code"] == "agent_lost", lost
    assert lost["container_id"]
    return lost


async def test_a_container_exec_dies_with_a_killed_agent(container: Container) -> None:
    """SIGKILL the agent mid-exec: runc exec and the container processes die with it,
    and the restarted agent says so."""
    state_dir = tempfile.mkdtemp(prefix="eb-runc-state-")
    args = ["--grace", "0", "--runc-root", container.runc_root, "--state-dir", state_dir]
    agent = AgentProcess(args).start()
    again: AgentProcess | None = None
    try:
        procs = await _start_container_exec(agent, container)
        agent.kill()
        for pid, since in procs:
            wait_process_gone(pid, since)
        again = AgentProcess(args).start()
        lost = await _lost(again)
        assert "killed when the agent died" in lost["error"]["message"]
    finally:
        for a in (agent, again):
            if a is not None:
                a.terminate()
                a.cleanup()
        shutil.rmtree(state_dir, ignore_errors=True)


async def test_a_restarted_agent_kills_a_container_exec_that_survived(
    container: Container,
) -> None:
    """The agent and its lifeline killed together: the container exec runs on until
    the agent restarts with its state directory, which kills it and reports it."""
    state_dir = tempfile.mkdtemp(prefix="eb-runc-state-")
    args = ["--grace", "0", "--runc-root", container.runc_root, "--state-dir", state_dir]
    agent = AgentProcess(args).start()
    again: AgentProcess | None = None
    procs: list[tuple[int, str | None]] = []
    try:
        procs = await _start_container_exec(agent, container)
        lifeline = agent.lifeline()
        lifeline_since = start_time(lifeline)
        os.kill(lifeline, signal.SIGSTOP)
        agent.kill()
        os.kill(lifeline, signal.SIGKILL)
        wait_process_gone(lifeline, lifeline_since)  # nothing of the agent's can act now
        assert all(is_running(pid, since) for pid, since in procs), "nothing killed them yet"
        again = AgentProcess(args).start()
        for pid, since in procs:
            wait_process_gone(pid, since, timeout=2)
        lost = await _lost(again)
        assert "still running and have been killed" in lost["error"]["message"]
    finally:
        for pid, since in procs:
            if is_running(pid, since):
                os.kill(pid, signal.SIGKILL)
        for a in (agent, again):
            if a is not None:
                a.terminate()
                a.cleanup()
        shutil.rmtree(state_dir, ignore_errors=True)
