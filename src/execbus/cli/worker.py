"""``execbus worker``."""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import os
import signal
import sys
import threading
import urllib.error
import urllib.request

from execbus import __version__, loops
from execbus.agent.signals import install_shutdown
from execbus.connections.address import AgentAddress, parse_agent_spec
from execbus.connections.factory import ConnectOptions
from execbus.errors import BrokerRefused, ConfigError
from execbus.logs import setup_logging
from execbus.settings import Settings, load_settings

log = logging.getLogger("execbus.worker")

DESCRIPTION = """\
Serve guest agents: consume exec requests from RabbitMQ, keep the exec
registry, drive the agents (with retries) and publish replies, output and
exit events. With no --agent, serves one in-process agent named 'local'
that runs commands on this host, so `execbus worker` alone is a working
system next to a RabbitMQ.
"""

EPILOG = """\
agent addresses:
  local                   in-process agent on this host (development, quick start)
  unix:///path.sock       execbus agent on a Unix socket
  tcp://host:port         execbus agent over TCP (needs --agent-token-file)
  tls://host:port         the same over TLS (--agent-tls-ca; --agent-tls-cert/-key for mTLS)
  vsock://cid:port        execbus agent over AF_VSOCK
  qga+unix:///path.sock   QEMU guest agent (qemu-ga)

examples:
  execbus worker
  execbus worker --agent vm1=unix:///run/execbus/agent.sock --http-port 9180
  EXECBUS_AMQP_URL=amqps://user:pw@mq:5671/ execbus worker --agent vm1=vsock://3:1024
  execbus worker --policy-file /etc/execbus/policy.toml --agent vm1=unix:///run/vm1.sock

security: without --policy-file every caller that may publish to <ns>.requests
may run anything on every agent; see docs/security.md.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="execbus worker",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--agent",
        dest="agents",
        action="append",
        default=None,
        metavar="NAME=ADDRESS",
        help="an agent to serve (repeatable; env EXECBUS_AGENTS, comma-separated)",
    )
    p.add_argument(
        "--pool",
        dest="pools",
        action="append",
        default=None,
        metavar="POOL=AGENT[+AGENT...]",
        help="a pool of served agents for pool.<POOL> requests (repeatable; env EXECBUS_POOLS)",
    )
    p.add_argument("--amqp-url", help="RabbitMQ URL (env EXECBUS_AMQP_URL)")
    p.add_argument("--namespace", help="exchange/queue prefix (env EXECBUS_NAMESPACE)")
    p.add_argument("--agent-token-file", help="token file for tcp:// agents")
    p.add_argument(
        "--agent-tls-ca",
        dest="agent_tls_ca_file",
        metavar="AGENT_TLS_CA",
        help="CA bundle that signed the tls:// agents' certificates",
    )
    p.add_argument(
        "--agent-tls-cert",
        dest="agent_tls_cert_file",
        metavar="AGENT_TLS_CERT",
        help="client certificate for tls:// agents with mTLS",
    )
    p.add_argument(
        "--agent-tls-key",
        dest="agent_tls_key_file",
        metavar="AGENT_TLS_KEY",
        help="private key of --agent-tls-cert",
    )
    p.add_argument(
        "--policy-file",
        help="authorization policy, TOML or YAML (env EXECBUS_POLICY_FILE; see docs/security.md)",
    )
    p.add_argument("--amqp-ca-file", help="amqps://: CA bundle that signed the broker's cert")
    p.add_argument("--amqp-cert-file", help="amqps://: client certificate (broker mTLS)")
    p.add_argument("--amqp-key-file", help="amqps://: private key of --amqp-cert-file")
    p.add_argument("--prefetch", type=int, help="AMQP prefetch per agent queue")
    p.add_argument("--http-port", type=int, help="serve /healthz, /readyz and /metrics here")
    p.add_argument("--http-host", help="address of the HTTP endpoint (default 127.0.0.1)")
    p.add_argument("--shutdown-grace", type=float, help="seconds to drain on SIGTERM")
    p.add_argument("--worker-id", help="stable worker id (default: random)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-format", choices=["text", "json"])
    p.add_argument(
        "--health",
        action="store_true",
        help="query the readiness of a worker running on --http-port and exit 0 (ready) or 1",
    )
    return p


def settings_from_args(args: argparse.Namespace) -> Settings:
    """The environment's settings, overridden by the options given (each option's
    ``dest`` is the name of its setting)."""
    given = {name: value for name, value in vars(args).items() if name in Settings.model_fields}
    return load_settings(**given)


def agents_from_settings(settings: Settings) -> dict[str, AgentAddress]:
    specs = settings.agents or ["local=local"]
    agents: dict[str, AgentAddress] = {}
    for spec in specs:
        name, address = parse_agent_spec(spec)
        if name in agents:
            raise ConfigError(f"agent {name!r} is given twice")
        agents[name] = address
    return agents


def pools_from_settings(
    settings: Settings, agents: dict[str, AgentAddress]
) -> dict[str, list[str]]:
    """Parse ``--pool`` specs; every member must be an agent this worker serves."""
    from execbus.worker.pools import parse_pool_spec

    pools: dict[str, list[str]] = {}
    for spec in settings.pools:
        pool, members = parse_pool_spec(spec)
        unknown = [a for a in members if a not in agents]
        if unknown:
            raise ConfigError(f"pool {pool!r} names agents this worker does not serve: {unknown}")
        pools[pool] = members
    return pools


def connect_options(settings: Settings) -> ConnectOptions:
    token = None
    if settings.agent_token_file is not None:
        try:
            token = settings.agent_token_file.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read the agent token file: {exc}") from exc
    return ConnectOptions(
        call_timeout=settings.agent_call_timeout,
        heartbeat=settings.agent_heartbeat,
        token=token,
        tls_ca_file=settings.agent_tls_ca_file,
        tls_cert_file=settings.agent_tls_cert_file,
        tls_key_file=settings.agent_tls_key_file,
    )


def main(argv: list[str]) -> int:
    """Run the worker until SIGTERM/SIGINT."""
    args = build_parser().parse_args(argv)
    try:
        settings = settings_from_args(args)
        if args.health:
            return health_main(settings)
        agents = agents_from_settings(settings)
        pools = pools_from_settings(settings, agents)
        options = connect_options(settings)
    except ConfigError as exc:
        print(f"execbus worker: {exc.message}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level, settings.log_format)
    try:
        loops.run(serve(settings, agents, options, pools), settings.event_loop)
    except ConfigError as exc:
        print(f"execbus worker: {exc.message}", file=sys.stderr)
        return 2
    except BrokerRefused as exc:
        log.error("giving up: %s", exc.message)
        return 1
    return 0


async def serve(
    settings: Settings,
    agents: dict[str, AgentAddress],
    options: ConnectOptions,
    pools: dict[str, list[str]] | None = None,
) -> None:
    """Run a worker (and its HTTP endpoint) until a signal arrives."""
    from execbus.agent.http import HealthServer  # standard library only: shared with the agent
    from execbus.worker.service import Worker

    worker = Worker(settings, agents, options, pools)
    stop = asyncio.Event()
    first = functools.partial(_on_first_signal, stop, settings.shutdown_grace)
    install_shutdown(asyncio.get_running_loop(), first)  # a second signal exits at once
    http = None
    if settings.http_port is not None:
        http = HealthServer(
            settings.http_host, settings.http_port, worker.status, worker.metrics.render
        )
        port = await http.start()
        log.info("health and metrics on http://%s:%d/", settings.http_host, port)
    worker.metrics.info.labels(__version__, loops.loop_name()).set(1)
    log.info(
        "worker %s serving agents: %s (event loop: %s)",
        worker.worker_id,
        ", ".join(f"{n}={a}" for n, a in agents.items()),
        loops.loop_name(),
    )
    try:
        await worker.run(stop)
    finally:
        if http is not None:
            await http.stop()
        log.info("worker %s stopped", worker.worker_id)


# A worker exits within the grace period plus this, whatever it waits for.
SHUTDOWN_SLACK = 1.5


def _on_first_signal(stop: asyncio.Event, grace: float, sig: signal.Signals) -> None:
    log.info("%s received: shutting down gracefully", sig.name)
    stop.set()
    _arm_watchdog(grace + SHUTDOWN_SLACK)


def _arm_watchdog(seconds: float) -> None:
    """The last resort: every shutdown step is bounded, but if one still hangs (a
    broker that stopped answering mid-close), the process ends anyway."""

    def expire() -> None:
        log.error("shutdown did not finish within %.1f s; exiting now", seconds)
        logging.shutdown()
        os._exit(1)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()


def health_main(settings: Settings) -> int:
    """``--health``: ask a running worker's /readyz."""
    if settings.http_port is None:
        print("execbus worker --health: give --http-port (or EXECBUS_HTTP_PORT)", file=sys.stderr)
        return 2
    url = f"http://{settings.http_host}:{settings.http_port}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            print(resp.read().decode())
            return 0
    except urllib.error.HTTPError as exc:
        print(exc.read().decode())
        return 1
    except OSError as exc:
        print(f"execbus worker --health: no worker answers at {url}: {exc}", file=sys.stderr)
        return 1
