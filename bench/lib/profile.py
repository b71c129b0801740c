"""py-spy: sample one process during a run and summarise where its busy time goes.

:class:`Profiler` runs ``py-spy record`` (raw collapsed stacks, full file
names) on a pid until stopped; :func:`summarise_stacks` turns the stacks into
the busy samples by category (where the innermost frame is: the AMQP client,
asyncio, pydantic, ...), the hottest functions (self time) and the execbus
functions by inclusive time.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bench.lib import OUT


def find_py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


class Profiler:
    """py-spy (raw, collapsed stacks, full file names) on one process."""

    def __init__(self, exe: str, name: str, pid: int, rate: int = 250) -> None:
        self.name = name
        self.file = OUT / f"profile-{name}.txt"
        argv = [exe, "record", "--pid", str(pid), "--rate", str(rate), "--nonblocking"]
        argv += ["--full-filenames", "--format", "raw", "--output", str(self.file)]
        with open(OUT / f"profile-{name}.log", "wb") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def frame_name(frame: str) -> str:
    """``func (/path/to/pkg/file.py:123)`` -> ``pkg/file.py:func`` (line numbers merged)."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    if "/src/execbus/" in path:
        path = "execbus/" + path.split("/src/execbus/", 1)[1]
    elif "site-packages/" in path:
        path = path.split("site-packages/", 1)[1]
    elif "/lib/python3." in path:
        path = path.split("/lib/python3.", 1)[1].split("/", 1)[-1]
    return f"{path}:{name}"


# Where a sample's innermost frame is, by file: the categories of "where the time goes".
CATEGORIES = (
    ("idle (waiting in epoll)", ("selectors.py:",)),
    ("socket send (syscall)", ("asyncio/selector_events.py:_SelectorSocketTransport.write",)),
    ("AMQP client (aio-pika, aiormq, pamqp)", ("aio_pika/", "aiormq/", "pamqp/")),
    ("pydantic", ("pydantic/", "pydantic_core/")),
    ("json", ("json/",)),
    ("logging", ("logging/",)),
    ("process spawn (subprocess)", ("subprocess.py:",)),
    ("tenacity", ("tenacity/",)),
    ("asyncio (event loop, tasks, streams)", ("asyncio/",)),
    ("execbus code", ("execbus/",)),
)


def category(frame: str) -> str:
    for label, prefixes in CATEGORIES:
        if frame.startswith(prefixes):
            return label
    return "other"


@dataclass
class StackSummary:
    """The busy (non-idle) samples of one profile, in percent of all busy samples."""

    busy_samples: int = 0
    busy_by_category_pct: dict[str, float] = field(default_factory=dict)
    busy_self_pct: list[tuple[str, float]] = field(default_factory=list)
    busy_inclusive_execbus_pct: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None


def summarise_stacks(path: Path, top: int = 12) -> StackSummary:
    """Per-function self and inclusive shares of the busy samples of a py-spy raw
    profile, and the busy samples by category (where the innermost frame is)."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        return StackSummary(error=str(exc))
    self_t: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    cats: Counter[str] = Counter()
    total = idle = 0
    for line in lines:
        stack, _, count_s = line.rpartition(" ")
        if not count_s.isdigit():
            continue
        count = int(count_s)
        frames = [frame_name(f) for f in stack.split(";") if " (" in f]
        if not frames:
            continue
        total += count
        cat = category(frames[-1])
        if cat.startswith("idle"):
            idle += count
            continue
        cats[cat] += count
        self_t[frames[-1]] += count
        for f in set(frames):
            incl[f] += count
    busy = total - idle
    if busy <= 0:
        return StackSummary()

    def pct(items: list[tuple[str, int]]) -> list[tuple[str, float]]:
        return [(k, round(100 * v / busy, 1)) for k, v in items[:top]]

    # Inclusive: execbus functions below the entry points (those are in every sample).
    ours = [(k, v) for k, v in incl.most_common() if k.startswith("execbus/") and v < 0.75 * busy]
    return StackSummary(busy, dict(pct(cats.most_common())), pct(self_t.most_common()), pct(ours))
