"""The pieces of ``bench/e2e.py``: measuring, profiling, plotting, the typed report,
the stack under test, and the phases (``bench/lib/phases/``)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "bench" / "out"
DOCS = ROOT / "docs"
T0 = time.monotonic()

if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))


def say(msg: str) -> None:
    """One progress line on stderr, with the seconds since the start."""
    print(f"[{time.monotonic() - T0:6.1f}s] {msg}", file=sys.stderr, flush=True)
