"""``execbus run --json``: the final exec record on stdout, for scripts; and ``execbus config``."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from execbus.testing.processes import child_env
from tests.system.cli.conftest import Execbus, runner


@pytest.mark.integration
def test_json_prints_the_record_as_inspect_does(execbus: Execbus, local_worker: Any) -> None:
    done = execbus(
        "run", "--json", "--agent", "local", "-e", "A=1", "-l", "job=7",
        "--", "sh", "-c", "echo out; echo err >&2; exit 3",
    )  # fmt: skip
    assert done.returncode == 3, "the command's exit status, as without --json"
    assert done.stderr == b"", "nothing streamed: the output is in the record"
    record = json.loads(done.stdout)  # stdout is the record alone
    assert record["state"] == "exited" and record["env_keys"] == ["A"]
    assert record["labels"] == {"job": "7"}
    assert record["exit"]["exit_code"] == 3 and record["exit"]["timed_out"] is False
    assert base64.b64decode(record["exit"]["stdout"]) == b"out\n"
    assert base64.b64decode(record["exit"]["stderr"]) == b"err\n"
    inspected = json.loads(execbus("inspect", record["exec_id"], "--agent", "local").stdout)
    assert inspected == record


@pytest.mark.integration
def test_json_output_limit_and_what_was_dropped(execbus: Execbus, local_worker: Any) -> None:
    done = execbus(
        "run", "--json", "--output-limit", "10", "--agent", "local", "--", "seq", "1", "100"
    )
    assert done.returncode == 0, done.stderr
    exit_ = json.loads(done.stdout)["exit"]
    assert base64.b64decode(exit_["stdout"]) == b"1\n2\n3\n4\n5\n"
    assert exit_["stdout_dropped"] == len("".join(f"{i}\n" for i in range(1, 101))) - 10


@pytest.mark.integration
def test_json_of_a_start_failure_and_of_a_detached_run(execbus: Execbus, local_worker: Any) -> None:
    failed = execbus("run", "--json", "--agent", "local", "--", "/no/such/program")
    assert failed.returncode == 127
    assert failed.stderr.decode().count("\n") == 1
    assert failed.stderr.startswith(b"execbus: /no/such/program")
    record = json.loads(failed.stdout)
    assert record["state"] == "failed" and record["error"]["code"] == "command_not_found"

    detached = execbus("run", "-d", "--json", "--agent", "local", "--", "sleep", "60")
    assert detached.returncode == 0, detached.stderr
    record = json.loads(detached.stdout)
    assert record["cmd"] == ["sleep", "60"] and record["state"] in ("created", "running")
    assert execbus("kill", record["exec_id"], "--agent", "local").returncode == 0


def test_json_cannot_drive_a_terminal() -> None:
    done = runner(child_env())("run", "--json", "-it", "--agent", "local", "--", "sh")
    assert done.returncode == 2
    assert b"--json does not stream the output" in done.stderr


def test_config_redacts_the_amqp_password() -> None:
    url = "amqps://ci-7:p%40ss%3Aw0rd-hunter2@mq.example.com:5671/prod?heartbeat=10"
    done = runner(child_env(EXECBUS_AMQP_URL=url))("config")
    assert done.returncode == 0, done.stderr
    assert b"hunter2" not in done.stdout + done.stderr
    shown = json.loads(done.stdout)["amqp_url"]
    assert shown == "amqps://ci-7:***@mq.example.com:5671/prod?heartbeat=10"
    no_password = runner(child_env(EXECBUS_AMQP_URL="amqp://localhost/"))("config")
    assert json.loads(no_password.stdout)["amqp_url"] == "amqp://localhost/"
