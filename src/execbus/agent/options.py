"""The agent's settings (everything the command line sets except the listeners)."""

from __future__ import annotations

from execbus.agent.compat import slots_dataclass
from execbus.agent.protocol import DEFAULT_MAX_FRAME

DEFAULT_SOCKET = "/run/execbus/agent.sock"
DEFAULT_MAX_EXECS = 1024
DEFAULT_GRACE = 10.0
DEFAULT_MAX_CONNECTIONS = 256
DEFAULT_HANDSHAKE_TIMEOUT = 10.0
MAX_DEFAULT_HANDSHAKES = 64


def handshake_cap(options: AgentOptions) -> int:
    """Connections that may be in their handshake at once (see AgentOptions)."""
    if options.max_handshakes > 0:
        return min(options.max_handshakes, max(1, options.max_connections - 1))
    return max(1, min(MAX_DEFAULT_HANDSHAKES, options.max_connections - 1))


@slots_dataclass()
class AgentOptions:
    """Settings of one agent; ``AgentOptions()`` is a working default.

    ``runc`` turns the runc backend on (True), off (False) or on when
    ``runc_binary`` is found on ``PATH`` (None). ``runc_root`` is passed as
    ``runc --root``; None uses runc's own default.

    Limits: ``max_connections`` connections at once (greeted or not; more are
    answered ``limit_exceeded`` and closed), of which at most
    ``max_handshakes`` not yet greeted (a TLS handshake or a ``hello`` in
    progress; one more drops the oldest of them), so that one slot is always
    left for a client that authenticates; a connection must complete TLS and
    its ``hello`` within ``handshake_timeout`` seconds; ``max_execs`` execs held
    by the agent; ``max_execs_per_connection`` (0: no cap) running execs
    started over one connection.
    """

    socket_mode: int = 0o600
    socket_owner: int | None = None
    socket_group: int | None = None
    token_file: str | None = None
    # tls:// listeners: certificate chain and key (PEM); a client CA turns on mTLS.
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    runc: bool | None = None
    runc_root: str | None = None
    runc_binary: str = "runc"
    max_frame: int = DEFAULT_MAX_FRAME
    max_execs: int = DEFAULT_MAX_EXECS
    max_execs_per_connection: int = 0
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT
    grace: float = DEFAULT_GRACE
    allow_privileged: bool = False
    # The exec journal (execbus.agent.journal): execs of a killed agent are
    # reported lost by its next life. None: off.
    state_dir: str | None = None
    # Where execs get a cgroup each (execbus.agent.cgroups): None or "auto" (a
    # cgroup hierarchy's "execbus" directory when root, else none), "off", or
    # a path in a cgroup file system.
    cgroup_root: str | None = None
    # Connections still in their TLS handshake or before hello, at once (the
    # oldest is dropped for a new one); 0: max_connections - 1, at most 64.
    max_handshakes: int = 0
    log_level: str = "info"
    log_format: str = "text"
    # The health/metrics HTTP endpoint (execbus.agent.http); None: off.
    http_host: str = "127.0.0.1"
    http_port: int | None = None
