"""The exec journal: which execs this agent holds, on disk, so a restart can report them.

A killed agent takes its exec table with it; the processes it ran are gone
(or orphaned) and no worker could learn what became of them. With
``--state-dir``, the agent writes one small file per exec when it spawns it
and deletes it when a client acknowledges the exit. At start, every file
left behind is an exec of a previous life: it is reported ``failed`` with
code ``agent_lost`` (its ``meta`` intact, so the worker can answer the
original caller) and kept until acknowledged, like any other exit.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from execbus.agent.execspec import ExecSpec

log = logging.getLogger("execbus.agent")
SUFFIX = ".exec.json"
ACKED_LOG = "acked.log"
MAX_TOMBSTONES = 100_000


class Journal:
    """One JSON file per held exec in ``directory`` (disabled when ``None``)."""

    def __init__(self, directory: str | None) -> None:
        self.directory = Path(directory) if directory else None
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)

    def _path(self, exec_id: str) -> Path:
        assert self.directory is not None
        return self.directory / f"{exec_id}{SUFFIX}"

    def record(self, spec: ExecSpec, started_at: float) -> None:
        """Remember a spawned exec (exec ids are safe file names: see execspec)."""
        if self.directory is None:
            return
        doc = {
            "exec_id": spec.exec_id,
            "tty": spec.tty,
            "container_id": spec.container_id,
            "meta": spec.meta,
            "started_at": started_at,
        }
        path = self._path(spec.exec_id)
        tmp = path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(doc))
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("cannot journal exec: %s", exc, extra={"exec_id": spec.exec_id})

    def forget(self, exec_id: str) -> None:
        """Nothing to report after a restart (acknowledged, or never spawned)."""
        if self.directory is not None:
            with contextlib.suppress(FileNotFoundError):
                self._path(exec_id).unlink()

    def acknowledged(self, exec_id: str) -> None:
        """Remember an acknowledged exec id for good (a tombstone), then forget the exec."""
        if self.directory is not None:
            try:
                with open(self.directory / ACKED_LOG, "a") as log_file:
                    log_file.write(exec_id + "\n")
            except OSError as exc:
                log.warning("cannot record tombstone: %s", exc, extra={"exec_id": exec_id})
        self.forget(exec_id)

    def tombstones(self) -> list[str]:
        """The most recent acknowledged exec ids (compacting the log to them)."""
        if self.directory is None:
            return []
        path = self.directory / ACKED_LOG
        try:
            ids = path.read_text().split()[-MAX_TOMBSTONES:]
        except FileNotFoundError:
            return []
        tmp = path.with_suffix(".tmp")
        with contextlib.suppress(OSError):
            tmp.write_text("".join(f"{i}\n" for i in ids))
            os.replace(tmp, path)
        return ids

    def leftovers(self) -> list[dict[str, Any]]:
        """Execs journaled by a previous life of the agent."""
        if self.directory is None:
            return []
        found = []
        for path in sorted(self.directory.glob(f"*{SUFFIX}")):
            try:
                doc = json.loads(path.read_text())
                if isinstance(doc, dict) and isinstance(doc.get("exec_id"), str):
                    found.append(doc)
            except (OSError, ValueError):
                log.warning("unreadable journal entry %s", path.name)
        return found
