"""Small helpers of the process harness: a free port, a child's environment,
a log's tail and a worker's ``/readyz`` document."""

from __future__ import annotations

import json
import os
import socket
import urllib.error
import urllib.request
from pathlib import Path

SRC = Path(__file__).resolve().parents[3]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def child_env(base: dict[str, str] | None = None, **extra: str) -> dict[str, str]:
    """``base`` (default: this process's environment) with ``src/`` on PYTHONPATH."""
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = str(SRC) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def tail(path: Path, lines: int = 15) -> str:
    """The last ``lines`` lines of a log file ("" if unreadable)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def fetch_readyz(port: int) -> dict[str, object] | None:
    """A worker's readiness document (also when it answers 503), or None."""
    url = f"http://127.0.0.1:{port}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            body = resp.read()
    except urllib.error.HTTPError as exc:
        body = exc.read()
        exc.close()
    except OSError:
        return None
    doc: dict[str, object] = json.loads(body)
    return doc
