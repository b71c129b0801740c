"""What every user command shares: parser conventions, settings, errors and exit codes.

Exit codes follow ``docker exec``: the command's own status when it ran
(128+n when killed by signal n), 125 when execbus itself failed (broker
unreachable, unknown agent, exec not found, invalid configuration), 126/127
when the command could not be executed or found, 2 for invalid arguments.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Any, NoReturn

from execbus import loops
from execbus.client.results import exit_code_of
from execbus.errors import ExecbusError, StartFailed
from execbus.settings import Settings, load_settings

EXIT_USAGE = 2
EXIT_EXECBUS = 125

EXIT_STATUS_HELP = """\
exit status:
  0        success
  2        invalid command-line arguments
  125      execbus itself failed: broker unreachable, no worker serves the agent,
           exec not found, invalid configuration
  126/127  (run) the command could not be executed / was not found
  N        (run) the command's own exit status; 128+n when killed by signal n
"""

CONNECTION_HELP = """\
connection:
  The broker and namespace come from --amqp-url/--namespace, else from
  EXECBUS_AMQP_URL / EXECBUS_NAMESPACE (see `execbus config`).
"""


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (``execbus CMD: ...``) and exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


def new_parser(command: str, description: str, epilog: str = "") -> Parser:
    """A parser for ``execbus <command>`` with the shared connection flags."""
    parser = Parser(
        prog=f"execbus {command}",
        description=description,
        epilog="\n".join(part for part in (epilog, CONNECTION_HELP, EXIT_STATUS_HELP) if part),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--amqp-url", metavar="URL", help="RabbitMQ URL (env EXECBUS_AMQP_URL)")
    parser.add_argument(
        "--namespace", metavar="NS", help="exchange/queue prefix (env EXECBUS_NAMESPACE)"
    )
    return parser


def add_agent_arg(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """``--agent NAME``: the agent (guest) the command talks to."""
    parser.add_argument(
        "--agent",
        "-a",
        required=required,
        metavar="NAME",
        help="the agent (guest) to talk to, as its worker serves it (e.g. local)",
    )


def add_target_args(parser: argparse.ArgumentParser) -> None:
    """``--agent NAME`` or ``--pool NAME`` (exactly one): where a new exec goes."""
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument(
        "--agent",
        "-a",
        metavar="NAME",
        help="the agent (guest) to run on, as its worker serves it (e.g. local)",
    )
    group.add_argument(
        "--pool",
        metavar="NAME",
        help="a pool of agents instead: a worker serving the pool picks its least-loaded agent",
    )


def key_value(text: str) -> tuple[str, str]:
    """An argparse type for ``KEY=VALUE``; a clear error without ``=`` or with an empty key."""
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE (no '=')")
    if not key:
        raise argparse.ArgumentTypeError(f"{text!r} has an empty KEY")
    return key, value


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings from the environment plus ``--amqp-url`` / ``--namespace``."""
    return load_settings(amqp_url=args.amqp_url, namespace=args.namespace)


def quiet_libraries() -> None:
    """Keep aio-pika's logging off the terminal (we report errors); all of it with
    ``EXECBUS_LOG_LEVEL=debug``."""
    debug = os.environ.get("EXECBUS_LOG_LEVEL") == "debug"
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="execbus: %(name)s: %(message)s",
    )
    for name in ("aio_pika", "aiormq"):
        logging.getLogger(name).setLevel(logging.DEBUG if debug else logging.CRITICAL)


def fail(message: str, code: int = EXIT_EXECBUS) -> int:
    """Print ``execbus: message`` on stderr and return ``code``."""
    print(f"execbus: {message}", file=sys.stderr, flush=True)
    return code


def execute(
    main: Callable[[argparse.Namespace, Settings], Coroutine[Any, Any, int]],
    args: argparse.Namespace,
) -> int:
    """Run an async command; execbus errors become one line on stderr and an exit code."""
    quiet_libraries()
    try:
        settings = settings_from_args(args)
        return loops.run(main(args, settings), settings.event_loop)
    except StartFailed as exc:
        return fail(exc.message, exit_code_of(exc) or EXIT_EXECBUS)
    except ExecbusError as exc:
        return fail(exc.message)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`execbus events | head`): not an error.
        _silence_stdout()
        return 0


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
