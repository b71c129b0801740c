"""``execbus agent``: the guest agent daemon's command line.

The argument parser and :func:`main`: the arguments are checked into a
:class:`~execbus.agent.config.Config` (:mod:`execbus.agent.config`), logging
is set up (:mod:`execbus.agent.logs`) and the daemon runs
(:mod:`execbus.agent.daemon`). A bad command line or setting is one line on
stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from typing import NoReturn

from execbus.agent.config import ConfigError, make_config
from execbus.agent.daemon import run
from execbus.agent.logs import setup_logging
from execbus.agent.options import (
    DEFAULT_GRACE,
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_EXECS,
    DEFAULT_SOCKET,
    MAX_DEFAULT_HANDSHAKES,
)
from execbus.agent.protocol import DEFAULT_MAX_FRAME

PROG = "execbus agent"

DESCRIPTION = """\
Run the execbus guest agent: a daemon that spawns real processes (on this
system or in runc containers) for execbus workers, over the framed protocol
described in docs/agent-protocol.md. It needs nothing but python3."""

EPILOG = """\
listen addresses:
  unix:///run/execbus/agent.sock   Unix socket (--socket-mode/-owner/-group, no token)
  tcp://0.0.0.0:7878               TCP (always needs --token-file)
  tls://0.0.0.0:7879               TLS over TCP (--token-file, --tls-cert, --tls-key;
                                   --tls-client-ca requires client certificates)
  vsock://any:7878                 AF_VSOCK (needs the token if --token-file is given)

examples:
  execbus agent
  execbus agent --listen unix:///run/execbus/agent.sock \\
                --listen tcp://10.0.0.5:7878 --token-file /etc/execbus/token
  execbus agent --listen tls://0.0.0.0:7879 --token-file /etc/execbus/token \
                --tls-cert agent.pem --tls-key agent.key --tls-client-ca workers-ca.pem
  execbus agent --runc-root /run/containerd/runc/k8s.io --log-format json

SIGTERM/SIGINT: stop accepting, give running execs --grace seconds, then kill
them (their cgroups, else their process groups) and what finished execs left
running in the background, report their exits and exit. A second signal exits
at once (status 1). Then, as when the agent is killed outright (SIGKILL, a
crash), its execs go with it: a small helper process (the lifeline) kills them
as soon as the agent is gone."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)


