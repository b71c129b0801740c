"""The agent daemon: health endpoint, listeners, and an ordered shutdown.

:func:`run` starts the HTTP endpoint first (``/healthz`` answers at once),
then the listeners, and serves until SIGTERM/SIGINT
(:func:`execbus.agent.signals.install_shutdown`). Then, in order: stop
accepting, give running execs the grace period, kill and report what is
left, close the connections, and stop the HTTP endpoint last (``/readyz``
says 503 while the agent drains). A second signal exits at once (status 1);
the lifeline (:mod:`execbus.agent.lifeline`) then kills the execs, as when
the agent is killed.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from execbus.agent.cgroups import CgroupError
from execbus.agent.config import Config, ConfigError
from execbus.agent.core import AGENT_VERSION, AgentCore
from execbus.agent.http import HealthServer
from execbus.agent.journal import JournalError
from execbus.agent.options import AgentOptions
from execbus.agent.server import AgentServer
from execbus.agent.signals import install_shutdown

log = logging.getLogger("execbus.agent")


async def run(config: Config) -> int:
    """Serve until SIGTERM/SIGINT, then shut down gracefully; raises ConfigError."""
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
    install_shutdown(asyncio.get_running_loop(), stop)
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
