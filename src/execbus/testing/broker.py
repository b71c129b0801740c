"""Private RabbitMQ nodes for tests that restart or kill the broker (the shared one is left alone).

:class:`RabbitNode` runs the machine's ``rabbitmq-server`` as a node of our
own (its own name, AMQP, distribution and management ports, data and log
directories), started detached and driven with ``rabbitmqctl``: start, stop,
SIGKILL, start again with its data. :class:`PrivateBroker` is one such node
for a test (``with PrivateBroker() as broker: broker.url``), so a fault test
can ``stop_app`` / ``start_app`` it while other tests and tools keep using the
main broker; :mod:`execbus.testing.cluster_nodes` joins three into a cluster.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from execbus.testing.processes import free_port


def available() -> bool:
    """True when ``rabbitmq-server`` and ``rabbitmqctl`` are installed and we are root."""
    return (
        shutil.which("rabbitmq-server") is not None
        and shutil.which("rabbitmqctl") is not None
        and os.geteuid() == 0
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    # A zombie is dead for our purposes (only its parent, `su`, may reap it).
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True


class RabbitNode:
    """One ``rabbitmq-server`` node of our own; its files live in ``dir`` until :meth:`remove`.

    The ports and the name are fixed for the node's life, so it comes back
    with the same URL after :meth:`stop` or :meth:`kill` and :meth:`start`.
    ``cookie`` gives the node (and its ``rabbitmqctl``) an Erlang cookie of its
    own instead of the system's; ``erl_args`` are added to the Erlang VM's
    arguments (``+S 1:1``: one scheduler, for clusters on small machines).
    """

    def __init__(
        self,
        name: str | None = None,
        *,
        start_timeout: float = 90.0,
        management: bool = False,
        cookie: str | None = None,
        erl_args: str = "",
        directory: Path | None = None,
    ) -> None:
        self.port = free_port()
        self.dist_port = free_port()
        # With management=True the node also serves the management HTTP API on 127.0.0.1.
        self.management_port = free_port() if management else None
        self.node = name or f"execbus{uuid.uuid4().hex[:8]}@localhost"
        self.dir = directory or Path(tempfile.mkdtemp(prefix="execbus-rmq-"))
        self.start_timeout = start_timeout
        self.cookie = cookie
        self.erl_args = erl_args
        self._written = False

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    @property
    def management_url(self) -> str:
        assert self.management_port is not None, "a node started with management=True"
        return f"http://127.0.0.1:{self.management_port}/"

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            RABBITMQ_CONF_ENV_FILE="/dev/null",
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_CONFIG_FILE=str(self.dir / "rabbitmq"),
            RABBITMQ_MNESIA_BASE=str(self.dir / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.dir / "log"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.dir / "enabled_plugins"),
            ERL_EPMD_ADDRESS="127.0.0.1",
        )
        if self.cookie is not None:
            env["RABBITMQ_ERLANG_COOKIE"] = self.cookie  # the server's and rabbitmqctl's
        if self.erl_args:
            env["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"] = self.erl_args
        return env

    def ctl(self, *args: str, timeout: float = 90.0) -> str:
        """Run ``rabbitmqctl -n <node> ARGS`` (raises on failure); its output."""
        return self.tool("rabbitmqctl", *args, timeout=timeout)

    def tool(self, command: str, *args: str, timeout: float = 90.0) -> str:
        """Run a RabbitMQ CLI tool (``rabbitmqctl``, ``rabbitmq-queues``...) against this node."""
        result = subprocess.run(
            [command, "-q", "-n", self.node, *args],
            check=True,
            timeout=timeout,
            env=self._env(),
            capture_output=True,
            text=True,
        )
        return result.stdout

    def _write_files(self) -> None:
        if self._written:
            return
        conf = f"listeners.tcp.local = 127.0.0.1:{self.port}\nloopback_users = none\n"
        plugins = "[]."
        if self.management_port is not None:
            conf += f"management.tcp.ip = 127.0.0.1\nmanagement.tcp.port = {self.management_port}\n"
            # Counters fresh every second (the default is 5 s): benchmarks read them.
            conf += "collect_statistics_interval = 1000\n"
            plugins = "[rabbitmq_management]."
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "rabbitmq.conf").write_text(conf)
        (self.dir / "enabled_plugins").write_text(plugins + "\n")
        with contextlib.suppress(KeyError, OSError):
            import pwd

            user = pwd.getpwnam("rabbitmq")
            for path in [self.dir, *self.dir.iterdir()]:
                os.chown(path, user.pw_uid, user.pw_gid)
        self._written = True

    def launch(self) -> None:
        """Start the node's VM (``rabbitmq-server -detached``) without waiting for it.

        As root, Debian's ``rabbitmq-server`` wrapper switches to the ``rabbitmq``
        user with ``su``, whose PAM session resets the open-files limit to 1,024:
        a node with a few hundred quorum queues then runs out of file handles and
        stops accepting connections. So we switch users ourselves and raise the
        limit up to the hard one first (the way the systemd unit's LimitNOFILE does).
        """
        self._write_files()
        server = "/usr/lib/rabbitmq/bin/rabbitmq-server"
        if os.geteuid() == 0 and Path(server).exists():
            raise_limit = 'ulimit -n "$(ulimit -H -n)" 2>/dev/null'
            script = f"{raise_limit}; cd /var/lib/rabbitmq; exec {server} -detached"
            command = ["su", "rabbitmq", "-s", "/bin/sh", "-c", script]
        else:
            command = ["rabbitmq-server", "-detached"]
        subprocess.run(command, env=self._env(), check=True, timeout=30)

    def await_startup(self, timeout: float | None = None) -> None:
        """Wait until the node runs its app (:class:`TimeoutError` after ``timeout``)."""
        deadline = time.monotonic() + (timeout or self.start_timeout)
        while True:
            try:
                self.ctl("await_startup", "--timeout", "10", timeout=20)
                return
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"RabbitMQ node {self.node} did not start; its log ends with:\n"
                        + self.log_tail()
                    ) from None
                time.sleep(0.5)

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the node's log (for error messages)."""
        with contextlib.suppress(OSError):
            return (self.dir / "log" / f"{self.node}.log").read_text(errors="replace")[-chars:]
        return "(no log)"

    def start(self) -> None:
        """Start the node (again, with its data) and wait until it runs."""
        self.launch()
        self.await_startup()

    def pid(self) -> int | None:
        """The node's ``beam.smp`` process, if it runs (its pid file, checked)."""
        with contextlib.suppress(OSError, ValueError):
            pid = int((self.dir / "mnesia" / f"{self.node}.pid").read_text().strip())
            if _alive(pid):
                return pid
        return None

    @property
    def running(self) -> bool:
        return self.pid() is not None

    def _wait_gone(self, pid: int | None, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while pid is not None and _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop(self, timeout: float = 60.0) -> None:
        """Stop the node cleanly (``rabbitmqctl stop``) and wait for its process to end."""
        pid = self.pid()
        with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
            self.ctl("stop", timeout=timeout)
        # The node may still be writing its files for a moment after `stop` returns.
        self._wait_gone(pid, 30)

    def kill(self) -> None:
        """SIGKILL the node's VM (no goodbye to its peers or clients) and wait until it is gone."""
        pid = self.pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            self._wait_gone(pid, 10)

    def remove(self) -> None:
        """Delete the node's directory (the node must be down)."""
        for _ in range(20):
            shutil.rmtree(self.dir, ignore_errors=True)
            if not self.dir.exists():
                break
            time.sleep(0.1)


class PrivateBroker(RabbitNode):
    """``with PrivateBroker() as broker: broker.url``; ``restart()`` bounces the app."""

    def __init__(self, start_timeout: float = 90.0, management: bool = False) -> None:
        super().__init__(start_timeout=start_timeout, management=management)

    def __enter__(self) -> PrivateBroker:
        try:
            self.start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def restart(self) -> None:
        """``stop_app`` then ``start_app``: every connection drops, queues survive."""
        self.ctl("stop_app")
        self.ctl("start_app")
        self.ctl("await_startup")

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.remove()
