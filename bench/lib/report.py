"""The benchmark's result: one typed section per phase, the targets, the JSON, the docs.

Each phase returns a section (a dataclass of ``bench/lib/sections.py``);
:class:`BenchResult` holds them, :func:`targets` judges them, and
:meth:`BenchResult.to_json` lays them out as the JSON object the benchmark
prints (the keys docs/performance.md quotes: ``spawn_per_s``, ``e2e_per_s``,
``cpu.e2e_c64``, ``worker_rss_mb``, ... for the run with every lifecycle
event, plus the ``lean`` and ``full`` sections of issue #19).
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
from dataclasses import dataclass, field
from typing import Any

from bench.lib import DOCS, OUT, say
from bench.lib.measure import ROUNDS, r
from bench.lib.plot import throughput_svg
from bench.lib.sections import (
    AgentSection,
    BreakdownSection,
    BrokerHopsSection,
    CelerySection,
    E2eSection,
    FloodSection,
    InteractiveSection,
    ProfileSection,
    RuncSection,
    ScalingSection,
    Section,
    SpawnSection,
    StreamSection,
    WorkerRssSection,
)


def plain(value: Any) -> Any:
    """Dataclasses (nested) as JSON-ready dicts and lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


@dataclass
class Target:
    value: float | None
    target: str
    passed: bool | None

    @classmethod
    def check(cls, value: float | None, op: str, limit: float) -> Target:
        if value is None:
            return cls(None, f"{op} {limit:g}", None)
        ok = value >= limit if op == ">=" else value <= limit
        return cls(r(value, 3), f"{op} {limit:g}", ok)

    def to_json(self) -> dict[str, Any]:
        return {"value": self.value, "target": self.target, "pass": self.passed}


@dataclass
class Machine:
    cpus: int | None = os.cpu_count()
    python: str = platform.python_version()
    loadavg_start: list[float] = field(
        default_factory=lambda: [round(x, 2) for x in os.getloadavg()]
    )
    loadavg_end: list[float] | None = None
    broker_pid: int | None = None


@dataclass
class BenchResult:
    """Every section of one run (``None``: the phase did not run)."""

    mode: str
    namespace: str
    cmd: list[str]
    worker_event_loop: str
    machine: Machine = field(default_factory=Machine)
    spawn: SpawnSection | None = None
    agent: AgentSection | None = None
    full: E2eSection | None = None
    lean: E2eSection | None = None
    runc: RuncSection | None = None
    breakdown: BreakdownSection | None = None
    broker_hops: BrokerHopsSection | None = None
    celery: CelerySection | None = None
    interactive: InteractiveSection | None = None
    stream: StreamSection | None = None
    profile: ProfileSection | None = None
    worker_rss: WorkerRssSection | None = None
    flood: FloodSection | None = None
    scaling: ScalingSection | None = None
    error: str | None = None
    elapsed_s: float | None = None

    def add(self, section: Section) -> None:
        """Keep a phase's section in its field (``section.key``)."""
        if section.key not in {f.name for f in dataclasses.fields(self)}:
            raise KeyError(f"no field for section {section.key!r}")
        setattr(self, section.key, section)

    def celery_ratios(self) -> None:
        """Each e2e section against the Celery baseline of the same run."""
        c = self.celery
        if c is None or c.per_s is None or c.p50_ms is None:
            return
        for e2e in (self.full, self.lean):
            if e2e is not None:
                e2e.vs_celery_throughput = r(e2e.peak_per_s / c.per_s, 2)
                if e2e.latency.p50 is not None:
                    e2e.vs_celery_p50 = r(e2e.latency.p50 / c.p50_ms, 3)
                say(
                    f"{e2e.mode}: {e2e.vs_celery_throughput}x Celery's throughput "
                    f"({c.per_s}/s), p50 {e2e.vs_celery_p50}x ({c.p50_ms} ms)"
                )

    # -- the JSON ------------------------------------------------------

    def _legacy(self) -> dict[str, Any]:
        """The flat keys of the earlier runs (the e2e ones are the full-events run's)."""
        out: dict[str, Any] = {}
        cpu: dict[str, Any] = {}
        if self.spawn is not None:
            out |= self.spawn.legacy()
            cpu["spawn"] = plain(self.spawn.cpu)
        if self.agent is not None:
            out |= self.agent.legacy()
            cpu["agent"] = plain(self.agent.cpu)
        if self.full is not None:
            out |= self.full.legacy()
            cpu |= {f"e2e_c{c}": plain(rep) for c, rep in self.full.cpu.items()}
        if cpu:
            out["cpu"] = cpu
        for section in (self.runc, self.worker_rss, self.flood):
            if section is not None:
                out |= section.legacy()
        if self.breakdown is not None:
            out["latency_breakdown_ms"] = plain(self.breakdown)
        return out

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mode": self.mode,
            "namespace": self.namespace,
            "cmd": self.cmd,
            "machine": plain(self.machine),
            "worker_event_loop": self.worker_event_loop,
            **self._legacy(),
        }
        for name in ("full", "lean", "celery", "broker_hops", "interactive", "stream"):
            section = getattr(self, name)
            if section is not None:
                out[name] = plain(section)
        if self.scaling is not None:
            out["scaling"] = plain(self.scaling.points)
        if self.profile is not None:
            out["profile"] = plain(self.profile.processes)
        if self.full is not None and self.celery is not None:
            out["e2e_vs_celery_throughput"] = self.full.vs_celery_throughput
            out["e2e_vs_celery_p50"] = self.full.vs_celery_p50
        budget = latency_budget(self)
        if budget:
            out["latency_budget_ms"] = budget
        if self.error is None:
            out["targets"] = {k: t.to_json() for k, t in targets(self).items()}
        else:
            out["error"] = self.error
        out["rounds_per_s"] = ROUNDS
        out["elapsed_s"] = self.elapsed_s
        return dict(plain(out))


