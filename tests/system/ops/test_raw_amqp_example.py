"""docs/examples/raw_amqp.py (plain aio-pika, no execbus SDK) against a real worker."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
from typing import Any

import pytest

from execbus.testing.processes import child_env
from tests.conftest import ROOT

pytestmark = pytest.mark.integration

EXAMPLE = ROOT / "docs" / "examples" / "raw_amqp.py"


async def run_example(amqp_url: str, namespace: str, *args: str) -> tuple[int, dict[str, Any]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLE),
        "--url",
        amqp_url,
        "--namespace",
        namespace,
        *args,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 40)
    assert out, err.decode()
    summary: dict[str, Any] = json.loads(out)
    assert proc.returncode is not None
    return proc.returncode, summary


@pytest.fixture
def local_worker(start_worker: Any) -> Any:
    worker = start_worker()
    worker.wait_owner("local")
    return worker


async def test_raw_example_runs_a_command(amqp_url: str, namespace: str, local_worker: Any) -> None:
    script = "echo $GREETING; echo err >&2; exit 3"
    code, summary = await run_example(amqp_url, namespace, "--", "sh", "-c", script)
    assert code == 3, summary
    assert summary["ok"] is True and summary["exit_code"] == 3
    assert summary["stdout"] == "hello\n" and summary["stderr"] == "err\n"
    assert summary["event"]["type"] == "exec.exited" and summary["event"]["event_id"]
    assert summary["reply"]["exec_id"] == summary["exec_id"]


async def test_raw_example_reports_errors(amqp_url: str, namespace: str, local_worker: Any) -> None:
    code, summary = await run_example(amqp_url, namespace, "--", "/no/such/binary")
    assert code == 127, summary
    assert summary["error"]["code"] == "command_not_found"
    assert summary["event"]["type"] == "exec.failed"

    code, summary = await run_example(amqp_url, namespace, "--agent", "ghost", "--", "true")
    assert code == 125, summary
    assert summary["error"]["code"] == "unknown_agent" and "event" not in summary


@pytest.mark.parametrize(
    ("script", "raw", "wire"),
    [
        (r"printf '\373\377\277'", b"\xfb\xff\xbf", "+/+/"),  # base64url would be "-_-_"
        (r"printf 'ab?'", b"ab?", "YWI/"),  # base64url would be "YWI_"
    ],
)
async def test_raw_example_round_trips_bytes_of_either_alphabet(
    amqp_url: str, namespace: str, local_worker: Any, script: str, raw: bytes, wire: str
) -> None:
    """Bytes whose base64 differs between the two alphabets come back exact."""
    code, summary = await run_example(
        amqp_url, namespace, "--", "sh", "-c", f"{script}; {script} >&2"
    )
    assert code == 0, summary
    for stream in ("stdout", "stderr"):
        assert summary[f"{stream}_base64"] == wire
        assert base64.b64decode(summary[f"{stream}_base64"], validate=True) == raw
        assert summary[stream] == raw.decode(errors="replace")
