"""The worker daemon as a managed child: ``python -m execbus worker``, probed
on its ``/readyz``."""

from __future__ import annotations

import sys
from pathlib import Path

from execbus.testing.processes.helpers import fetch_readyz, free_port
from execbus.testing.processes.managed import Managed


class WorkerProcess(Managed):
    """``python -m execbus worker --agent NAME=ADDRESS ... --http-port PORT``."""

    def __init__(
        self,
        name: str,
        workdir: Path,
        env: dict[str, str],
        agents: dict[str, str],
        *extra: str,
        log_path: Path | None = None,
        http_port: int | None = None,
        argv: list[str] | None = None,
    ) -> None:
        """``argv``: the whole command line instead (a compose file's, say), which must
        listen on ``http_port``."""
        self.http_port = http_port or free_port()
        if argv is None:
            argv = [sys.executable, "-m", "execbus", "worker", "--http-port", str(self.http_port)]
            for agent, address in agents.items():
                argv += ["--agent", f"{agent}={address}"]
            argv += extra
        self.args = list(extra)
        super().__init__(name, argv, env, log_path or workdir / f"{name}.log")

    def readyz(self) -> dict[str, object] | None:
        return fetch_readyz(self.http_port)

    def agents(self) -> dict[str, dict[str, object]]:
        """``/readyz``'s agents (each with ``owner``, ``connected``, ``execs``)."""
        doc = self.readyz() or {}
        agents = doc.get("agents")
        if not isinstance(agents, dict):
            return {}
        return {k: v for k, v in agents.items() if isinstance(v, dict)}

    def serving(self) -> set[str]:
        """The agents this worker owns and is connected to."""
        return {k for k, v in self.agents().items() if v.get("owner") and v.get("connected")}

    def connected(self) -> bool:
        """Connected to the broker (``/readyz``: ``broker.connected``)."""
        broker = (self.readyz() or {}).get("broker")
        return isinstance(broker, dict) and bool(broker.get("connected"))

    def wait_ready(self, timeout: float = 15.0) -> None:
        """Block until it is connected to the broker."""
        self.wait_for(self.connected, "not connected to the broker", timeout)

    def wait_owner(self, agent: str, timeout: float = 15.0) -> None:
        """Block until it owns ``agent`` and is connected to it."""
        self.wait_for(lambda: agent in self.serving(), f"does not own {agent!r}", timeout)
