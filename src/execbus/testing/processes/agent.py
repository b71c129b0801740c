"""The agent daemon as a managed child: ``python -m execbus.agent``."""

from __future__ import annotations

import contextlib
import json
import socket
import sys
from pathlib import Path
from typing import Any, Self

from execbus.testing.processes.managed import Managed


class AgentProcess(Managed):
    """``python -m execbus.agent --listen unix://<workdir>/<name>.sock ...``.

    ``socket_path``: another socket; ``unix=False``: no Unix listener (``extra``
    gives the listeners); ``json_logs``: ``--log-format json``, and ready once
    it logs ``agent ready`` (:meth:`ready_line`, :meth:`port`) instead of once
    its socket accepts; ``python``: another interpreter (the agent supports
    3.9 and later).
    """

    def __init__(
        self,
        name: str,
        workdir: Path,
        env: dict[str, str],
        *extra: str,
        socket_path: Path | None = None,
        unix: bool = True,
        json_logs: bool = False,
        python: str | None = None,
        log_path: Path | None = None,
        cwd: Path | None = None,
        user: int | None = None,
    ) -> None:
        self.sock = socket_path or workdir / f"{name}.sock"
        self.unix = unix
        self.json_logs = json_logs
        argv = [python or sys.executable, "-m", "execbus.agent"]
        if unix:
            argv += ["--listen", self.address]
        if json_logs:
            argv += ["--log-format", "json"]
        log = log_path or workdir / f"{name}.log"
        super().__init__(name, [*argv, *extra], env, log, cwd=cwd, user=user)

    @property
    def socket_path(self) -> Path:
        return self.sock

    @property
    def address(self) -> str:
        return f"unix://{self.sock}"

    def start(self) -> Self:
        if self.unix:
            with contextlib.suppress(FileNotFoundError):
                self.sock.unlink()  # a killed agent leaves its socket: wait for the new one
        return super().start()

    def listening(self) -> bool:
        if not self.sock.exists():
            return False
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as s:
            s.connect(str(self.sock))
            return True
        return False

    def ready(self) -> bool:
        """Serving: its ``agent ready`` line logged (JSON logs), else its socket accepting."""
        return self.ready_line() is not None if self.json_logs else self.listening()

    def wait_ready(self, timeout: float = 15.0) -> None:
        """Block until :meth:`ready` (fixtures; bench code awaits :meth:`wait_listening`)."""
        self.wait_for(self.ready, "not ready", timeout)

    async def wait_listening(self, timeout: float = 20.0) -> None:
        await self.wait_for_async(self.listening, "did not listen", timeout)

    # -- its JSON log ------------------------------------------------------------

    def log_lines(self) -> list[dict[str, Any]]:
        """The log's JSON lines, decoded (other lines are left out)."""
        lines = []
        for line in self.log_text().splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict):
                    lines.append(entry)
        return lines

    def ready_line(self) -> dict[str, Any] | None:
        return next((e for e in self.log_lines() if e.get("msg") == "agent ready"), None)

    @property
    def addresses(self) -> list[str]:
        """The listener addresses of the ``agent ready`` line."""
        ready = self.ready_line()
        assert ready is not None, f"{self.name} has not logged 'agent ready'"
        return list(ready["listen"])

    def port(self, scheme: str) -> int:
        """The port of its ``scheme`` (tcp, tls, http) listener, from ``agent ready``."""
        url = next(u for u in self.addresses if u.startswith(f"{scheme}://"))
        return int(url.rsplit(":", 1)[1])
