"""bench/scaleout.py leaves nothing behind: no queue, no exchange, no temporary directory."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from execbus.testing.processes import child_env
from tests.conftest import ROOT

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.timeout(180),
    pytest.mark.skipif(shutil.which("rabbitmqctl") is None, reason="rabbitmqctl lists the queues"),
]


def names(kind: str, prefix: str) -> list[str]:
    out = subprocess.run(
        ["rabbitmqctl", "-q", f"list_{kind}", "name"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return [n for n in out.split() if n.startswith(prefix)]


def test_scaleout_bench_cleans_up(amqp_url: str) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "scaleout.py"), "--agents", "2", "--workers", "2"],
        env=child_env(EXECBUS_AMQP_URL=amqp_url),
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    found = re.search(r"namespace (scale\w+), workdir (\S+)", result.stderr)
    assert found, result.stderr
    ns, workdir = found.group(1), Path(found.group(2))
    assert f"purged {ns}: " in result.stderr
    assert names("queues", f"{ns}.") == []
    assert names("exchanges", f"{ns}.") == []
    assert not workdir.exists()
