"""``execbus purge --namespace NS``: delete every queue and exchange of a namespace.

A namespace's workers declare its exchanges (``<ns>.requests``, ``.events``,
``.dead``, ``.unrouted``, ``.control``), its queues (``<ns>.dead``,
``.unrouted``, ``.agent.<a>``, ``.pool.<p>``) and, per agent, an ownership
lease (``<ns>.lease.<a>``; older workers used ``<ns>.holder.<a>``); none of
them goes away when the workers stop. Exclusive queues (clients'
``<ns>.client.*`` queues, older workers' ``<ns>.owner.<a>`` locks) belong to a
live connection: the broker deletes them when it closes, and nobody else can.

The names are found by the first of these that works (``--via``):

* ``management``: the management HTTP API (``/api/queues``, ``/api/exchanges``
  of the vhost) with the AMQP URL's credentials: everything of the namespace;
* ``rabbitmqctl``: ``list_queues`` / ``list_exchanges`` on this host's node
  (tried only when the broker is on this host): everything of the namespace;
* ``names``: AMQP alone, which cannot list: the five exchanges and two
  queues every namespace has, plus the agent, pool and lease queues of the
  agents and pools named with ``--agent`` / ``--pool`` or announced by live
  workers. Other queues of the namespace may be left; the output says so.

A listing counts only if it shows a queue purge has just declared through its
AMQP connection, so another node or vhost is never taken for ours.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import ipaddress
import json
import re
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from typing import Any

import aio_pika
import aiormq.exceptions
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage
from yarl import URL

from execbus.cli.common import Parser, execute, fail
from execbus.client.connection import connect, redact_url
from execbus.errors import BrokerUnavailable
from execbus.settings import Settings
from execbus.wire.routing import Names

EXIT_REFUSED = 1
VIA = ("auto", "management", "rabbitmqctl", "names")
OP_TIMEOUT = 15.0
FIXED_EXCHANGES = ("requests", "events", "dead", "unrouted", "control")
FIXED_QUEUES = ("dead", "unrouted")

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


@dataclasses.dataclass
class QueueInfo:
    name: str
    messages: int | None = None
    consumers: int | None = None
    exclusive: bool = False


@dataclasses.dataclass
class Inventory:
    via: str
    queues: dict[str, QueueInfo]
    exchanges: list[str]
    complete: bool  # every name of the namespace (a listing), not only known names


class ListingFailed(Exception):
    """A listing method is not available; the message says why, in one line."""


# -- liveness ---------------------------------------------------------------


async def live_workers(
    connection: AbstractConnection, names: Names, listen: float
) -> dict[str, dict[str, Any]]:
    """worker id -> its last announcement on ``<ns>.control`` (stopping ones too)."""
    seen: dict[str, dict[str, Any]] = {}
    channel = await connection.channel(publisher_confirms=False)
    try:
        try:
            exchange = await channel.get_exchange(names.control_exchange, ensure=True)
        except aio_pika.exceptions.ChannelNotFoundEntity:
            return seen  # no control exchange: no worker of this namespace runs
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(exchange, "worker.#")

        async def on_message(message: AbstractIncomingMessage) -> None:
            with contextlib.suppress(ValueError, TypeError, KeyError):
                doc = json.loads(message.body)
                if isinstance(doc, dict) and doc.get("worker_id"):
                    seen[str(doc["worker_id"])] = doc

        await queue.consume(on_message, no_ack=True)
        await asyncio.sleep(listen)
    finally:
        with contextlib.suppress(Exception):
            await channel.close()
    return seen


def _strings(value: object) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []


# -- listing ----------------------------------------------------------------


def vhost_of(amqp_url: str) -> str:
    path = URL(amqp_url).path
    return path[1:] if len(path) > 1 else "/"


def default_management_url(amqp_url: str) -> str:
    url = URL(amqp_url)
    if url.scheme == "amqps":
        return f"https://{url.host}:15671/"
    return f"http://{url.host}:15672/"


def is_local(amqp_url: str) -> bool:
    host = URL(amqp_url).host or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host in (socket.gethostname(), socket.getfqdn())


def _in_namespace(name: str, ns: str) -> bool:
    return name.startswith(ns + ".")


def _http_get(url: str, user: str, password: str) -> Any:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    request = urllib.request.Request(url, headers={"Authorization": f"Basic {token}"})
    with urllib.request.urlopen(request, timeout=OP_TIMEOUT) as response:
        return json.loads(response.read())


async def list_via_management(
    management_url: str, amqp_url: str, ns: str, marker: str
) -> Inventory:
    amqp = URL(amqp_url)
    user, password = amqp.user or "guest", amqp.password or "guest"
    base = management_url.rstrip("/")
    vhost = urllib.parse.quote(vhost_of(amqp_url), safe="")
    try:
        queues = await asyncio.to_thread(
            _http_get,
            f"{base}/api/queues/{vhost}?columns=name,messages,consumers,exclusive,owner_pid_details",
            user,
            password,
        )
        exchanges = await asyncio.to_thread(
            _http_get, f"{base}/api/exchanges/{vhost}?columns=name", user, password
        )
    except urllib.error.HTTPError as exc:
        raise ListingFailed(f"management API at {base}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise ListingFailed(f"management API at {base}: {reason}") from None
    if not isinstance(queues, list) or not isinstance(exchanges, list):
        raise ListingFailed(f"management API at {base}: unexpected answer")
    _check_marker(marker, (str(q.get("name")) for q in queues), f"the management API at {base}")
    found = {}
    for q in queues:
        name = str(q.get("name", ""))
        if _in_namespace(name, ns):
            exclusive = bool(q.get("exclusive")) or bool(q.get("owner_pid_details"))
            found[name] = QueueInfo(name, q.get("messages"), q.get("consumers"), exclusive)
    names = sorted(str(e["name"]) for e in exchanges if _in_namespace(str(e.get("name")), ns))
    return Inventory("management", found, names, complete=True)


def _check_marker(marker: str, names: Iterable[str], source: str) -> None:
    """The listing is of our broker and vhost: it shows the queue we just declared there."""
    if marker not in set(names):
        raise ListingFailed(f"{source} lists another broker or vhost")


async def _marker(connection: AbstractConnection) -> tuple[str, AbstractChannel]:
    """A server-named exclusive queue (outside the namespace) to recognise our broker by."""
    channel = await connection.channel(publisher_confirms=False)
    queue = await channel.declare_queue(exclusive=True, auto_delete=True)
    return queue.name, channel


def _rabbitmqctl(*args: str) -> list[dict[str, Any]]:
    binary = shutil.which("rabbitmqctl")
    if binary is None:
        raise ListingFailed("rabbitmqctl is not installed here")
    try:
        result = subprocess.run(
            [binary, "-q", *args, "--formatter", "json"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ListingFailed(f"rabbitmqctl: {exc}") from None
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines()
        raise ListingFailed(f"rabbitmqctl: {lines[0] if lines else f'exit {result.returncode}'}")
    try:
        rows = json.loads(result.stdout or "[]")
    except ValueError:
        raise ListingFailed("rabbitmqctl: unreadable output") from None
    return [r for r in rows if isinstance(r, dict)]


async def list_via_rabbitmqctl(amqp_url: str, ns: str, marker: str) -> Inventory:
    vhost = vhost_of(amqp_url)
    rows = await asyncio.to_thread(
        _rabbitmqctl, "list_queues", "-p", vhost, "name", "messages", "consumers", "exclusive"
    )
    exchanges = await asyncio.to_thread(_rabbitmqctl, "list_exchanges", "-p", vhost, "name")
    _check_marker(marker, (str(r.get("name")) for r in rows), "rabbitmqctl (this host's node)")
    found = {}
    for row in rows:
        name = str(row.get("name", ""))
        if _in_namespace(name, ns):
            found[name] = QueueInfo(
                name, row.get("messages"), row.get("consumers"), row.get("exclusive") is True
            )
    names = sorted(str(e["name"]) for e in exchanges if _in_namespace(str(e.get("name")), ns))
    return Inventory("rabbitmqctl", found, names, complete=True)


async def _probe_queue(connection: AbstractConnection, name: str) -> QueueInfo | None:
    channel = await connection.channel(publisher_confirms=False)
    try:
        queue = await channel.declare_queue(name, passive=True)
        result = queue.declaration_result
        return QueueInfo(name, result.message_count, result.consumer_count)
    except aio_pika.exceptions.ChannelNotFoundEntity:
        return None
    except aiormq.exceptions.ChannelLockedResource:
        return QueueInfo(name, exclusive=True)  # exclusive to another, live, connection
    finally:
        with contextlib.suppress(Exception):
            await channel.close()


async def _probe_exchange(connection: AbstractConnection, name: str) -> bool:
    channel = await connection.channel(publisher_confirms=False)
    try:
        await channel.get_exchange(name, ensure=True)
        return True
    except aio_pika.exceptions.ChannelNotFoundEntity:
        return False
    finally:
        with contextlib.suppress(Exception):
            await channel.close()


async def list_via_names(
    connection: AbstractConnection, names: Names, agents: set[str], pools: set[str]
) -> Inventory:
    ns = names.ns
    candidates = [f"{ns}.{q}" for q in FIXED_QUEUES]
    for agent in sorted(agents):
        candidates += [
            names.agent_queue(agent),
            names.lease_queue(agent),
            f"{ns}.holder.{agent}",
            f"{ns}.owner.{agent}",
        ]
    candidates += [names.pool_queue(pool) for pool in sorted(pools)]
    queues = {}
    for name in candidates:
        info = await _probe_queue(connection, name)
        if info is not None:
            queues[name] = info
    exchanges = [
        f"{ns}.{suffix}"
        for suffix in FIXED_EXCHANGES
        if await _probe_exchange(connection, f"{ns}.{suffix}")
    ]
    return Inventory("names", queues, sorted(exchanges), complete=False)


async def take_inventory(
    amqp_url: str,
    connection: AbstractConnection,
    names: Names,
    *,
    via: str = "auto",
    management_url: str | None = None,
    agents: set[str] | frozenset[str] = frozenset(),
    pools: set[str] | frozenset[str] = frozenset(),
) -> tuple[Inventory, list[str]]:
    """The inventory by ``via``, and why the methods tried before it failed."""
    ns = names.ns
    tried: list[str] = []
    order = [via] if via != "auto" else ["management", "rabbitmqctl", "names"]
    marker, marker_channel = await _marker(connection)
    try:
        for method in order:
            try:
                if method == "management":
                    url = management_url or default_management_url(amqp_url)
                    return await list_via_management(url, amqp_url, ns, marker), tried
                if method == "rabbitmqctl":
                    if via == "auto" and not is_local(amqp_url):
                        raise ListingFailed("the broker is not on this host")
                    return await list_via_rabbitmqctl(amqp_url, ns, marker), tried
                return await list_via_names(connection, names, set(agents), set(pools)), tried
            except ListingFailed as exc:
                if via != "auto":
                    raise
                tried.append(str(exc))
    finally:
        with contextlib.suppress(Exception):
            await marker_channel.queue_delete(marker)
        with contextlib.suppress(Exception):
            await marker_channel.close()
    raise AssertionError("unreachable: names never fails")


# -- evidence of live workers --------------------------------------------------


async def refresh_counts(connection: AbstractConnection, inventory: Inventory) -> None:
    """Ask each listed queue for its consumers and messages: listings lag.

    rabbitmqctl and the management API report a quorum queue's consumers and
    messages from statistics refreshed every few seconds, so a worker that has
    just stopped still looks alive there; queue.declare (passive) answers from
    the queue itself.
    """
    if inventory.via == "names":
        return  # already probed that way
    for name, info in list(inventory.queues.items()):
        if info.exclusive:
            continue
        fresh = await _probe_queue(connection, name)
        if fresh is None:
            del inventory.queues[name]
        else:
            inventory.queues[name] = fresh


def live_evidence(ns: str, workers: dict[str, dict[str, Any]], inventory: Inventory) -> list[str]:
    """Why the namespace looks alive (empty: nothing runs)."""
    evidence = []
    if workers:
        ids = ", ".join(sorted(workers))
        stopping = [w for w, doc in workers.items() if doc.get("stopping")]
        note = f", {len(stopping)} stopping" if stopping else ""
        evidence.append(f"{len(workers)} worker(s) announcing on {ns}.control{note}: {ids}")
    locks = sorted(q for q in inventory.queues if q.startswith(f"{ns}.owner."))
    if locks:
        evidence.append(f"{len(locks)} ownership lock(s) held: {', '.join(locks)}")
    consumed = sorted(
        q.name
        for q in inventory.queues.values()
        if (q.consumers or 0) > 0
        and q.name.startswith((f"{ns}.agent.", f"{ns}.pool.", f"{ns}.lease.", f"{ns}.holder."))
    )
    if consumed:
        evidence.append(f"queues with consumers: {', '.join(consumed)}")
    return evidence


# -- deleting ---------------------------------------------------------------


async def _delete(connection: AbstractConnection, kind: str, name: str) -> str | None:
    """Delete a queue or exchange; ``None`` if it is gone, else why not."""
    channel = await connection.channel(publisher_confirms=False)
    try:
        if kind == "queue":
            await channel.queue_delete(name)
        else:
            await channel.exchange_delete(name)
        return None
    except aio_pika.exceptions.ChannelNotFoundEntity:
        return None  # already gone
    except aiormq.exceptions.ChannelLockedResource:
        return "exclusive to a live connection"
    except aiormq.exceptions.ChannelAccessRefused:
        return "access refused (the user needs configure permission on it)"
    except aiormq.exceptions.AMQPError as exc:
        return str(exc) or type(exc).__name__
    finally:
        with contextlib.suppress(Exception):
            await channel.close()


async def delete_all(connection: AbstractConnection, inventory: Inventory) -> list[str]:
    """Delete the inventory's queues (not the exclusive ones), then its exchanges.

    Returns what could not be deleted, and why.
    """
    deletable = sorted(q.name for q in inventory.queues.values() if not q.exclusive)
    failures = []
    async with asyncio.timeout(OP_TIMEOUT + 0.5 * (len(deletable) + len(inventory.exchanges))):
        for name in deletable:
            if (why := await _delete(connection, "queue", name)) is not None:
                failures.append(f"queue {name}: {why}")
        for name in inventory.exchanges:
            if (why := await _delete(connection, "exchange", name)) is not None:
                failures.append(f"exchange {name}: {why}")
    return failures


@dataclasses.dataclass
class PurgeReport:
    via: str
    queues: list[str]  # deleted, or attempted (see failures)
    exchanges: list[str]
    exclusive: list[str]  # left to the broker (their connection is still open)
    failures: list[str]
    complete: bool  # False: listed by known names only

    def summary(self) -> str:
        text = (
            f"purged namespace: {_plural(len(self.queues), 'queue')} and "
            f"{_plural(len(self.exchanges), 'exchange')} (found by {self.via})"
        )
        if self.exclusive:
            text += f"; left to the broker: {', '.join(self.exclusive)}"
        if self.failures:
            text += f"; NOT deleted: {'; '.join(self.failures)}"
        return text


async def purge_namespace(
    amqp_url: str,
    namespace: str,
    *,
    agents: Iterable[str] = (),
    pools: Iterable[str] = (),
    via: str = "auto",
    management_url: str | None = None,
) -> PurgeReport:
    """Delete every queue and exchange of ``namespace``, for scripts that stopped their own
    workers (benchmarks, tests): no liveness check, no confirmation.

    Raises :class:`ListingFailed` (``via`` other than auto) and the broker's errors.
    """
    names = Names(namespace)
    connection = await aio_pika.connect(amqp_url, timeout=OP_TIMEOUT)
    try:
        inventory, _ = await take_inventory(
            amqp_url,
            connection,
            names,
            via=via,
            management_url=management_url,
            agents=set(agents),
            pools=set(pools),
        )
        failures = await delete_all(connection, inventory)
    finally:
        with contextlib.suppress(Exception):
            await connection.close()
    queues = sorted(q.name for q in inventory.queues.values() if not q.exclusive)
    exclusive = sorted(q.name for q in inventory.queues.values() if q.exclusive)
    return PurgeReport(
        inventory.via, queues, inventory.exchanges, exclusive, failures, inventory.complete
    )


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _is_lease(name: str, ns: str) -> bool:
    return name.startswith(f"{ns}.lease.")


def describe(inventory: Inventory, ns: str, tried: list[str]) -> list[str]:
    why = f"; {'; '.join(tried)}" if tried else ""
    lines = [f"namespace {ns!r} (found by {inventory.via}{why}):"]
    for q in sorted(inventory.queues.values(), key=lambda q: q.name):
        what = "exclusive to a live connection: left to the broker" if q.exclusive else "queue"
        if _is_lease(q.name, ns):
            what = "ownership lease"
        messages = "" if q.messages is None else f", {_plural(q.messages, 'message')}"
        if _is_lease(q.name, ns):
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
        announced = list(workers.values())
        # Announcements carry the reachable agents only now and then (a digest
        # otherwise); the owned ones are always there.
        agents = set(args.agent) | {
            a for w in announced for key in ("agents", "owned") for a in _strings(w.get(key))
        }
        pools = set(args.pool) | {p for w in announced for p in _strings(w.get("pools"))}
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
        messages = sum(q.messages or 0 for q in deletable if not _is_lease(q.name, ns))
        summary = (
            f"{_plural(len(deletable), 'queue')} ({_plural(messages, 'message')}) and "
            f"{_plural(len(inventory.exchanges), 'exchange')} of namespace {ns!r}"
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
        return fail(f"broker error: {exc!r}")
    finally:
        with contextlib.suppress(Exception):
            await connection.close()


def build_purge_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="execbus purge",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
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
