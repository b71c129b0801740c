"""Every subcommand, as a least-privilege caller and against a dead broker (#17.4).

What fails is expected to fail: with one line on stderr saying what, a
meaningful exit status, and never a Python traceback.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from execbus.cli.main import COMMANDS
from execbus.testing.processes import child_env, free_port
from tests.system.cli.conftest import BrokerUser, Execbus, runner

pytestmark = pytest.mark.integration

BROKER_COMMANDS = ("run", "inspect", "ps", "kill", "events", "status", "purge")
OTHER_COMMANDS = ("permissions", "config", "worker", "agent-bundle")
EXEC_ID = "0123456789abcdef0123456789abcdef"


# Servers, tested with their own suites: the guest daemon (no broker) and the web
# console (it keeps retrying the broker, by design).
SERVERS = ("agent", "console")


def test_these_tests_cover_every_command() -> None:
    # A new command must be added to the tests below (or to SERVERS).
    assert set(COMMANDS) - set(SERVERS) == {*BROKER_COMMANDS, *OTHER_COMMANDS}


def quiet(done: Any) -> Any:
    """A command that succeeded: no traceback, nothing on stderr."""
    assert "Traceback" not in done.stderr.decode(), done.stderr.decode()
    assert done.returncode == 0, done.stderr.decode()
    assert done.stderr == b"", done.stderr.decode()
    return done


def one_line(done: Any, returncode: int = 125) -> str:
    """A command that failed: one ``execbus...`` line on stderr and the exit status."""
    err: str = done.stderr.decode()
    assert "Traceback" not in err, err
    assert done.returncode == returncode, err
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert err.startswith("execbus"), err
    return err


def follow_one_event(env: dict[str, str], cli: Execbus, *args: str) -> dict[str, Any]:
    """``execbus events ARGS`` until it prints an event (runs `true` until one comes), then
    SIGINT: it must exit 0 quietly."""
    cmd = [sys.executable, "-m", "execbus", "events", *args]
    with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                assert proc.poll() is None, proc.communicate()[1].decode()
                quiet(cli("run", "--agent", "local", "--", "true"))
                ready, _, _ = select.select([proc.stdout], [], [], 0.5)
                if ready:
                    break
            line = proc.stdout.readline()
        finally:
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=30)
    assert "Traceback" not in err.decode(), err.decode()
    assert (proc.returncode, err) == (0, b""), err.decode()
    event: dict[str, Any] = json.loads(line)
    return event


def test_every_command_as_a_caller(
    start_worker: Any, broker_user: Any, namespace: str, tmp_path: Path
) -> None:
    worker = start_worker()
    worker.wait_owner("local")
    caller: BrokerUser = broker_user("caller", agents="local")
    env = child_env(EXECBUS_AMQP_URL=caller.url, EXECBUS_NAMESPACE=namespace)
    cli = runner(env)

    # What the caller may do works, quietly.
    assert quiet(cli("run", "--agent", "local", "--", "echo", "hi")).stdout == b"hi\n"
    record = json.loads(quiet(cli("run", "--json", "--agent", "local", "--", "true")).stdout)
    assert record["exit"]["exit_code"] == 0
    exec_id = quiet(cli("run", "-d", "--agent", "local", "--", "sleep", "60")).stdout.decode()
    exec_id = exec_id.strip()
    assert json.loads(quiet(cli("inspect", exec_id, "--agent", "local")).stdout)["state"] == (
        "running"
    )
    assert exec_id in quiet(cli("ps", "--agent", "local")).stdout.decode()
    assert quiet(cli("kill", exec_id, "--agent", "local")).stdout.decode().strip() == exec_id
    event = follow_one_event(env, cli, "--agent", "local", "--kind", "exited")
    assert (event["agent"], event["type"]) == ("local", "exec.exited")
    health = quiet(cli("worker", "--health", "--http-port", str(worker.http_port)))
    assert json.loads(health.stdout)["ready"] is True
    config = json.loads(quiet(cli("config")).stdout)
    assert config["amqp_url"] == f"amqp://{caller.name}:***@" + caller.url.split("@", 1)[1]
    quiet(cli("agent-bundle", "-o", str(tmp_path / "agent.pyz")))
    quiet(cli("permissions", "caller", "--user", caller.name, "--namespace", namespace))

    # What it may not do: one line each, saying what failed.
    line = one_line(cli("status", "--listen", "1"))
    assert f"cannot read {namespace}.control" in line, line
    assert "execbus permissions observer" in line
    line = one_line(cli("events"))  # every agent's events: its topic permissions say no
    assert line.startswith("execbus: cannot subscribe to events: ACCESS_REFUSED"), line
    assert "exec.*" in line
    line = one_line(cli("run", "--agent", "elsewhere", "--", "true"))
    assert "no worker serves agent 'elsewhere'" in line
    line = one_line(cli("purge", "--namespace", namespace, "--yes"))
    assert "access refused" in line, line
    line = one_line(cli("inspect", EXEC_ID, "--agent", "local"))
    assert f"no exec '{EXEC_ID}'" in line
    line = one_line(cli("kill", EXEC_ID, "--agent", "local"))
    assert f"no exec '{EXEC_ID}'" in line

    password = caller.url.split(":")[2].split("@")[0]
    assert password not in worker.log()


def test_status_and_events_as_an_observer(
    start_worker: Any, broker_user: Any, namespace: str
) -> None:
    worker = start_worker()
    worker.wait_owner("local")
    observer: BrokerUser = broker_user("observer")
    env = child_env(EXECBUS_AMQP_URL=observer.url, EXECBUS_NAMESPACE=namespace)
    cli = runner(env)
    status = quiet(cli("status", "--listen", "1.5", "--agent", "local"))
    assert "1 live worker(s)" in status.stdout.decode()
    local = next(line for line in status.stdout.decode().splitlines() if line.startswith("local"))
    assert local.split()[1] == worker.readyz()["worker_id"]
    # An observer publishes nothing: a run is refused, in one line.
    line = one_line(cli("run", "--agent", "local", "--", "true"))
    assert "ACCESS_REFUSED" in line or "access refused" in line, line


def test_every_command_against_a_dead_broker(namespace: str, tmp_path: Path) -> None:
    port = free_port()  # bound and released: nothing listens there
    url = f"amqp://guest:hunter2@127.0.0.1:{port}/"
    cli = runner(child_env(EXECBUS_AMQP_URL=url, EXECBUS_NAMESPACE=namespace))
    expected = f"execbus: cannot connect to the broker at amqp://guest:***@127.0.0.1:{port}/: "
    for args in (
        ("run", "--agent", "local", "--", "true"),
        ("run", "-d", "--agent", "local", "--", "true"),
        ("run", "--json", "--pool", "p", "--", "true"),
        ("inspect", EXEC_ID, "--agent", "local"),
        ("ps", "--agent", "local"),
        ("kill", EXEC_ID, "--agent", "local"),
        ("events",),
        ("status", "--listen", "1"),
        ("purge", "--namespace", namespace, "--yes"),
    ):
        done = cli(*args)
        line = one_line(done)
        assert line.startswith(expected), (args, line)
        assert "hunter2" not in line
        assert done.stdout == b"", args
    line = one_line(cli("worker", "--health", "--http-port", str(port)), returncode=1)
    assert line.startswith(f"execbus worker --health: no worker answers at http://127.0.0.1:{port}")
    config = quiet(cli("config"))
    assert json.loads(config.stdout)["amqp_url"] == f"amqp://guest:***@127.0.0.1:{port}/"
    assert b"hunter2" not in config.stdout
    quiet(cli("agent-bundle", "-o", str(tmp_path / "agent.pyz")))
    quiet(cli("permissions", "worker", "--user", "w1"))


def test_offline_failures_of_the_other_commands(tmp_path: Path) -> None:
    cli = runner(child_env())
    (tmp_path / "file").write_text("")
    line = one_line(cli("agent-bundle", "-o", str(tmp_path / "file" / "agent.pyz")), 1)
    assert str(tmp_path / "file") in line
    line = one_line(cli("config", "--bogus"), returncode=2)
    assert "unrecognized arguments: --bogus" in line
    done = runner({**child_env(), "EXECBUS_PREFETCH": "many"})("config")
    assert "prefetch" in one_line(done, returncode=2)
    assert "role" in one_line(cli("permissions", "wizard", "--user", "x"), returncode=2)
    assert os.environ.get("EXECBUS_PREFETCH") != "many"
