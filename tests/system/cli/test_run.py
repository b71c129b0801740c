"""``execbus run`` as a subprocess, against a real broker and worker."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.system.cli.conftest import Execbus

pytestmark = pytest.mark.integration


def test_streams_are_separated_and_in_order(execbus: Execbus, local_worker: Any) -> None:
    done = execbus("run", "--agent", "local", "--", "sh", "-c", "echo a; echo b >&2; echo c")
    assert done.returncode == 0, done.stderr
    assert (done.stdout, done.stderr) == (b"a\nc\n", b"b\n")


def test_large_output_arrives_complete(execbus: Execbus, local_worker: Any) -> None:
    done = execbus("run", "--agent", "local", "--", "seq", "1", "50000")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "".join(f"{i}\n" for i in range(1, 50001)).encode()


def test_output_streams_while_the_command_runs(cli_env: dict[str, str], local_worker: Any) -> None:
    cmd = [sys.executable, "-m", "execbus", "run", "--agent", "local", "--"]
    script = "echo first; sleep 1.5; echo second"
    with subprocess.Popen([*cmd, "sh", "-c", script], env=cli_env, stdout=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"first\n"
        assert proc.poll() is None, "the first line arrived before the command ended"
        assert proc.stdout.read() == b"second\n"
    assert proc.returncode == 0


def test_exit_status_is_the_commands(execbus: Execbus, local_worker: Any) -> None:
    cases = {"exit 0": 0, "exit 3": 3, "kill -INT $$": 130, "kill -KILL $$": 137}
    for script, status in cases.items():
        done = execbus("run", "--agent", "local", "--", "sh", "-c", script)
        assert done.returncode == status, (script, done.stderr)


def test_interactive_forwards_piped_stdin(execbus: Execbus, local_worker: Any) -> None:
    data = b"".join(b"line %d\n" % i for i in range(20000))  # ~200 KB: several chunks
    done = execbus("run", "-i", "--agent", "local", "--", "cat", input=data)
    assert done.returncode == 0, done.stderr
    assert done.stdout == data


def test_tty_gives_the_command_a_terminal(execbus: Execbus, local_worker: Any) -> None:
    done = execbus("run", "-t", "--agent", "local", "--", "tty")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(b"/dev/pts/")


def test_options_reach_the_command(execbus: Execbus, local_worker: Any) -> None:
    done = execbus(
        "run", "--agent", "local", "-e", "A=1", "--env", "B=x=y", "-w", "/tmp",
        "--label", "job=42", "--", "sh", "-c", 'echo "$A $B $(pwd)"',
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"1 x=y /tmp\n"


def test_command_not_found_exits_127(execbus: Execbus, local_worker: Any) -> None:
    done = execbus("run", "--agent", "local", "--", "/no/such/program")
    assert done.returncode == 127
    assert done.stderr.startswith(b"execbus: ")
    assert b"Traceback" not in done.stderr


def test_a_missing_working_dir_exits_126_with_one_line(
    execbus: Execbus, local_worker: Any, tmp_path: Path
) -> None:
    """The start failure path (``invalid_working_dir``, 126 as ``docker exec``), not
    125: the command never ran, and stderr says which directory is missing."""
    missing = tmp_path / "nonexistent"
    done = execbus("run", "--agent", "local", "-w", str(missing), "--", "sh", "-c", "echo ran")
    assert done.returncode == 126, done.stderr
    assert done.stdout == b""
    lines = done.stderr.decode().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("execbus: ") and str(missing) in lines[0], lines


def test_timeout_kills_the_command(execbus: Execbus, local_worker: Any) -> None:
    started = time.monotonic()
    done = execbus(
        "run", "--agent", "local", "--timeout", "0.5", "--", "sh", "-c", "echo a; sleep 30"
    )
    assert time.monotonic() - started < 10
    assert done.returncode == 124, "timeout(1)'s convention, not 137 (an OOM kill looks the same)"
    assert done.stdout == b"a\n"
    assert done.stderr == b"execbus: timed out after 0.5 s; killed\n"


def test_timeout_is_in_the_json_record(execbus: Execbus, local_worker: Any) -> None:
    done = execbus("run", "--json", "--agent", "local", "--timeout", "1", "--", "sleep", "30")
    assert done.returncode == 124
    assert done.stderr == b"execbus: timed out after 1 s; killed\n"
    info = json.loads(done.stdout)
    assert info["state"] == "exited" and info["timeout"] == 1
    assert info["exit"] == {
        **info["exit"],
        "exit_code": 137,
        "signal": "SIGKILL",
        "timed_out": True,
    }


def test_a_command_that_exits_124_by_itself_says_nothing(
    execbus: Execbus, local_worker: Any
) -> None:
    done = execbus("run", "--agent", "local", "--timeout", "30", "--", "sh", "-c", "exit 124")
    assert (done.returncode, done.stderr) == (124, b"")


def test_detach_inspect_and_kill(execbus: Execbus, local_worker: Any) -> None:
    detached = execbus("run", "-d", "--agent", "local", "--", "sleep", "60")
    assert detached.returncode == 0, detached.stderr
    exec_id = detached.stdout.decode().strip()
    info = json.loads(execbus("inspect", exec_id, "--agent", "local").stdout)
    assert (info["exec_id"], info["state"], info["cmd"]) == (exec_id, "running", ["sleep", "60"])
    ps = execbus("ps", "--agent", "local")
    assert exec_id in ps.stdout.decode()
    assert ps.stdout.startswith(b"EXEC ID")
    killed = execbus("kill", exec_id, "--agent", "local", "--signal", "TERM")
    assert (killed.returncode, killed.stdout.decode().strip()) == (0, exec_id)
    deadline = time.monotonic() + 10
    while info["state"] == "running" and time.monotonic() < deadline:
        info = json.loads(execbus("inspect", exec_id, "--agent", "local").stdout)
    assert info["state"] == "exited"
    assert info["exit"]["exit_code"] == 143
    assert exec_id not in execbus("ps", "--agent", "local").stdout.decode()
    listed = json.loads(execbus("ps", "--agent", "local", "--all", "--json").stdout)
    assert exec_id in [e["exec_id"] for e in listed]


def test_kill_defaults_to_sigkill(execbus: Execbus, local_worker: Any) -> None:
    exec_id = execbus("run", "-d", "--agent", "local", "--", "sleep", "60").stdout.decode().strip()
    assert execbus("kill", exec_id, "--agent", "local").returncode == 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        info = json.loads(execbus("inspect", exec_id, "--agent", "local").stdout)
        if info["state"] == "exited":
            break
    assert info["exit"] == {**info["exit"], "exit_code": 137, "signal": "SIGKILL"}


def test_closed_standard_streams(cli_env: dict[str, str], local_worker: Any) -> None:
    """``-i`` with stdin closed is an empty stdin (it once waited on the event loop's
    epoll, which took fd 0); closed stdout or stderr lose the output, not the status."""
    execbus = [sys.executable, "-m", "execbus", "run", "--agent", "local"]
    for redirect, args, status in (
        ("<&-", ["-i", "--", "cat"], 0),
        (">&-", ["--", "echo", "hi"], 0),
        ("2>&-", ["--", "sh", "-c", "echo err >&2; exit 4"], 4),
    ):
        done = subprocess.run(
            ["sh", "-c", f'"$@" {redirect}', "sh", *execbus, *args],
            env=cli_env, capture_output=True, timeout=30, check=False,
        )  # fmt: skip
        assert done.returncode == status, (redirect, done.stderr)
        assert b"Traceback" not in done.stderr
