"""The runc backend's scratch directory: one per agent life, swept once abandoned.

Each runc exec gets a directory for its ``process.json``, pid file and log,
under ``<tmp>/execbus-agent-runc-XXXX``. An agent that is killed cannot remove
it, so a life holds an exclusive ``flock`` on the directory's lock file (the
kernel drops it when the process dies, in any pid namespace sharing the file),
and the next agent to create its own removes every directory whose lock it
can take. A directory without a lock file (made by an older agent, or one
being made right now) is left alone.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile

PREFIX = "execbus-agent-runc-"
LOCK = ".lock"


class ScratchDir:
    """This agent life's scratch directory, made (and the abandoned ones swept) on first use."""

    def __init__(self, base: str | None = None) -> None:
        self._base = base
        self.path: str | None = None
        self._lock: int | None = None
        self.swept: list[str] = []

    def ensure(self) -> str:
        """The directory's path (created, locked and the abandoned swept, the first time)."""
        if self.path is None:
            base = self._base or tempfile.gettempdir()
            self.swept = sweep_abandoned(base)
            path = tempfile.mkdtemp(prefix=PREFIX, dir=base)
            self._lock = _locked_file(path)
            self.path = path
        return self.path

    def close(self) -> None:
        """Remove the directory and drop the lock."""
        if self.path is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            self.path = None
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None


def _locked_file(directory: str) -> int:
    """Create the lock file already locked (made under another name, then renamed, so
    no sweeper ever finds it unlocked)."""
    pending = os.path.join(directory, LOCK + ".new")
    fd = os.open(pending, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.rename(pending, os.path.join(directory, LOCK))
    return fd


def sweep_abandoned(base: str) -> list[str]:
    """Remove the scratch directories under ``base`` whose agent is gone; their paths."""
    removed = []
    with contextlib.suppress(OSError), os.scandir(base) as entries:
        candidates = [e.path for e in entries if e.name.startswith(PREFIX) and e.is_dir()]
    for path in candidates:
        if _abandoned(path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _abandoned(path: str) -> bool:
    try:
        fd = os.open(os.path.join(path, LOCK), os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False  # no lock file: not ours to judge
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False  # a live agent holds it
    finally:
        os.close(fd)  # (closing drops a lock we took: we are about to remove the directory)
    return True
