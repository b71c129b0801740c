"""The agent's settings (everything the command line sets except the listeners)."""

from __future__ import annotations

from dataclasses import dataclass

from execbus.agent.protocol import DEFAULT_MAX_FRAME

DEFAULT_SOCKET = "/run/execbus/agent.sock"
DEFAULT_MAX_EXECS = 1024
DEFAULT_GRACE = 10.0


@dataclass(slots=True)
class AgentOptions:
    """Settings of one agent; ``AgentOptions()`` is a working default.

    ``runc`` turns the runc backend on (True), off (False) or on when
    ``runc_binary`` is found on ``PATH`` (None). ``runc_root`` is passed as
    ``runc --root``; None uses runc's own default.
    """

    socket_mode: int = 0o600
    token_file: str | None = None
    runc: bool | None = None
    runc_root: str | None = None
    runc_binary: str = "runc"
    max_frame: int = DEFAULT_MAX_FRAME
    max_execs: int = DEFAULT_MAX_EXECS
    grace: float = DEFAULT_GRACE
    allow_privileged: bool = False
    log_level: str = "info"
    log_format: str = "text"
