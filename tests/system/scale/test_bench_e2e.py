"""bench/e2e.py runs its phases at the smallest size, prints the keys the docs quote, and
leaves nothing behind (no queue, no exchange, no temporary directory)."""

from __future__ import annotations

import json
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
    pytest.mark.timeout(240),
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


def test_e2e_bench_phases_and_cleanup(amqp_url: str) -> None:
    phases = "full,hops,lean,interactive,stream"
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "e2e.py"), "--tiny", "--no-runc", "--phases", phases],
        env=child_env(EXECBUS_AMQP_URL=amqp_url),
        capture_output=True,
        text=True,
        timeout=230,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    doc = json.loads(result.stdout)
    for key in ("e2e_per_s", "e2e_peak_per_s", "e2e_p50_ms", "e2e_latency_ms", "cpu", "targets"):
        assert key in doc, key
    assert set(doc["cpu"]) == {"e2e_c1", "e2e_c16", "e2e_c64"}
    for mode, events in (("full", "created,started"), ("lean", "none")):
        section = doc[mode]
        assert section["worker_lifecycle_events"] == events
        assert section["peak_per_s"] > 0
        assert {"client", "worker", "agent", "spawned", "broker"} <= set(section["cpu_ms_per_exec"])
    assert doc["interactive"]["cli"]["n"] > 0 and doc["interactive"]["sdk"]["n"] > 0
    assert doc["stream"]["received"] == doc["stream"]["bytes"]
    assert doc["broker_hops"]["quorum"]["p50"] > 0
    found = re.search(r"namespace (bench\w+), workdir (\S+)", result.stderr)
    assert found, result.stderr
    ns, workdir = found.group(1), Path(found.group(2))
    assert f"purged namespace {ns}: " in result.stderr
    assert names("queues", f"{ns}.") == []
    assert names("exchanges", f"{ns}.") == []
    assert not workdir.exists()
