"""The command line of ``execbus purge``: check, describe, confirm, delete.

The overview of what a namespace holds and how its names are found is in
:mod:`execbus.cli.purge`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import sys

import aiormq.exceptions

from execbus.broker import broker_reason
from execbus.cli.common import command_parser, execute, fail
from execbus.cli.purge.delete import delete_all, plural
from execbus.cli.purge.discovery import VIA, take_inventory
from execbus.cli.purge.inventory import (
    OP_TIMEOUT,
    Inventory,
    ListingFailed,
    is_lease,
    refresh_counts,
)
from execbus.cli.purge.liveness import announced, live_evidence, live_workers
from execbus.client.connection import connect, redact_url
from execbus.errors import BrokerUnavailable
from execbus.settings import Settings
from execbus.wire.routing import Names

EXIT_REFUSED = 1

DESCRIPTION = """\
Delete every queue and exchange of a namespace: what its workers leave behind
when they stop (agent, pool, holder, dead-letter and unrouted queues, and the
five exchanges), with the messages still in them (pending requests, dead
letters). Refuses while a worker of the namespace is alive (it announces
itself on <ns>.control, holds <ns>.owner.* locks or consumes an agent or
pool queue) unless --force. Asks for confirmation on a terminal; --yes for
scripts.
"""

EPILOG = """\
what it can find (--via):
  management   the management HTTP API (rabbitmq_management plugin) at
               --management-url, with the AMQP URL's user: every queue and
               exchange of the namespace
  rabbitmqctl  `rabbitmqctl list_queues/list_exchanges` on this host's node
               (root or the rabbitmq user; auto tries it only when the broker
               is on this host): every queue and exchange of the namespace
  names        AMQP only (it cannot list names): the five exchanges, <ns>.dead
               and <ns>.unrouted, and the agent/pool/holder queues of the
               agents and pools given with --agent/--pool or announced by live
               workers; other queues of the namespace are not found
  auto         (default) the first of these that works
  A listing counts only if it shows a queue purge has just declared on the
  broker of --amqp-url, so another node or vhost is never taken for it.
what it cannot delete:
  exclusive queues of live connections (<ns>.owner.* locks of running
  workers, <ns>.client.* queues of running clients): the broker deletes them
  when their connection closes
--force with live workers: they lose their queues at once, and recreate
  what they use when they reconnect; stop them first
exit status:
  0        purged (or nothing to purge, or --dry-run)
  1        refused (live workers, not confirmed) or something was not deleted
  2        invalid command-line arguments
  125      the broker or the listing failed
