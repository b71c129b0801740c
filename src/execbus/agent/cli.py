"""``execbus agent``: the guest agent daemon's command line."""

from __future__ import annotations

import argparse
import asyncio
import grp
import logging
import os
import pwd
import shutil
import signal
import sys
from typing import Any, NoReturn

from execbus.agent.cgroups import CgroupError
from execbus.agent.compat import slots_dataclass
from execbus.agent.core import AGENT_VERSION, AgentCore
from execbus.agent.http import HealthServer
from execbus.agent.journal import JournalError
from execbus.agent.listeners import ListenerSpec, parse_listen_url
from execbus.agent.logs import setup_logging
from execbus.agent.options import (
    DEFAULT_GRACE,
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_EXECS,
    DEFAULT_SOCKET,
    MAX_DEFAULT_HANDSHAKES,
    AgentOptions,
)
from execbus.agent.protocol import DEFAULT_MAX_FRAME
from execbus.agent.server import AgentServer

log = logging.getLogger("execbus.agent")

PROG = "execbus agent"
MIN_MAX_FRAME = 4 * 1024 * 1024

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
running in the background, report their exits and exit. Killed outright
(SIGKILL, a crash), the agent takes its execs with it: a small helper process
(the lifeline) kills them as soon as the agent is gone."""


class ConfigError(Exception):
    """A bad command line or setting; main prints it on one line and returns 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)


@slots_dataclass()
class Config:
    """What main needs to run the agent."""

    options: AgentOptions
    listeners: list[ListenerSpec]
    token: str | None


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
    _listening_options(parser.add_argument_group("listening"))
    _exec_options(parser.add_argument_group("execs"))
    _http_options(parser.add_argument_group("health and metrics"))
    _logging_options(parser.add_argument_group("logging"))
    return parser


def _listening_options(group: argparse._ArgumentGroup) -> None:
    add = group.add_argument
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


def _exec_options(group: argparse._ArgumentGroup) -> None:
    add = group.add_argument
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


def _http_options(group: argparse._ArgumentGroup) -> None:
    add = group.add_argument
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


def _logging_options(group: argparse._ArgumentGroup) -> None:
    add = group.add_argument
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


def make_config(args: argparse.Namespace) -> Config:
    """Check the parsed arguments; raises :class:`ConfigError`."""
    try:
        listeners = [parse_listen_url(u) for u in (args.listen or [f"unix://{DEFAULT_SOCKET}"])]
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    token = _read_token(args.token_file) if args.token_file else None
    tcp = [spec for spec in listeners if spec.kind in ("tcp", "tls")]
    if tcp and token is None:
        raise ConfigError(f"{tcp[0].kind} listener {tcp[0].url} requires --token-file")
    _check_tls(args, listeners)
    if args.max_connections < 1:
        raise ConfigError("--max-connections must be at least 1")
    if args.max_handshakes < 0:
        raise ConfigError("--max-handshakes must be >= 0 (0: the default)")
    if args.max_execs_per_connection < 0:
        raise ConfigError("--max-execs-per-connection must be >= 0 (0: no cap)")
    if not args.handshake_timeout > 0:
        raise ConfigError("--handshake-timeout must be > 0")
    if args.max_frame < MIN_MAX_FRAME:
        raise ConfigError(f"--max-frame must be at least {MIN_MAX_FRAME}")
    if args.max_execs < 1:
        raise ConfigError("--max-execs must be at least 1")
    if args.grace < 0:
        raise ConfigError("--grace must be >= 0")
    if args.runc_root and shutil.which(args.runc_binary) is None:
        raise ConfigError(f"--runc-root is set but runc binary {args.runc_binary!r} was not found")
    options = AgentOptions(
        socket_mode=args.socket_mode,
        socket_owner=_uid(args.socket_owner) if args.socket_owner else None,
        socket_group=_gid(args.socket_group) if args.socket_group else None,
        token_file=args.token_file,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        max_connections=args.max_connections,
        max_execs_per_connection=args.max_execs_per_connection,
        handshake_timeout=args.handshake_timeout,
        runc=True if args.runc_root else None,
        runc_root=args.runc_root,
        runc_binary=args.runc_binary,
        max_frame=args.max_frame,
        max_execs=args.max_execs,
        grace=args.grace,
        allow_privileged=args.allow_privileged,
        state_dir=args.state_dir,
        cgroup_root=args.cgroup_root,
        max_handshakes=args.max_handshakes,
        log_level=args.log_level,
        log_format=args.log_format,
        http_host=args.http_host,
        http_port=args.http_port,
    )
    return Config(options, listeners, token)


