"""The exec journal: which execs this agent holds, on disk, so a restart can report them.

A killed agent takes its exec table with it; no worker could learn what
became of its execs. With ``--state-dir``, the agent writes one small file
per exec before it spawns it, adds what identifies the exec's processes once
they run (cgroup, process group leaders with their start times), and deletes
the file once a client has acknowledged the exit and no process of the exec
is left. At start, every file left behind is an exec of a previous life: the
agent kills whatever of it still runs, reports it ``failed`` with code
``agent_lost`` (with its ``meta``, so the worker can answer the original
caller) and keeps it until acknowledged, like any other exit.

At rest: the directory is ``0700`` and every file ``0600``, owned by the
agent's user (checked at start: a wider mode is narrowed, another owner is
refused: an entry names processes to kill). No env value is ever written:
the journal holds no command line or environment, and any string of
``meta`` equal to one of the exec's ``env`` entries is written as
``KEY=<redacted>`` (the execbus worker keeps the exec's config in
``meta``). File names are exec ids, which the protocol restricts to
``[A-Za-z0-9][A-Za-z0-9_-]{0,127}``; anything else never becomes a path.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
from pathlib import Path
from typing import Any

from execbus.agent.execspec import ExecSpec, valid_exec_id

log = logging.getLogger("execbus.agent")
SUFFIX = ".exec.json"
ACKED_LOG = "acked.log"
MAX_TOMBSTONES = 100_000
REDACTED = "<redacted>"


class JournalError(Exception):
    """The state directory cannot be used safely (a one-line reason)."""


def redact_meta(meta: Any, env: list[tuple[str, str]]) -> Any:
    """``meta`` with every string equal to one of the ``env`` entries cut to ``KEY=<redacted>``."""
    secrets = {f"{key}={value}": f"{key}={REDACTED}" for key, value in env}
    if not secrets:
        return meta

    def walk(value: Any) -> Any:
        if isinstance(value, str):
            return secrets.get(value, value)
        if isinstance(value, list):
            return [walk(v) for v in value]
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        return value

    return walk(meta)


class Journal:
    """One JSON file per held exec in ``directory`` (disabled when ``None``)."""

    def __init__(self, directory: str | None) -> None:
        self.directory = Path(directory) if directory else None
        self._docs: dict[str, dict[str, Any]] = {}
        if self.directory is not None:
            secure_directory(self.directory)

    def _path(self, exec_id: str) -> Path:
        assert self.directory is not None
        if not valid_exec_id(exec_id):  # never a path outside the directory
            raise ValueError(f"not an exec id: {exec_id[:64]!r}")
        return self.directory / f"{exec_id}{SUFFIX}"

    # -- writing -----------------------------------------------------------

    def record(self, spec: ExecSpec, started_at: float, cgroup: str | None = None) -> None:
        """Remember an exec about to be spawned (and the cgroup it will run in)."""
        if self.directory is None:
            return
        doc: dict[str, Any] = {
            "exec_id": spec.exec_id,
            "tty": spec.tty,
            "container_id": spec.container_id,
            "meta": redact_meta(spec.meta, spec.env),
            "started_at": started_at,
        }
        if cgroup:
            doc["cgroup"] = cgroup
        self._docs[spec.exec_id] = doc
        self._write(spec.exec_id, doc)

    def identify(self, exec_id: str, identity: dict[str, Any]) -> None:
        """Add what identifies the exec's running processes (see ProcessSet.identity)."""
        doc = self._docs.get(exec_id)
        if doc is None:
            return
        doc.update(identity)
        self._write(exec_id, doc)

    def acknowledged(self, exec_id: str, *, lingering: bool = False) -> None:
        """Remember an acknowledged exec id for good (a tombstone); forget the exec,
        unless processes of it still run (``lingering``): then keep what identifies
        them until :meth:`forget`."""
        if self.directory is not None:
            try:
                fd = _open_append(self.directory / ACKED_LOG)
                with open(fd, "a", encoding="utf-8") as log_file:
                    log_file.write(exec_id + "\n")
            except OSError as exc:
                log.warning("cannot record tombstone: %s", exc, extra={"exec_id": exec_id})
        doc = self._docs.get(exec_id)
        if lingering and doc is not None:
            doc["acked"] = True
            doc["meta"] = {}
            self._write(exec_id, doc)
        else:
            self.forget(exec_id)

    def forget(self, exec_id: str) -> None:
        """Nothing to report or kill after a restart (acknowledged and gone, or never spawned)."""
        self._docs.pop(exec_id, None)
        if self.directory is not None:
            with contextlib.suppress(FileNotFoundError):
                self._path(exec_id).unlink()

    def _write(self, exec_id: str, doc: dict[str, Any]) -> None:
        if self.directory is None:
            return
        path = self._path(exec_id)
        tmp = path.with_name(path.name + ".tmp")
        try:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with open(fd, "w", encoding="utf-8") as f:
                json.dump(doc, f)
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("cannot journal exec: %s", exc, extra={"exec_id": exec_id})

    # -- reading at start ----------------------------------------------------

    def tombstones(self) -> list[str]:
        """The most recent acknowledged exec ids (compacting the log to them)."""
        if self.directory is None:
            return []
        path = self.directory / ACKED_LOG
        try:
            ids = read_private(path).split()[-MAX_TOMBSTONES:]
        except FileNotFoundError:
            return []
        except OSError as exc:
            log.warning("cannot read %s: %s", ACKED_LOG, exc)
            return []
        ids = [i for i in ids if valid_exec_id(i)]
        tmp = path.with_name(path.name + ".tmp")
        with contextlib.suppress(OSError):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with open(fd, "w", encoding="utf-8") as f:
                f.write("".join(f"{i}\n" for i in ids))
            os.replace(tmp, path)
        return ids

    def leftovers(self) -> list[dict[str, Any]]:
        """Execs journaled by a previous life of the agent (each kept until forgotten)."""
        if self.directory is None:
            return []
        found = []
        for path in sorted(self.directory.glob(f"*{SUFFIX}")):
            exec_id = path.name[: -len(SUFFIX)]
            if not valid_exec_id(exec_id):
                log.warning("ignoring journal entry %r: not an exec id", path.name[:80])
                continue
            try:
                doc = json.loads(read_private(path))
            except (OSError, ValueError):
                log.warning("unreadable journal entry %s", path.name)
                continue
            if isinstance(doc, dict) and doc.get("exec_id") == exec_id:
                self._docs[exec_id] = doc
                found.append(doc)
            else:
                log.warning("ignoring journal entry %s: not an exec", path.name)
        return found