def _octal(value: str) -> int:
    try:
        mode = int(value, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an octal file mode") from None
    if not 0 <= mode <= 0o777:
        raise argparse.ArgumentTypeError(f"{value!r} is not a file mode (000-777)")
    return mode


def build_parser() -> argparse.ArgumentParser:
    """The ``execbus agent`` argument parser (its errors raise :class:`ConfigError`)."""
    parser = _Parser(
        prog=PROG,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _listening_options(parser.add_argument_group("listening").add_argument)
    _exec_options(parser.add_argument_group("execs").add_argument)
    _http_options(parser.add_argument_group("health and metrics").add_argument)
    _logging_options(parser.add_argument_group("logging").add_argument)
    return parser


def _listening_options(add: Callable[..., argparse.Action]) -> None:
    add(
        "--listen",
        metavar="URL",
        action="append",
        default=[],
        help=f"where to listen; repeat for several (default: unix://{DEFAULT_SOCKET})",
    )
    add(
        "--token-file",
        metavar="PATH",
        help="file holding the shared token clients must present (required for tcp)",
    )
    add(
        "--socket-mode",
        metavar="OCTAL",
        type=_octal,
        default=0o600,
        help="file mode of Unix sockets (default: 0600)",
    )
    add(
        "--socket-owner",
        metavar="USER",
        help="owner (name or uid) of Unix sockets (default: the agent's user)",
    )
    add(
        "--socket-group",
        metavar="GROUP",
        help="group (name or gid) of Unix sockets, e.g. with --socket-mode 0660 "
        "(default: the agent's group)",
    )
    add("--tls-cert", metavar="PATH", help="certificate chain (PEM) of tls:// listeners")
    add("--tls-key", metavar="PATH", help="private key (PEM) of --tls-cert")
    add(
        "--tls-client-ca",
        metavar="PATH",
        help="CA bundle (PEM); tls:// clients must present a certificate it signed (mTLS)",
    )
    add(
        "--max-connections",
        metavar="N",
        type=int,
        default=DEFAULT_MAX_CONNECTIONS,
        help=f"connections served at once (default: {DEFAULT_MAX_CONNECTIONS})",
    )
    add(
        "--max-handshakes",
        metavar="N",
        type=int,
        default=0,
        help="connections that may be unauthenticated at once (TLS handshake or hello in "
        "progress; one more drops the oldest of them). Always below --max-connections, so "
        "a slot is left for a client that authenticates (default: --max-connections - 1, "
        f"at most {MAX_DEFAULT_HANDSHAKES})",
    )
    add(
        "--handshake-timeout",
        metavar="SECONDS",
        type=float,
        default=DEFAULT_HANDSHAKE_TIMEOUT,
        help="a connection must say hello (and finish TLS) within this time "
        f"(default: {DEFAULT_HANDSHAKE_TIMEOUT:g})",
    )
    add(
        "--max-frame",
        metavar="BYTES",
        type=int,
        default=DEFAULT_MAX_FRAME,
        help=f"largest frame accepted and sent (default: {DEFAULT_MAX_FRAME})",
    )


def _exec_options(add: Callable[..., argparse.Action]) -> None:
    add(
        "--runc-root",
        metavar="PATH",
        help="runc state directory; enables the runc backend "
        "(default: enabled, with runc's default root, when runc is on PATH)",
    )
    add("--runc-binary", metavar="PATH", default="runc", help="runc executable (default: runc)")
    add(
        "--max-execs",
        metavar="N",
        type=int,
        default=DEFAULT_MAX_EXECS,
        help="execs held at once, running or finished but not acknowledged "
        f"(default: {DEFAULT_MAX_EXECS})",
    )
    add(
        "--max-execs-per-connection",
        metavar="N",
        type=int,
        default=0,
        help="running execs one connection may have started (default: 0, no cap "
        "besides --max-execs)",
    )
    add(
        "--grace",
        metavar="SECONDS",
        type=float,
        default=DEFAULT_GRACE,
        help=f"on shutdown, how long running execs may finish (default: {DEFAULT_GRACE:g})",
    )
    add(
        "--allow-privileged",
        action="store_true",
        help="accept privileged execs (every capability the agent has, in containers)",
    )
    add(
        "--state-dir",
        metavar="DIR",
        help="journal held execs here (a 0700 directory of the agent's user; env values are "
        "never written), so that after the agent is killed and restarted the execs it lost "
        "are reported failed (agent_lost) instead of vanishing, and whatever of them "
        "survived is killed",
    )
    add(
        "--cgroup-root",
        metavar="PATH",
        help="give each exec a cgroup below PATH, so that a timeout, a shutdown or the "
        "agent's death kills every process the exec started, even those that left its "
        "process group (setsid). 'auto' (the default): <cgroup mount>/execbus (cgroup v2, "
        "else the v1 pids or freezer hierarchy) when running as root, else off; 'off': "
        "process groups only, and a process that calls setsid escapes timeouts and "
        "shutdown",
    )


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port number (0-65535)")
    return port


def _http_options(add: Callable[..., argparse.Action]) -> None:
    add(
        "--http-port",
        metavar="PORT",
        type=_port,
        help="serve /healthz, /readyz and /metrics (Prometheus) over HTTP on this port "
        "(default: off; 0 picks a free port)",
    )
    add(
        "--http-host",
        metavar="ADDRESS",
        default="127.0.0.1",
        help="address of the HTTP endpoint; it has no authentication (default: 127.0.0.1)",
    )


def _logging_options(add: Callable[..., argparse.Action]) -> None:
    add(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="default: info",
    )
    add(
        "--log-format",
        default="text",
        choices=["text", "json"],
        help="text lines or JSON lines on stderr (default: text)",
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``execbus agent``; returns the process exit code."""
    try:
        args = build_parser().parse_args(argv)
        config = make_config(args)
    except ConfigError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0
    setup_logging(config.options.log_level, config.options.log_format)
    try:
        return asyncio.run(run(config))
    except ConfigError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