def targets(res: BenchResult) -> dict[str, Target]:
    """Issue #19's targets, and the memory targets kept from before."""
    spawn = res.spawn.per_s if res.spawn else None
    lean, full, stream = res.lean, res.full, res.stream
    check = Target.check
    return {
        "lean_vs_celery_throughput": check(lean.vs_celery_throughput if lean else None, ">=", 1.5),
        "lean_vs_celery_p50": check(lean.vs_celery_p50 if lean else None, "<=", 0.75),
        "full_vs_celery_throughput": check(full.vs_celery_throughput if full else None, ">=", 1.2),
        "lean_cpu_ms_per_exec": check(lean.cpu_ms_per_exec_total if lean else None, "<=", 2.5),
        "agent_vs_spawn": check(
            res.agent.per_s / spawn if res.agent and spawn else None, ">=", 0.85
        ),
        "worker_rss_mb": check(res.worker_rss.worker_rss_mb if res.worker_rss else None, "<=", 150),
        "agent_rss_mb": check(res.flood.peak_mb if res.flood else None, "<=", 64),
        "interactive_p50_ms": check(res.interactive.cli.p50 if res.interactive else None, "<=", 5),
        "stream_mb_per_s": check(stream.mb_per_s if stream else None, ">=", 50),
        "stream_agent_rss_mb": check(stream.agent_peak_mb if stream else None, "<=", 64),
        "stream_worker_rss_growth_mb": check(stream.worker_growth_mb if stream else None, "<=", 64),
    }


def latency_budget(res: BenchResult) -> list[dict[str, Any]]:
    """Each hop of a concurrency-1 exec: what it costs now, and its floor on this machine."""
    host = res.breakdown.host if res.breakdown else None
    if host is None or host.n == 0:
        return []
    hops = res.broker_hops
    quorum = hops.quorum.p50 if hops else None
    classic = hops.classic.p50 if hops else None
    spawn_c1 = res.spawn.c1_p50_ms if res.spawn else None
    rows = [
        (
            "client_to_worker",
            host.client_to_worker,
            quorum,
            "confirmed publish -> delivery, quorum queue",
        ),
        (
            "worker_to_agent",
            host.worker_to_agent,
            None,
            "an agent call on a Unix socket (not measured)",
        ),
        ("in_agent", host.in_agent, spawn_c1, "asyncio spawn + wait of the command, c=1"),
        (
            "agent_to_worker",
            host.agent_to_worker,
            None,
            "the exit frame on the socket (not measured)",
        ),
        (
            "worker_to_client",
            host.worker_to_client,
            classic,
            "confirmed publish -> delivery, exclusive classic queue",
        ),
    ]
    return [
        {"hop": hop, "now_ms": now, "floor_ms": r(floor, 3), "floor": what}
        for hop, now, floor, what in rows
    ]


def write_outputs(res: BenchResult, update_docs: bool) -> str:
    """``bench/out/e2e.json`` and the plot (``--update-docs``: into docs/ as well)."""
    OUT.mkdir(parents=True, exist_ok=True)
    doc = res.to_json()
    if res.error is None and (res.full or res.lean or res.spawn):
        svg = throughput_svg(
            res.spawn.by_concurrency if res.spawn else None,
            res.agent.by_concurrency if res.agent else None,
            res.full.per_s if res.full else None,
            res.lean.per_s if res.lean else None,
            res.celery.per_s if res.celery else None,
            res.celery.n if res.celery else None,
        )
        (OUT / "throughput.svg").write_text(svg)
        if update_docs:
            shutil.copyfile(OUT / "throughput.svg", DOCS / "performance-throughput.svg")
    text = json.dumps(doc, indent=2)
    (OUT / "e2e.json").write_text(text + "\n")
    for name, t in doc.get("targets", {}).items():
        verdict = {True: "pass", False: "FAIL", None: "n/a"}[t["pass"]]
        say(f"target {name}: {t['value']} (target {t['target']}): {verdict}")
    return text
