"""The CLI's errors: one clear line on stderr, a meaningful exit status, never a traceback."""

from __future__ import annotations

from typing import Any

import pytest

from tests.system.cli.conftest import Execbus

pytestmark = pytest.mark.integration


def one_line(stderr: bytes) -> str:
    text = stderr.decode()
    assert "Traceback" not in text
    assert text.count("\n") == 1, text
    return text


def test_broker_unreachable(offline_execbus: Execbus) -> None:
    url = "amqp://guest:hunter2@127.0.0.1:1/"
    done = offline_execbus("run", "--amqp-url", url, "--agent", "local", "--", "true")
    assert done.returncode == 125
    line = one_line(done.stderr)
    assert line.startswith("execbus: cannot connect to the broker at amqp://guest:***@127.0.0.1:1/")
    assert "hunter2" not in line


def test_unknown_agent(offline_execbus: Execbus) -> None:
    done = offline_execbus("run", "--agent", "nobody-serves-me", "--", "true")
    assert done.returncode == 125
    assert "no worker serves agent 'nobody-serves-me'" in one_line(done.stderr)


def test_env_key_missing_from_the_environment(offline_execbus: Execbus) -> None:
    done = offline_execbus("run", "--agent", "local", "-e", "JUSTAKEY_NOT_SET", "--", "true")
    assert done.returncode == 2
    assert "JUSTAKEY_NOT_SET is not set in this environment" in one_line(done.stderr)


def test_missing_command_and_agent(offline_execbus: Execbus) -> None:
    assert "no command given" in one_line(offline_execbus("run", "--agent", "local").stderr)
    assert "--agent" in one_line(offline_execbus("inspect", "abc").stderr)


def test_invalid_configuration(execbus: Execbus, local_worker: Any) -> None:
    done = execbus("run", "--agent", "local", "-w", "relative/dir", "--", "true")
    assert done.returncode == 125
    assert "working_dir must be an absolute path" in one_line(done.stderr)


def test_inspect_of_an_unknown_exec(execbus: Execbus, local_worker: Any) -> None:
    done = execbus("inspect", "0123456789abcdef", "--agent", "local")
    assert done.returncode == 125
    assert "no exec '0123456789abcdef'" in one_line(done.stderr)


@pytest.mark.parametrize("command", ["run", "inspect", "ps", "kill", "events", "status"])
def test_every_command_has_help(offline_execbus: Execbus, command: str) -> None:
    done = offline_execbus(command, "--help")
    assert done.returncode == 0
    text = done.stdout.decode()
    assert f"usage: execbus {command}" in text
    assert "--amqp-url" in text
    assert "125" in text


def test_status_tells_served_agents(execbus: Execbus, local_worker: Any) -> None:
    done = execbus("status", "--agent", "local", "--agent", "ghost")
    assert done.returncode == 1
    out = done.stdout.decode()
    assert "1 live worker(s)" in out
    owner_line = next(line for line in out.splitlines() if line.startswith("local "))
    assert owner_line.split()[1] != "-", "the local agent has an owner"
    assert owner_line.split()[3] == "1", "and one consumer on its queue"
    assert "agent ghost: NOT served" in done.stderr.decode()
    assert "agent local" not in done.stderr.decode()
