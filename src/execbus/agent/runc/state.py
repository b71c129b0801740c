"""What ``runc state`` says about a container, and how long it may be trusted.

``runc state`` takes ~5 ms, a quarter of a container exec. What it tells (the
container's rootfs and its ``process`` template, from the bundle's
``config.json``) stays true while the container's init process lives, so the
backend keeps it as a :class:`KnownContainer`, tied to that very process: its
pid and start time (:func:`execbus.agent.procs.start_time`, so pid reuse
cannot fool it; a zombie init counts as gone).
"""

from __future__ import annotations

import json
import os
from typing import Any

from execbus.agent.compat import slots_dataclass
from execbus.agent.errors import (
    CONTAINER_NOT_FOUND,
    CONTAINER_NOT_RUNNING,
    START_FAILED,
    StartFailure,
)
from execbus.agent.procs import start_time


def parse_state(container_id: str, code: int, out: bytes, err: bytes) -> dict[str, Any]:
    """The state of a running container from ``runc state``'s exit code and output;
    raises the start failure (not found, not running, runc failed) otherwise."""
    if code != 0:
        message = err.decode(errors="replace").strip()
        if "does not exist" in message:
            raise StartFailure(CONTAINER_NOT_FOUND, f"container {container_id!r} not found")
        raise StartFailure(START_FAILED, f"runc state failed: {message[-500:]}")
    try:
        state: dict[str, Any] = json.loads(out)
    except ValueError:
        raise StartFailure(START_FAILED, "runc state printed no JSON") from None
    if state.get("status") != "running":
        raise StartFailure(
            CONTAINER_NOT_RUNNING,
            f"container {container_id!r} is {state.get('status', 'not running')}",
        )
    return state


def container_process(state: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The container's rootfs and the ``process`` section of its config.json."""
    bundle = str(state.get("bundle", ""))
    try:
        with open(os.path.join(bundle, "config.json"), encoding="utf-8") as f:
            config: dict[str, Any] = json.load(f)
    except (OSError, ValueError) as exc:
        raise StartFailure(
            START_FAILED, f"cannot read the container's config.json: {exc}"
        ) from None
    rootfs = state.get("rootfs") or os.path.join(bundle, config.get("root", {}).get("path", ""))
    process: dict[str, Any] = config.get("process") or {}
    return str(rootfs), process


@slots_dataclass(frozen=True)
class KnownContainer:
    """What ``runc state`` said about a running container, tied to its init process."""

    init_pid: int
    init_started: str
    rootfs: str
    process: dict[str, Any]

    @classmethod
    def of(
        cls, state: dict[str, Any], rootfs: str, process: dict[str, Any]
    ) -> KnownContainer | None:
        pid = state.get("pid")
        if not isinstance(pid, int) or pid <= 0:
            return None
        started = start_time(pid, zombies=False)
        return None if started is None else cls(pid, started, rootfs, process)

    def alive(self) -> bool:
        """True while the init process seen then is still the one running."""
        return start_time(self.init_pid, zombies=False) == self.init_started
