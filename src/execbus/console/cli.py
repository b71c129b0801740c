"""``execbus console``: serve the live view of a namespace to browsers."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Generator

from execbus.cli.common import execute, new_parser
from execbus.errors import ConfigError
from execbus.settings import Settings

DESCRIPTION = """\
Serve a live web view of a namespace: the fleet (workers, the agents each
owns, their links, pools), the execs (running and recently finished, with
filters), one exec (its record, timeline and live output) and charts (execs
per second and exit results, per agent and overall; latency percentiles).

The console connects like a client, as its own AMQP user: the observer
permissions (`execbus permissions observer --user U`) are enough. It keeps
the last --max-execs execs in memory (the oldest finished go first).

Read-only unless --allow-control: then a user who logs in with broker
credentials (checked by the broker) gets a kill button, and the signal is
sent as that AMQP user, so the workers' policy decides.
"""

EPILOG = """\
examples:
  execbus console                                   (http://127.0.0.1:8089/)
  execbus console --listen 0.0.0.0:8089 --allowed-host console.example.org
  execbus console --max-execs 50000 --allow-control
"""


def listen_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6; ``:PORT`` is 127.0.0.1)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = new_parser("console", DESCRIPTION, EPILOG)
    p.add_argument(
        "--listen",
        type=listen_address,
        default=("127.0.0.1", 8089),
        metavar="HOST:PORT",
        help="address of the web server (default 127.0.0.1:8089; port 0 picks one)",
    )
    p.add_argument(
        "--max-execs",
        type=positive,
        default=10_000,
        metavar="N",
        help="execs kept in memory (default 10000; the oldest finished go first)",
    )
    p.add_argument(
        "--allow-control",
        action="store_true",
        help="let users log in with broker credentials and kill execs (as that AMQP user)",
    )
    p.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a host name browsers reach the console by, beyond localhost and the listen "
        "address (repeatable; '*' accepts any: no DNS-rebinding protection)",
    )
    p.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="log level (default info)",
    )
    return p


def allowed_hosts(listen_host: str, extra: list[str]) -> list[str]:
    hosts = ["127.0.0.1", "localhost", "::1", "[::1]", *extra]
    if listen_host not in ("0.0.0.0", "::", ""):
        hosts += [listen_host, f"[{listen_host}]"]
    return sorted(set(hosts))


async def serve(args: argparse.Namespace, settings: Settings) -> int:
    try:
        import uvicorn

        from execbus.console.app import ConsoleApp
    except ImportError as exc:
        raise ConfigError(
            f"the console needs the 'console' extra ({exc.name} is missing): "
            "pip install 'execbus[console]'"
        ) from None
    from execbus.console.auth import Sessions
    from execbus.console.feed import BusFeed
    from execbus.console.metrics import ConsoleMetrics
    from execbus.console.store import ConsoleStore

    class Server(uvicorn.Server):
        """uvicorn without its own signal handling: ours stops the feed too."""

        @contextlib.contextmanager
        def capture_signals(self) -> Generator[None, None, None]:
            yield

    host, port = args.listen
    store = ConsoleStore(args.max_execs, expiry=settings.peer_expiry)
    metrics = ConsoleMetrics(store)
    sessions = Sessions(settings) if args.allow_control else None
    console = ConsoleApp(
        store,
        metrics,
        namespace=settings.namespace,
        sessions=sessions,
        allowed_hosts=allowed_hosts(host, args.allowed_host),
    )
    config = uvicorn.Config(
        console.app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=3,
        server_header=False,
    )
    server = Server(config)

    def stop() -> None:
        server.should_exit = True
        console.closing.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    feed = asyncio.create_task(BusFeed(settings, store, metrics).run(), name="console-feed")
    announce = asyncio.create_task(_announce(server, settings.namespace))
    try:
        await server.serve()
    finally:
        for task in (feed, announce):
            task.cancel()
        await asyncio.gather(feed, announce, return_exceptions=True)
        if sessions is not None:
            await sessions.close()
    return 0 if server.started else 1


async def _announce(server: object, namespace: str) -> None:
    """Say where the console listens (port 0: the port picked), once it does."""
    while not getattr(server, "started", False):
        await asyncio.sleep(0.05)
    for listener in getattr(server, "servers", []):
        for sock in listener.sockets:
            host, port = sock.getsockname()[:2]
            shown = f"[{host}]" if ":" in host else host
            print(
                f"execbus console: http://{shown}:{port}/ (namespace {namespace})",
                file=sys.stderr,
                flush=True,
            )


def main(argv: list[str]) -> int:
    """``execbus console``."""
    args = build_parser().parse_args(argv)
    logging.getLogger("execbus").setLevel(args.log_level.upper())
    return execute(serve, args)
