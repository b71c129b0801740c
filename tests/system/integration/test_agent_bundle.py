"""The zipapp agent (`execbus agent-bundle`) on a bare python3, driven by a real worker.

The agent runs as ``PYTHON -I execbus-agent.pyz``: isolated mode (no
PYTHONPATH, no user site, no current directory on the path), an environment
without the venv, and an interpreter that has no execbus installed (checked),
so the archive is all it has. Interpreters: the system's ``/usr/bin/python3``
and, where one is installed, a Python 3.9 (the oldest the agent supports).
"""

from __future__ import annotations

import contextlib
import glob
import os
import signal
import subprocess
import sys
import time
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT
from tests.system.integration.bus import Bus, unb64

pytestmark = pytest.mark.integration

SYSTEM_PYTHON = "/usr/bin/python3"
BARE_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}


def python39() -> str | None:
    """A working Python 3.9 interpreter, if this machine has one."""
    candidates = [
        os.environ.get("EXECBUS_TEST_PY39", ""),
        "/usr/bin/python3.9",
        "/usr/local/bin/python3.9",
        *sorted(glob.glob("/root/.pyenv/versions/3.9*/bin/python3.9")),
        *sorted(glob.glob("/opt/python/3.9*/bin/python3.9")),
    ]
    for candidate in filter(None, candidates):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [candidate, "-I", "-c", "import sys; print(sys.version_info[:2])"],
                env=BARE_ENV,
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            )
            if out.returncode == 0 and out.stdout.strip() == "(3, 9)":
                return candidate
    return None


def interpreters() -> list[Any]:
    py39 = python39()
    return [
        pytest.param(SYSTEM_PYTHON, id="system-python3"),
        pytest.param(
            py39 or "python3.9",
            id="python3.9",
            marks=pytest.mark.skipif(py39 is None, reason="no Python 3.9 on this machine"),
        ),
    ]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``execbus agent-bundle -o PATH``, the CLI as users run it."""
    path = tmp_path_factory.mktemp("bundle") / "execbus-agent.pyz"
    result = subprocess.run(
        [sys.executable, "-m", "execbus", "agent-bundle", "-o", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"wrote {path} ("), result.stdout
    return path


def test_bundle_holds_the_agent_package_only(bundle: Path) -> None:
    assert bundle.read_bytes().startswith(b"#!/usr/bin/env python3\n")
    assert os.access(bundle, os.X_OK)
    names = zipfile.ZipFile(bundle).namelist()
    files = [n for n in names if not n.endswith("/")]
    assert "__main__.py" in files
    assert "execbus/__init__.py" not in names, "its client API needs aio-pika"
    others = [n for n in files if n != "__main__.py" and not n.startswith("execbus/agent/")]
    assert not others, others
    src = ROOT / "src" / "execbus" / "agent"
    assert sorted(files) == sorted(
        [
            "__main__.py",
            *(f"execbus/agent/{p.relative_to(src).as_posix()}" for p in src.rglob("*.py")),
        ]
    )


def test_bundle_is_reproducible(bundle: Path, tmp_path: Path) -> None:
    from execbus.cli.bundle import build

    again = build(tmp_path / "again.pyz")
    assert again.path.read_bytes() == bundle.read_bytes()


def test_bundle_refuses_python_38_with_one_line(bundle: Path) -> None:
    """Where an older python3 is installed, the archive says what it needs (no traceback)."""
    old = sorted(glob.glob("/root/.pyenv/versions/3.8*/bin/python3.8"))
    if not old:
        pytest.skip("no Python 3.8 on this machine")
    result = subprocess.run(
        [old[0], "-I", str(bundle), "--help"],
        env=BARE_ENV,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr == "execbus-agent: needs Python 3.9 or later; this is 3.8\n"


def test_bundle_cli_errors_are_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = subprocess.run(
        [sys.executable, "-m", "execbus", "agent-bundle", "-o", str(blocker / "x.pyz")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("execbus agent-bundle: cannot write "), result.stderr
    assert len(result.stderr.splitlines()) == 1


def assert_cannot_import_execbus(python: str, cwd: Path) -> None:
    """This interpreter cannot import execbus by itself: the archive is all the agent has."""
    probe = subprocess.run(
        [python, "-I", "-c", "import execbus"],
        env=BARE_ENV,
        cwd=cwd,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert probe.returncode != 0, f"{python} has execbus installed; the test would prove nothing"


class BareAgent:
    def __init__(self, python: str, bundle: Path, tmp: Path) -> None:
        self.socket = tmp / "agent.sock"
        self.log_path = tmp / "agent.log"
        argv = [python, "-I", str(bundle), "--listen", f"unix://{self.socket}", "--grace", "2"]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                argv,
                env=BARE_ENV,
                cwd=tmp,  # not the repository: nothing of execbus on the path
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while "agent ready" not in self.log():
            assert self.proc.poll() is None, f"the agent exited:\n{self.log()}"
            assert time.monotonic() < deadline, f"the agent never got ready:\n{self.log()}"
            time.sleep(0.02)


@pytest.fixture
def bare_agents() -> Iterator[list[BareAgent]]:
    agents: list[BareAgent] = []
    yield agents
    for agent in agents:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(agent.proc.pid, signal.SIGKILL)
        agent.proc.wait(10)


@pytest.mark.parametrize("python", interpreters())
async def test_bundle_on_a_bare_python_runs_execs_for_a_worker(
    python: str,
    bundle: Path,
    tmp_path: Path,
    amqp_url: str,
    namespace: str,
    start_worker: Any,
    bare_agents: list[BareAgent],
) -> None:
    assert_cannot_import_execbus(python, tmp_path)
    agent = BareAgent(python, bundle, tmp_path)
    bare_agents.append(agent)
    agent.wait_ready()
    worker = start_worker("--agent", f"box=unix://{agent.socket}")
    worker.wait_owner("box")

    async with Bus(amqp_url, namespace) as bus:
        exec_id = uuid.uuid4().hex
        body = {
            "type": "exec.run",
            "exec_id": exec_id,
            "config": {"cmd": ["sh", "-c", "echo out; echo err >&2; exit 3"]},
        }
        reply = await bus.call("box", body)
        assert reply["ok"], reply
        exit_info = reply["result"]["exit"]
        assert exit_info["exit_code"] == 3
        assert unb64(exit_info["stdout"]) == b"out\n"
        assert unb64(exit_info["stderr"]) == b"err\n"
        event = await bus.wait_event(exec_id, "exited")
        assert event["exit"]["exit_code"] == 3

        # A TTY (pty, console size), stdin, and a timeout (the timeout path of the agent).
        tty = {
            "type": "exec.run",
            "exec_id": uuid.uuid4().hex,
            "config": {
                "cmd": ["sh", "-c", "stty size; sleep 30"],
                "tty": True,
                "console_size": {"width": 100, "height": 40},
                "timeout": 1,
            },
        }
        reply = await bus.call("box", tty)
        assert reply["ok"], reply
        exit_info = reply["result"]["exit"]
        assert exit_info["timed_out"] is True, exit_info
        assert unb64(exit_info["stdout"]).startswith(b"40 100"), exit_info

    # SIGTERM: the agent stops cleanly (no traceback) within its grace.
    agent.proc.send_signal(signal.SIGTERM)
    assert agent.proc.wait(15) == 0, agent.log()
    assert "Traceback" not in agent.log(), agent.log()