def secure_directory(directory: Path) -> None:
    """Create ``directory`` (0700) or check an existing one: a directory of the
    agent's user, mode narrowed to 0700 and its files to 0600 (else JournalError)."""
    uid = os.geteuid()
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        st = os.lstat(directory)
    except OSError as exc:
        raise JournalError(f"--state-dir {directory}: {exc.strerror}") from None
    if stat.S_ISLNK(st.st_mode):
        raise JournalError(f"--state-dir {directory} is a symbolic link; give the real path")
    if not stat.S_ISDIR(st.st_mode):
        raise JournalError(f"--state-dir {directory} is not a directory")
    if st.st_uid != uid:
        raise JournalError(
            f"--state-dir {directory} belongs to uid {st.st_uid}, not to the agent's uid {uid}"
        )
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(directory, 0o700)
        log.warning(
            "state directory %s had mode %o; narrowed to 0700", directory, stat.S_IMODE(st.st_mode)
        )
    with os.scandir(directory) as entries:
        found = list(entries)
    for entry in found:
        est = entry.stat(follow_symlinks=False)
        if not stat.S_ISREG(est.st_mode):  # never read: files are opened with O_NOFOLLOW
            log.warning(
                "state directory %s: ignoring %r (not a regular file)", directory, entry.name
            )
            continue
        if est.st_uid != uid:  # it could name processes for the next life to kill
            raise JournalError(
                f"--state-dir {directory}: {entry.name!r} belongs to uid {est.st_uid}, "
                f"not to the agent's uid {uid}"
            )
        if stat.S_IMODE(est.st_mode) & 0o077:
            os.chmod(entry.path, 0o600)
            log.warning("journal file %s was readable by others; narrowed to 0600", entry.name)


def read_private(path: str | Path) -> str:
    """The text of a regular file of the state directory, never following a
    symbolic link nor blocking on a FIFO (OSError otherwise)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with open(fd, encoding="utf-8", errors="replace") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path} is not a regular file")
        return f.read()


def _open_append(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
