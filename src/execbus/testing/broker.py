"""A private RabbitMQ node for tests that restart the broker (without touching the shared one).

It runs the machine's ``rabbitmq-server`` as a second node (its own name,
port, data and log directories), so a fault test can ``stop_app`` /
``start_app`` it while other tests and tools keep using the main broker.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def available() -> bool:
    """True when ``rabbitmq-server`` and ``rabbitmqctl`` are installed and we are root."""
    return (
        shutil.which("rabbitmq-server") is not None
        and shutil.which("rabbitmqctl") is not None
        and os.geteuid() == 0
    )


class PrivateBroker:
    """``with PrivateBroker() as broker: broker.url``; ``restart()`` bounces the app."""

    def __init__(self, start_timeout: float = 90.0, management: bool = False) -> None:
        self.port = _free_port()
        # With management=True the node also serves the management HTTP API on 127.0.0.1.
        self.management_port = _free_port() if management else None
        self.node = f"execbus{uuid.uuid4().hex[:8]}@localhost"
        self.dir = Path(tempfile.mkdtemp(prefix="execbus-rmq-"))
        self.start_timeout = start_timeout

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    @property
    def management_url(self) -> str:
        assert self.management_port is not None, "PrivateBroker(management=True)"
        return f"http://127.0.0.1:{self.management_port}/"

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            RABBITMQ_CONF_ENV_FILE="/dev/null",
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(_free_port()),
            RABBITMQ_CONFIG_FILE=str(self.dir / "rabbitmq"),
            RABBITMQ_MNESIA_BASE=str(self.dir / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.dir / "log"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.dir / "enabled_plugins"),
            ERL_EPMD_ADDRESS="127.0.0.1",
        )
        return env

    def ctl(self, *args: str, timeout: float = 90.0) -> None:
        """Run ``rabbitmqctl -n <node> ARGS`` (raises on failure)."""
        subprocess.run(
            ["rabbitmqctl", "-q", "-n", self.node, *args],
            check=True,
            timeout=timeout,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def __enter__(self) -> PrivateBroker:
        conf = f"listeners.tcp.local = 127.0.0.1:{self.port}\nloopback_users = none\n"
        plugins = "[]."
        if self.management_port is not None:
            conf += f"management.tcp.ip = 127.0.0.1\nmanagement.tcp.port = {self.management_port}\n"
            plugins = "[rabbitmq_management]."
        (self.dir / "rabbitmq.conf").write_text(conf)
        (self.dir / "enabled_plugins").write_text(plugins + "\n")
        with contextlib.suppress(KeyError, OSError):
            import pwd

            user = pwd.getpwnam("rabbitmq")
            for path in [self.dir, *self.dir.iterdir()]:
                os.chown(path, user.pw_uid, user.pw_gid)
        subprocess.run(["rabbitmq-server", "-detached"], env=self._env(), check=True, timeout=30)
        deadline = time.monotonic() + self.start_timeout
        while True:
            try:
                self.ctl("await_startup", "--timeout", "10", timeout=20)
                return self
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
                if time.monotonic() > deadline:
                    self.__exit__()
                    raise TimeoutError(f"private RabbitMQ node {self.node} did not start") from None
                time.sleep(1)

    def restart(self) -> None:
        """``stop_app`` then ``start_app``: every connection drops, queues survive."""
        self.ctl("stop_app")
        self.ctl("start_app")
        self.ctl("await_startup")

    def _pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int((self.dir / "mnesia" / f"{self.node}.pid").read_text().strip())
        return None

    def __exit__(self, *exc: object) -> None:
        pid = self._pid()
        with contextlib.suppress(Exception):
            self.ctl("stop", timeout=60)
        # The node may still be writing its files for a moment after `stop`
        # returns: wait for its process, then remove the directory for good.
        deadline = time.monotonic() + 30
        while pid is not None and time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except OSError:  # gone
                break
            time.sleep(0.1)
        for _ in range(20):
            shutil.rmtree(self.dir, ignore_errors=True)
            if not self.dir.exists():
                break
            time.sleep(0.1)
