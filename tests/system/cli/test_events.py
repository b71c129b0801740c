"""``execbus events``: JSON lines as exec events happen; Ctrl-C ends it quietly."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
import uuid
from typing import Any

import pytest

from tests.system.cli.conftest import Execbus

pytestmark = pytest.mark.integration


class Lines:
    """Lines of a pipe, with a timeout."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = b""

    def next(self, timeout: float) -> bytes | None:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            ready, _, _ = select.select([self.fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                return None
            data = os.read(self.fd, 65536)
            if not data:
                return None
            self.buffer += data
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line


def test_events_follow_a_run(execbus: Execbus, cli_env: dict[str, str], local_worker: Any) -> None:
    cmd = [sys.executable, "-m", "execbus", "events", "--agent", "local"]
    with subprocess.Popen(cmd, env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        assert proc.stderr is not None
        lines = Lines(proc.stdout.fileno())
        # The subscription is ready once a probe's events show up.
        deadline = time.monotonic() + 15
        while lines.next(timeout=0.5) is None:
            assert time.monotonic() < deadline, "events never showed up"
            execbus("run", "--agent", "local", "--", "true")
        exec_id = uuid.uuid4().hex
        assert (
            execbus("run", "--agent", "local", "--exec-id", exec_id, "--", "true").returncode == 0
        )
        kinds: list[str] = []
        while "exec.exited" not in kinds:
            line = lines.next(timeout=10)
            assert line is not None, f"no exited event; got {kinds}"
            event = json.loads(line)
            if event["exec_id"] == exec_id:
                kinds.append(event["type"])
        assert kinds == ["exec.created", "exec.started", "exec.exited"]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
        assert proc.stderr.read() == b""
