"""HTTP probes and Prometheus scrapes of a worker's or an agent's endpoint."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def get(port: int, path: str, method: str = "GET") -> tuple[int, str, bytes]:
    """``(status, content type, body)`` of one request (error statuses too)."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.headers.get("Content-Type", ""), exc.read()


def probe(port: int, path: str) -> tuple[int, dict[str, Any]]:
    """A health endpoint's status and JSON document."""
    status, _, body = get(port, path)
    doc: dict[str, Any] = json.loads(body)
    return status, doc


def scrape(port: int) -> Samples:
    """Every sample of ``/metrics``, parsed by prometheus_client's own parser (so a
    malformed exposition fails the test)."""
    status, ctype, body = get(port, "/metrics")
    assert status == 200, body
    assert ctype.startswith("text/plain"), ctype
    samples: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples named ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, lbls), v in samples.items() if n == name and wanted <= lbls)


def names(samples: Samples) -> set[str]:
    return {n for n, _ in samples}


def wait_for(check: Callable[[], bool], timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")
