"""The console's store at its bound: memory and time for 100,000 execs (prints JSON).

Feeds synthetic events, as JSON bodies parsed by the SDK's parser
(``execbus.wire.codec.parse_event``), into a :class:`ConsoleStore` bounded at
``--max-execs``: per exec ``exec.created``, ``exec.started``, one
``exec.output`` chunk and ``exec.exited`` (a tenth of them non-zero, one in
fifty signalled), with two labels and a five-argument argv, on 50 agents.
More execs than the bound are fed, so eviction runs too. It reports the
process's RSS before and after (``/proc/self/status``), the RSS per exec held,
the time to parse and to apply an event, and what the page's queries cost
at the bound: the newest 200 rows unfiltered and filtered, one exec's
detail, a chart series and a whole snapshot as JSON.

    python bench/console.py [--execs 110000] [--max-execs 100000]
"""

from __future__ import annotations

import argparse
import base64
import gc
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from execbus.console.store import ConsoleStore, ExecFilter
from execbus.wire.codec import parse_event


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def bodies(i: int, t0: datetime) -> list[bytes]:
    agent = f"agent-{i % 50:02d}"
    exec_id = f"{i:08d}bench{i * 2654435761 % 2**32:08x}"
    base: dict[str, Any] = {
        "v": 1,
        "agent": agent,
        "exec_id": exec_id,
        "container_id": "" if i % 3 else f"ctr-{i % 7}",
        "labels": {"job": f"build-{i // 10}", "team": ("red", "blue", "green")[i % 3]},
    }
    at = t0 + timedelta(milliseconds=i)
    code = 0 if i % 10 else 1
    signal = "SIGKILL" if i % 50 == 7 else None
    exit_doc: dict[str, Any] = {
        "exit_code": 137 if signal else code,
        "timed_out": False,
        "started_at": (at + timedelta(milliseconds=1)).isoformat(),
        "finished_at": (at + timedelta(milliseconds=40 + i % 100)).isoformat(),
        "stdout": base64.b64encode(b"done\n").decode(),
        "stderr": "",
        "stdout_dropped": 0,
        "stderr_dropped": 0,
    }
    if signal:
        exit_doc["signal"] = signal
    docs = [
        {
            "type": "exec.created",
            "cmd": ["make", "-C", f"/src/project-{i % 20}", "test", f"SHARD={i % 8}"],
            "env_keys": ["CI", "TOKEN"],
            "tty": False,
        },
        {"type": "exec.started", "pid": 1000 + i % 30000, "started_at": at.isoformat()},
        {
            "type": "exec.output",
            "stream": "stdout",
            "seq": 0,
            "data": base64.b64encode(b"\x1b[32mok\x1b[0m step %d\n" % i).decode(),
        },
        {"type": "exec.exited", "exit": exit_doc},
    ]
    out = []
    for n, doc in enumerate(docs):
        event = {**base, **doc, "event_id": f"{exec_id}-{n}", "time": at.isoformat()}
        out.append(json.dumps(event).encode())
    return out


def timed(fn: Any, repeat: int = 5) -> float:
    """Best of ``repeat`` runs, in milliseconds."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return round(best * 1000, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--execs", type=int, default=110_000, help="execs fed (default 110000)")
    parser.add_argument("--max-execs", type=int, default=100_000, help="the store's bound")
    args = parser.parse_args()

    gc.collect()
    rss_before = rss_mib()
    store = ConsoleStore(args.max_execs)
    t0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
    parse_s = apply_s = 0.0
    events = 0
    clock = 1_800_000_000.0
    wall = time.perf_counter()
    for i in range(args.execs):
        for body in bodies(i, t0):
            start = time.perf_counter()
            event = parse_event(body)
            mid = time.perf_counter()
            store.apply_event(event, clock + i * 0.001)
            parse_s += mid - start
            apply_s += time.perf_counter() - mid
            events += 1
    wall = time.perf_counter() - wall
    gc.collect()
    rss_after = rss_mib()
    now = clock + args.execs * 0.001
    some = next(store.newest_first())
    filtered = ExecFilter.parse({"agent": "agent-07", "result": "nonzero"})
    rare = ExecFilter.parse({"q": "00000042"})
    report = {
        "execs_fed": args.execs,
        "events": events,
        "max_execs": args.max_execs,
        "execs_held": len(store),
        "evicted": store.evicted,
        "output_bytes_held": store.output.total,
        "rss_mib_before": round(rss_before, 1),
        "rss_mib_after": round(rss_after, 1),
        "rss_kib_per_exec": round((rss_after - rss_before) * 1024 / max(1, len(store)), 2),
        "parse_us_per_event": round(parse_s / events * 1e6, 2),
        "apply_us_per_event": round(apply_s / events * 1e6, 2),
        "events_per_s": round(events / wall),
        "query_ms": {
            "newest_200": timed(lambda: store.query(ExecFilter(), 200)),
            "agent_and_result_filter": timed(lambda: store.query(filtered, 200)),
            "exec_id_search_rare": timed(lambda: store.query(rare, 200)),
            "detail": timed(lambda: store.detail(some.agent, some.exec_id)),
            "chart_series_5min": timed(lambda: store.stats.series(None, now)),
            "snapshot_json": timed(
                lambda: json.dumps(
                    {
                        "execs": store.query(ExecFilter(), 200),
                        "fleet": store.fleet.snapshot(now),
                        "counts": store.counts(),
                        "stats": store.stats.series(None, now),
                    }
                )
            ),
        },
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
