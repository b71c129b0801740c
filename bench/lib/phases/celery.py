"""The Celery baseline (``../shared/bench/celery_peer.py``), in the same run.

It runs right after our e2e phases, with our worker and agent idle, so that
both systems meet the same host (its speed drifts over a long run); the peer
leaves its durable task queue behind, which is deleted here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import aio_pika
from bench.lib import say
from bench.lib.context import Ctx
from bench.lib.sections import CelerySection


def list_queues(prefix: str) -> list[str]:
    """Queue names starting with ``prefix`` (``rabbitmqctl``; empty if it fails)."""
    if shutil.which("rabbitmqctl") is None:
        return []
    for _ in range(3):
        try:
            proc = subprocess.run(
                ["rabbitmqctl", "-q", "list_queues", "name"],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            say(f"rabbitmqctl list_queues failed: {exc}")
            continue
        if proc.returncode == 0:
            return [q for q in proc.stdout.split() if q.startswith(prefix)]
        say(f"rabbitmqctl list_queues failed: {proc.stderr.strip()[-200:]}")
    return []


async def delete_queues(amqp_url: str, queues: list[str]) -> None:
    connection = await aio_pika.connect(amqp_url, timeout=10)
    try:
        for name in queues:
            channel = await connection.channel()
            try:
                await channel.queue_delete(name)
            except Exception as exc:
                say(f"cannot delete queue {name}: {exc!r}")
            finally:
                with contextlib.suppress(Exception):
                    await channel.close()
    finally:
        await connection.close()


def _peer(script: Path, amqp_url: str, n: int, serial: int) -> dict[str, Any]:
    argv = [sys.executable, str(script), "--amqp-url", amqp_url]
    argv += ["--n", str(n), "--serial", str(serial)]
    say(f"celery baseline: {' '.join(argv[1:])}")
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    except subprocess.TimeoutExpired:
        return {"error": "the celery baseline timed out after 600 s"}
    for line in reversed(proc.stdout.splitlines()):
        with contextlib.suppress(ValueError):
            result = json.loads(line)
            if isinstance(result, dict):
                if proc.returncode != 0 and "error" not in result:
                    result["error"] = f"exit code {proc.returncode}"
                return result
    return {"error": f"no JSON from the celery baseline (exit {proc.returncode})"}


async def celery(ctx: Ctx) -> CelerySection | None:
    if not ctx.args.with_celery:
        return None
    script: Path = ctx.args.celery_script
    when = "after the e2e phases; execbus worker and agent idle"
    if not await asyncio.to_thread(script.exists):
        return CelerySection(error=f"{script} not found", when=when)
    before = set(await asyncio.to_thread(list_queues, "celery-peer-"))
    try:
        raw = await asyncio.to_thread(
            _peer, script, ctx.amqp_url, ctx.plan.celery_n, ctx.plan.celery_serial
        )
    finally:
        leftover = sorted(set(await asyncio.to_thread(list_queues, "celery-peer-")) - before)
        if leftover:
            await delete_queues(ctx.amqp_url, leftover)
            say(f"deleted the baseline's queue(s) {', '.join(leftover)}")
    fields = set(CelerySection.__dataclass_fields__) - {"when"}
    section = CelerySection(**{k: v for k, v in raw.items() if k in fields}, when=when)
    if section.error:
        say(f"celery baseline failed: {section.error}")
    else:
        say(f"celery: {section.per_s}/s, p50 {section.p50_ms} ms")
    return section
