"""A local RabbitMQ cluster of three nodes, for fault tests and the chaos soak.

``with NodeCluster() as cluster: cluster.urls`` starts three
``rabbitmq-server`` nodes of our own (:class:`~execbus.testing.broker.RabbitNode`:
names ``rabbit-a-<id>@localhost``..., their own AMQP and distribution ports
and data directories, one Erlang cookie of their own), joins the second and
third to the first with ``rabbitmqctl join_cluster`` (``stop_app``, ``reset``,
``join_cluster``, ``start_app``), and on exit kills them all and deletes their
directories. The shared broker is never touched.

Faults: :meth:`NodeCluster.kill` (SIGKILL of a node's VM), :meth:`~NodeCluster.stop`
and :meth:`~NodeCluster.start` (a clean stop, and a start with the node's
data: it rejoins by itself). Questions: :meth:`~NodeCluster.leader` (the node
leading a quorum queue), :meth:`~NodeCluster.connection_nodes` (the node each
connection of a given name is on).

Each node runs its Erlang VM with one scheduler (``+S 1:1``) and no busy
waiting: three nodes share a small machine with the processes under test.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from execbus.testing.broker import RabbitNode, available

__all__ = ["LEAN_ERL_ARGS", "NodeCluster", "available"]

# One scheduler and one dirty CPU scheduler, no busy waiting: lean enough for a
# cluster of three next to workers, agents and tests on two cores.
LEAN_ERL_ARGS = "+S 1:1 +SDcpu 1:1 +sbwt none +sbwtdcpu none +sbwtdio none"


class NodeCluster:
    """Three (``size``) RabbitMQ nodes joined into one cluster."""

    def __init__(
        self,
        size: int = 3,
        *,
        start_timeout: float = 120.0,
        erl_args: str = LEAN_ERL_ARGS,
        management: bool = False,
    ) -> None:
        if size < 1:
            raise ValueError("a cluster has at least one node")
        tag = uuid.uuid4().hex[:6]
        self.dir = Path(tempfile.mkdtemp(prefix=f"execbus-cluster-{tag}-"))
        self.dir.chmod(0o755)  # the nodes run as the rabbitmq user: they need to get in
        self.cookie = f"execbus-cluster-{uuid.uuid4().hex}"
        self.nodes = [
            RabbitNode(
                f"rabbit-{letter}-{tag}@localhost",
                start_timeout=start_timeout,
                management=management,
                cookie=self.cookie,
                erl_args=erl_args,
                directory=self.dir / letter,
            )
            for letter in "abcdefghijklmnopqrstuvwxyz"[:size]
        ]
        self.start_timeout = start_timeout

    # -- addresses -----------------------------------------------------------

    @property
    def urls(self) -> str:
        """Every node's AMQP URL, comma-separated (an ``EXECBUS_AMQP_URL``)."""
        return ",".join(node.url for node in self.nodes)

    def node(self, name: str) -> RabbitNode:
        """The node named ``name`` (``rabbit-a-…@localhost``), or the one whose AMQP port it is."""
        for node in self.nodes:
            if name in (node.node, str(node.port)):
                return node
        raise KeyError(f"no node {name!r} in this cluster")

    def node_of_port(self, port: int) -> RabbitNode:
        for node in self.nodes:
            if node.port == port:
                return node
        raise KeyError(f"no node of this cluster listens on port {port}")

    # -- life ----------------------------------------------------------------

    def __enter__(self) -> NodeCluster:
        try:
            self._form()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _boot(self, node: RabbitNode) -> None:
        """Start a node and wait until it runs. First its AMQP port (a cheap probe: each
        ``rabbitmqctl`` is an Erlang VM of its own, competing with the booting node for
        the CPU), then ``rabbitmqctl await_startup`` once."""
        node.launch()
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", node.port), 1),
            ):
                break
            time.sleep(0.2)
        node.await_startup(self.start_timeout)

    def _form(self) -> None:
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            list(pool.map(self._boot, self.nodes))
        seed = self.nodes[0]
        for node in self.nodes[1:]:
            node.ctl("stop_app")
            node.ctl("reset")
            node.ctl("join_cluster", seed.node)
            node.ctl("start_app")  # returns once the app runs
        self.wait_running(len(self.nodes))

    def __exit__(self, *exc: object) -> None:
        """Kill every node (their data is thrown away: no need for a clean stop)."""
        for node in self.nodes:
            node.kill()
        with contextlib.suppress(Exception):
            import shutil

            for _ in range(20):
                shutil.rmtree(self.dir, ignore_errors=True)
                if not self.dir.exists():
                    break
                time.sleep(0.1)

    def kill(self, name: str) -> RabbitNode:
        """SIGKILL the node's VM: its clients and peers see the connections drop, no goodbye."""
        node = self.node(name)
        node.kill()
        return node

    def stop(self, name: str) -> RabbitNode:
        """Stop the node cleanly (``rabbitmqctl stop``); it stays a member of the cluster."""
        node = self.node(name)
        node.stop()
        return node

    def start(self, name: str) -> RabbitNode:
        """Start a stopped or killed node again with its data; it rejoins the cluster."""
        node = self.node(name)
        if not node.running:
            self._boot(node)
        self.wait_running(len(self.nodes))
        return node

    def restart_down(self) -> list[RabbitNode]:
        """Start every node that is down (after a test's faults), together, and wait until
        the cluster runs them all; the nodes started."""
        down = [node for node in self.nodes if not node.running]
        if down:
            with ThreadPoolExecutor(len(down)) as pool:
                list(pool.map(self._boot, down))
        self.wait_running(len(self.nodes))
        return down

    # -- questions -------------------------------------------------------------

    def live_node(self) -> RabbitNode:
        """A running node (to ask the cluster something)."""
        for node in self.nodes:
            if node.running:
                return node
        raise RuntimeError("no node of the cluster is running")

    def ctl(self, *args: str, timeout: float = 60.0) -> str:
        """``rabbitmqctl ARGS`` against a running node."""
        return self.live_node().ctl(*args, timeout=timeout)

    def running_nodes(self) -> list[str]:
        """The names of the nodes the cluster reports running."""
        doc = json.loads(self.ctl("cluster_status", "--formatter", "json"))
        return sorted(doc.get("running_nodes", []))

    def wait_running(self, count: int, timeout: float | None = None) -> None:
        """Wait until ``count`` nodes of the cluster report running."""
        deadline = time.monotonic() + (timeout or self.start_timeout)
        seen: list[str] = []
        while time.monotonic() < deadline:
            with contextlib.suppress(subprocess.SubprocessError, ValueError, RuntimeError):
                seen = self.running_nodes()
                if len(seen) >= count:
                    return
            time.sleep(0.5)
        raise TimeoutError(f"{count} nodes not running in time (running: {seen})")

    def queues(self, *columns: str) -> list[dict[str, Any]]:
        """``rabbitmqctl list_queues name COLUMNS`` as dicts."""
        out = self.ctl("list_queues", "name", *columns, "--formatter", "json")
        rows: list[dict[str, Any]] = json.loads(out or "[]")
        return rows

    def leader(self, queue: str, timeout: float = 30.0) -> str:
        """The node leading quorum queue ``queue`` (waits while it has none)."""
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(subprocess.SubprocessError, ValueError, RuntimeError):
                for row in self.queues("leader"):
                    if row.get("name") == queue and str(row.get("leader", "")).startswith(
                        "rabbit-"
                    ):
                        return str(row["leader"])
            if time.monotonic() > deadline:
                raise TimeoutError(f"no leader for queue {queue!r}")
            time.sleep(0.3)

    def members(self, queue: str) -> list[str]:
        """The nodes holding a replica of quorum queue ``queue``."""
        for row in self.queues("members"):
            if row.get("name") == queue:
                return sorted(str(m) for m in row.get("members") or [])
        raise KeyError(f"no queue {queue!r}")

    def connections(self) -> list[dict[str, Any]]:
        """Every client connection: ``name`` (the client's ``connection_name``) and ``node``
        (known by the listener port the connection came in on: each node has its own)."""
        out = self.ctl("list_connections", "port", "client_properties", "--formatter", "json")
        result = []
        for row in json.loads(out or "[]"):
            props = row.get("client_properties") or []
            if isinstance(props, dict):
                name = props.get("connection_name")
            else:  # [[key, type, value], ...]
                name = next((p[2] for p in props if p and p[0] == "connection_name"), None)
            try:
                node = self.node_of_port(int(row.get("port"))).node
            except (KeyError, TypeError, ValueError):
                node = "?"
            result.append({"name": name, "node": node})
        return result

    def connection_nodes(self, name_prefix: str) -> list[str]:
        """The nodes of the connections whose name starts with ``name_prefix``."""
        return sorted(
            c["node"]
            for c in self.connections()
            if c["name"] and str(c["name"]).startswith(name_prefix)
        )
