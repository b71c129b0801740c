"""Run one command through execbus with plain aio-pika: the raw wire contract, no execbus SDK.

    python docs/examples/raw_amqp.py --agent local -- sh -c 'echo hi; exit 3'

It prints one JSON object (the exec id, the reply, the exit or failure event)
and exits with the command's exit code (125 when execbus itself refused).
``stdout``/``stderr`` in it are the decoded text (undecodable bytes replaced);
``stdout_base64``/``stderr_base64`` are the exact bytes, as the wire carried them.
See docs/integration.md for every step; this file is tested by
tests/system/ops/test_raw_amqp_example.py against a real worker.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
import uuid
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

# Errors that come with an exec.failed event (the exec was registered, then failed).
FAILED_EVENT_CODES = {
    "command_not_found",
    "command_not_executable",
    "unknown_user",
    "invalid_working_dir",
    "container_not_found",
    "container_not_running",
    "start_failed",
    "agent_unavailable",
    "agent_auth_failed",
    "agent_lost",
}


async def run(url: str, ns: str, agent: str, cmd: list[str], timeout: float) -> dict[str, Any]:
    connection = await aio_pika.connect(url)
    async with connection:
        # Publisher confirms: a request is not sent until the broker says so.
        channel = await connection.channel(publisher_confirms=True)

        # 1. Subscribe to the exec's final events *before* publishing the request.
        #    The workers declared <ns>.events: look it up passively (a caller needs
        #    no configure permission on the shared exchanges).
        events = await channel.declare_exchange(f"{ns}.events", passive=True)
        event_queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        for kind in ("exited", "failed"):
            await event_queue.bind(events, routing_key=f"exec.{agent}.*.{kind}")

        # 2. A private queue for the RPC reply.
        reply_queue = await channel.declare_queue(exclusive=True, auto_delete=True)

        exec_id = uuid.uuid4().hex  # our idempotency key: republishing never runs twice
        correlation_id = uuid.uuid4().hex
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[dict[str, Any]] = loop.create_future()
        final_event: asyncio.Future[dict[str, Any]] = loop.create_future()
        seen_event_ids: set[str] = set()

        async def on_reply(message: AbstractIncomingMessage) -> None:
            if message.correlation_id == correlation_id and not reply.done():
                reply.set_result(json.loads(message.body))

        async def on_event(message: AbstractIncomingMessage) -> None:
            event = json.loads(message.body)
            if event["event_id"] in seen_event_ids:  # at-least-once: drop duplicates
                return
            seen_event_ids.add(event["event_id"])
            if event["exec_id"] == exec_id and not final_event.done():
                final_event.set_result(event)

        await reply_queue.consume(on_reply, no_ack=True)
        await event_queue.consume(on_event, no_ack=True)

        # 3. Publish the request. The workers declared <ns>.requests (with an
        #    alternate exchange); look it up passively instead of redeclaring it.
        requests = await channel.declare_exchange(f"{ns}.requests", passive=True)
        body = {
            "v": 1,
            "type": "exec.run",
            "exec_id": exec_id,
            "config": {"cmd": cmd, "env": ["GREETING=hello"], "timeout": timeout},
        }
        await requests.publish(
            aio_pika.Message(
                json.dumps(body).encode(),
                content_type="application/json",
                correlation_id=correlation_id,
                message_id=uuid.uuid4().hex,
                reply_to=reply_queue.name,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            ),
            routing_key=f"agent.{agent}",
            timeout=10,
        )

        # 4. The reply of a non-detached exec.run arrives when the command has ended.
        answer = await asyncio.wait_for(reply, timeout + 30)
        error = answer.get("error") or {}
        event = None
        if answer["ok"] or error.get("code") in FAILED_EVENT_CODES:
            event = await asyncio.wait_for(final_event, 10)

    summary: dict[str, Any] = {"exec_id": exec_id, "ok": answer["ok"], "reply": answer}
    if answer["ok"]:
        # Fields whose value is null are left out of every message: use defaults.
        exit_info = answer["result"]["exit"]
        summary["exit_code"] = exit_info["exit_code"]
        summary["signal"] = exit_info.get("signal")  # e.g. "SIGKILL" (exit_code 137)
        for stream in ("stdout", "stderr"):
            # Bytes travel as standard base64 (RFC 4648 section 4, padded): decode
            # strictly, so a wrong alphabet is an error rather than silently lost bytes.
            text = exit_info.get(stream, "")
            data = base64.b64decode(text, validate=True)
            summary[stream] = data.decode(errors="replace")
            summary[f"{stream}_base64"] = text
            summary[f"{stream}_dropped"] = exit_info.get(f"{stream}_dropped", 0)
    else:
        summary["error"] = error
        summary["exit_code"] = error.get("exit_code") or 125
    if event is not None:
        summary["event"] = {"type": event["type"], "event_id": event["event_id"]}
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--url", default=os.environ.get("EXECBUS_AMQP_URL", "amqp://guest:guest@localhost:5672/")
    )
    parser.add_argument("--namespace", default=os.environ.get("EXECBUS_NAMESPACE", "execbus"))
    parser.add_argument("--agent", default="local")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds the command may run")
    parser.add_argument("cmd", nargs="+")
    args = parser.parse_args()
    summary = asyncio.run(run(args.url, args.namespace, args.agent, args.cmd, args.timeout))
    print(json.dumps(summary, indent=2))
    return int(summary["exit_code"])


if __name__ == "__main__":
    sys.exit(main())