"""


def describe(inventory: Inventory, ns: str, tried: list[str]) -> list[str]:
    why = f"; {'; '.join(tried)}" if tried else ""
    lines = [f"namespace {ns!r} (found by {inventory.via}{why}):"]
    for q in sorted(inventory.queues.values(), key=lambda q: q.name):
        what = "exclusive to a live connection: left to the broker" if q.exclusive else "queue"
        if is_lease(q.name, ns):
            what = "ownership lease"
        messages = "" if q.messages is None else f", {plural(q.messages, 'message')}"
        if is_lease(q.name, ns):
            messages = ""  # its token is no pending work
        lines.append(f"  {q.name}  ({what}{messages})")
    lines += [f"  {name}  (exchange)" for name in inventory.exchanges]
    return lines


def confirm(prompt: str) -> bool:
    try:
        answer = input(prompt)
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")


async def purge_command(args: argparse.Namespace, settings: Settings) -> int:
    ns = settings.namespace
    names = Names(ns)
    if not (args.yes or args.dry_run or sys.stdin.isatty()):
        return fail("not a terminal, so no confirmation: pass --yes", EXIT_REFUSED)
    try:
        connection = await connect(settings.amqp_url, name="execbus-purge")
    except BrokerUnavailable as exc:
        return fail(exc.message)
    try:
        async with asyncio.timeout(args.listen + OP_TIMEOUT):
            workers = await live_workers(connection, names, args.listen)
        # Announcements carry the reachable agents only now and then (a digest
        # otherwise); the owned ones are always there.
        agents = set(args.agent) | announced(workers.values(), "agents", "owned")
        pools = set(args.pool) | announced(workers.values(), "pools")
        try:
            # rabbitmqctl has 60 s per listing; the names probe 3 per agent
            async with asyncio.timeout(150 + 0.1 * len(agents | pools)):
                inventory, tried = await take_inventory(
                    settings.amqp_url,
                    connection,
                    names,
                    via=args.via,
                    management_url=args.management_url,
                    agents=agents,
                    pools=pools,
                )
        except ListingFailed as exc:
            return fail(f"cannot list namespace {ns!r}: {exc}")
        async with asyncio.timeout(OP_TIMEOUT + 0.1 * len(inventory.queues)):
            await refresh_counts(connection, inventory)
        evidence = live_evidence(ns, workers, inventory)
        if evidence and not args.force:
            print(
                f"execbus: namespace {ns!r} is in use ({'; '.join(evidence)}): "
                "stop its workers first, or pass --force",
                file=sys.stderr,
            )
            return EXIT_REFUSED
        if not inventory.complete:
            print(
                f"execbus: listed by known names only: queues of agents and pools not given "
                f"with --agent/--pool may remain in {ns!r}",
                file=sys.stderr,
            )
        deletable = [q for q in inventory.queues.values() if not q.exclusive]
        if not deletable and not inventory.exchanges:
            print(f"namespace {ns!r}: nothing to purge on {redact_url(settings.amqp_url)}")
            return 0
        for line in describe(inventory, ns, tried):
            print(line)
        messages = sum(q.messages or 0 for q in deletable if not is_lease(q.name, ns))
        summary = (
            f"{plural(len(deletable), 'queue')} ({plural(messages, 'message')}) and "
            f"{plural(len(inventory.exchanges), 'exchange')} of namespace {ns!r}"
        )
        if evidence:
            print(
                f"execbus: --force: deleting while in use ({'; '.join(evidence)})", file=sys.stderr
            )
        if args.dry_run:
            print(f"would delete {summary} (--dry-run)")
            return 0
        if not args.yes and not await asyncio.to_thread(confirm, f"Delete {summary}? [y/N] "):
            print("nothing deleted")
            return EXIT_REFUSED
        failures = await delete_all(connection, inventory)
        for failure in failures:
            print(f"execbus: not deleted: {failure}", file=sys.stderr)
        done = len(deletable) + len(inventory.exchanges) - len(failures)
        print(f"deleted {done} of {len(deletable) + len(inventory.exchanges)}: {summary}")
        return EXIT_REFUSED if failures else 0
    except TimeoutError:
        return fail("the broker did not answer in time")
    except aiormq.exceptions.ChannelAccessRefused:
        return fail(
            f"access refused: purge needs the workers' permissions on namespace {ns!r} "
            f"(configure, write and read on '^{re.escape(ns)}\\..*')"
        )
    except aiormq.exceptions.AMQPError as exc:
        return fail(f"broker error: {broker_reason(exc)}")
    finally:
        with contextlib.suppress(Exception):
            await connection.close()


def build_purge_parser() -> argparse.ArgumentParser:
    p = command_parser("purge", DESCRIPTION, EPILOG)
    p.add_argument("--namespace", metavar="NS", help="the namespace to delete (required)")
    p.add_argument("--amqp-url", metavar="URL", help="RabbitMQ URL (env EXECBUS_AMQP_URL)")
    p.add_argument("--force", action="store_true", help="purge even while workers are alive")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    p.add_argument("--dry-run", action="store_true", help="only list what would be deleted")
    p.add_argument(
        "--via",
        choices=VIA,
        default="auto",
        help="how to find the namespace's queues and exchanges (default: auto; see below)",
    )
    p.add_argument(
        "--management-url",
        metavar="URL",
        help="management API (default: http://<broker host>:15672/, https and 15671 for amqps)",
    )
    p.add_argument(
        "--agent",
        action="append",
        default=[],
        metavar="NAME",
        help="--via names: also the queues of this agent (repeatable)",
    )
    p.add_argument(
        "--pool",
        action="append",
        default=[],
        metavar="NAME",
        help="--via names: also the queue of this pool (repeatable)",
    )
    p.add_argument(
        "--listen",
        type=float,
        default=2.5,
        metavar="SECONDS",
        help="how long to listen for worker announcements (default 2.5)",
    )
    return p


def main(argv: list[str]) -> int:
    """``execbus purge``."""
    parser = build_purge_parser()
    args = parser.parse_args(argv)
    if not args.namespace:
        parser.error("--namespace is required (it never defaults to EXECBUS_NAMESPACE)")
    if args.namespace == "amq" or args.namespace.startswith("amq."):
        parser.error("the amq. names belong to the broker")
    if args.listen < 0:
        parser.error("--listen must be 0 or more")
    return execute(purge_command, args)
