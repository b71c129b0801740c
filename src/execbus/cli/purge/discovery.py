"""Finding a namespace's names (``--via``): the management API, rabbitmqctl, or known names.

A listing counts only if it shows the *marker*, a server-named queue purge has
just declared through its own AMQP connection: so another node or vhost is
never taken for ours.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import json
import shutil
import socket
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from typing import Any

from aio_pika.abc import AbstractChannel, AbstractConnection
from yarl import URL

from execbus.cli.purge.inventory import (
    OP_TIMEOUT,
    Inventory,
    ListingFailed,
    QueueInfo,
    in_namespace,
    list_via_names,
)
from execbus.wire.routing import Names

VIA = ("auto", "management", "rabbitmqctl", "names")


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


async def _marker(connection: AbstractConnection) -> tuple[str, AbstractChannel]:
    """A server-named exclusive queue (outside the namespace) to recognise our broker by."""
    channel = await connection.channel(publisher_confirms=False)
    queue = await channel.declare_queue(exclusive=True, auto_delete=True)
    return queue.name, channel


def _check_marker(marker: str, names: Iterable[str], source: str) -> None:
    """The listing is of our broker and vhost: it shows the queue we just declared there."""
    if marker not in set(names):
        raise ListingFailed(f"{source} lists another broker or vhost")


def _exchanges_of(rows: list[Any], ns: str) -> list[str]:
    return sorted(str(e["name"]) for e in rows if in_namespace(str(e.get("name")), ns))


# -- the management API ------------------------------------------------------


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
        if in_namespace(name, ns):
            exclusive = bool(q.get("exclusive")) or bool(q.get("owner_pid_details"))
            found[name] = QueueInfo(name, q.get("messages"), q.get("consumers"), exclusive)
    return Inventory("management", found, _exchanges_of(exchanges, ns), complete=True)


def _http_get(url: str, user: str, password: str) -> Any:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    request = urllib.request.Request(url, headers={"Authorization": f"Basic {token}"})
    with urllib.request.urlopen(request, timeout=OP_TIMEOUT) as response:
        return json.loads(response.read())


# -- rabbitmqctl ---------------------------------------------------------------


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
        if in_namespace(name, ns):
            found[name] = QueueInfo(
                name, row.get("messages"), row.get("consumers"), row.get("exclusive") is True
            )
    return Inventory("rabbitmqctl", found, _exchanges_of(exchanges, ns), complete=True)


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