def _check_tls(args: argparse.Namespace, listeners: list[ListenerSpec]) -> None:
    tls = [spec for spec in listeners if spec.kind == "tls"]
    given = [
        flag
        for flag, value in (
            ("--tls-cert", args.tls_cert),
            ("--tls-key", args.tls_key),
            ("--tls-client-ca", args.tls_client_ca),
        )
        if value
    ]
    if not tls:
        if given:
            raise ConfigError(f"{given[0]} is given but no tls:// listener is")
        return
    if not args.tls_cert or not args.tls_key:
        raise ConfigError(f"tls listener {tls[0].url} requires --tls-cert and --tls-key")
    for flag, path in (
        ("--tls-cert", args.tls_cert),
        ("--tls-key", args.tls_key),
        ("--tls-client-ca", args.tls_client_ca),
    ):
        if path and not os.access(path, os.R_OK):
            raise ConfigError(f"cannot read {flag} {path}")


def _uid(value: str) -> int:
    """A user name or uid (--socket-owner)."""
    if value.isdigit():
        return int(value)
    try:
        return pwd.getpwnam(value).pw_uid
    except KeyError:
        raise ConfigError(f"--socket-owner: no user {value!r}") from None


def _gid(value: str) -> int:
    """A group name or gid (--socket-group)."""
    if value.isdigit():
        return int(value)
    try:
        return grp.getgrnam(value).gr_gid
    except KeyError:
        raise ConfigError(f"--socket-group: no group {value!r}") from None


def _read_token(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read --token-file {path}: {exc.strerror}") from None
    if not token:
        raise ConfigError(f"--token-file {path} is empty")
    return token


async def run(config: Config) -> int:
    """Serve until SIGTERM/SIGINT, then shut down gracefully."""
    try:
        core = AgentCore(config.options)
    except (JournalError, CgroupError) as exc:
        raise ConfigError(str(exc)) from None
    server = AgentServer(
        core, config.listeners, socket_mode=config.options.socket_mode, token=config.token
    )
    http = await _start_http(config.options, core, server)
    try:
        await server.start()
    except (OSError, ValueError) as exc:
        await core.aclose(0)
        if http is not None:
            await http.stop()
        raise ConfigError(f"cannot listen: {exc}") from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    log.info("agent ready", extra={"listen": server.addresses, "boot_id": core.boot_id})
    await stop.wait()
    log.info("shutting down", extra={"grace": config.options.grace})
    await server.stop()
    await core.aclose(config.options.grace)
    if http is not None:  # last: /readyz says 503 while the agent drains
        await http.stop()
    log.info("agent stopped")
    return 0


async def _start_http(
    options: AgentOptions, core: AgentCore, server: AgentServer
) -> HealthServer | None:
    """Start the health/metrics endpoint (before the listeners: /healthz answers at once)."""
    if options.http_port is None:
        return None

    def status() -> tuple[bool, dict[str, Any]]:
        serving, closing = server.serving, core.closing
        detail = {
            "listeners": {"serving": serving, "addresses": server.addresses},
            "shutting_down": closing,
            "boot_id": core.boot_id,
            "execs_running": core.metrics.execs_running,
            "connections": core.metrics.connections_open,
        }
        return serving and not closing, detail

    info = {"version": AGENT_VERSION, "boot_id": core.boot_id}
    http = HealthServer(
        options.http_host, options.http_port, status, lambda: core.metrics.render(info)
    )
    try:
        port = await http.start()
    except OSError as exc:
        await core.aclose(0)
        raise ConfigError(
            f"cannot serve HTTP on {options.http_host}:{options.http_port}: {exc}"
        ) from None
    log.info(
        "health and metrics on http://%s:%d/", options.http_host, port, extra={"http_port": port}
    )
    return http


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
