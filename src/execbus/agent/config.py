"""The agent's configuration: command-line arguments checked into options and listeners.

:func:`make_config` turns the parsed ``execbus agent`` arguments into a
:class:`Config` (the :class:`~execbus.agent.options.AgentOptions`, the
listeners and the token), or raises :class:`ConfigError` with a one-line
message naming the flag. :func:`validate` checks the options alone; the
:class:`~execbus.agent.core.AgentCore` calls it too, so an embedded agent
(the worker's ``local`` one) is held to the same limits as a daemon.
"""

from __future__ import annotations

import argparse
import grp
import os
import pwd
import shutil

from execbus.agent.compat import slots_dataclass
from execbus.agent.listeners import ListenerSpec, parse_listen_url
from execbus.agent.options import DEFAULT_SOCKET, AgentOptions

MIN_MAX_FRAME = 4 * 1024 * 1024


class ConfigError(Exception):
    """A bad command line or setting; main prints it on one line and returns 2."""


@slots_dataclass()
class Config:
    """What the daemon needs to run the agent."""

    options: AgentOptions
    listeners: list[ListenerSpec]
    token: str | None


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
    validate(options)
    return Config(options, listeners, token)


def validate(options: AgentOptions) -> None:
    """Check the limits and the runc binary of ``options``; raises :class:`ConfigError`."""
    if options.max_connections < 1:
        raise ConfigError("--max-connections must be at least 1")
    if options.max_handshakes < 0:
        raise ConfigError("--max-handshakes must be >= 0 (0: the default)")
    if options.max_execs_per_connection < 0:
        raise ConfigError("--max-execs-per-connection must be >= 0 (0: no cap)")
    if not options.handshake_timeout > 0:
        raise ConfigError("--handshake-timeout must be > 0")
    if options.max_frame < MIN_MAX_FRAME:
        raise ConfigError(f"--max-frame must be at least {MIN_MAX_FRAME}")
    if options.max_execs < 1:
        raise ConfigError("--max-execs must be at least 1")
    if options.grace < 0:
        raise ConfigError("--grace must be >= 0")
    if options.runc_root and shutil.which(options.runc_binary) is None:
        raise ConfigError(
            f"--runc-root is set but runc binary {options.runc_binary!r} was not found"
        )


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
