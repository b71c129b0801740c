"""What every user command shares: parser conventions, settings, errors and exit codes.

Exit codes follow ``docker exec``: the command's own status when it ran
(128+n when killed by signal n), 125 when execbus itself failed (broker
unreachable, unknown agent, exec not found, invalid configuration), 126/127
when the command could not be executed or found, 2 for invalid arguments;
124 when ``run --timeout`` killed the command (the ``timeout(1)`` convention).

Secrets: ``run`` takes env values from ``-e KEY=VALUE``, ``-e KEY`` (this
process's environment) and ``--env-file``; none of them, nor stdin, ever
reaches a log line: the AMQP libraries, whose debug output dumps every frame
(message bodies included), are never let through, whatever the level.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Any, NoReturn

from execbus import loops
from execbus.client.results import exit_code_of
from execbus.errors import ExecbusError, StartFailed
from execbus.settings import Settings, load_settings

EXIT_USAGE = 2
EXIT_TIMEOUT = 124
EXIT_EXECBUS = 125

EXIT_STATUS_HELP = """\
exit status:
  0        success
  2        invalid command-line arguments
  124      (run) --timeout expired: the command was killed (`execbus: timed out after
           N s; killed` on stderr; its record says "timed_out": true)
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


def command_parser(command: str, description: str, epilog: str = "") -> Parser:
    """A parser for ``execbus <command>``; its description and epilog keep their line breaks."""
    return Parser(
        prog=f"execbus {command}",
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def new_parser(command: str, description: str, epilog: str = "") -> Parser:
    """A parser for ``execbus <command>`` with the shared connection flags."""
    parser = command_parser(
        command,
        description,
        "\n".join(part for part in (epilog, CONNECTION_HELP, EXIT_STATUS_HELP) if part),
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


def positive_seconds(text: str) -> float:
    """An argparse type for a duration: a finite number of seconds above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds above 0")
    return value


def non_negative_int(text: str) -> int:
    """An argparse type for a count of bytes: an integer, 0 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative")
    return value


def env_entry(text: str) -> tuple[str, str]:
    """An argparse type for ``-e``: ``KEY=VALUE``, or ``KEY`` alone, whose value is taken
    from this process's environment (like ``docker run -e KEY``), so a secret need not
    be on the command line. Errors name the key, never a value."""
    key, sep, value = text.partition("=")
    if not key:
        raise argparse.ArgumentTypeError("an entry has an empty KEY (KEY=VALUE or KEY)")
    if sep:
        return key, value
    if key not in os.environ:
        raise argparse.ArgumentTypeError(
            f"{key} is not set in this environment (-e KEY takes its value from there; "
            "or give KEY=VALUE)"
        )
    return key, os.environ[key]


class EnvFileError(Exception):
    """An env file cannot be used; the message names the file and line, never a value."""


def read_env_file(path: str) -> list[tuple[str, str]]:
    """The entries of an env file, in docker's ``--env-file`` format.

    Each line is ``KEY=VALUE`` (the value taken verbatim to the end of the line:
    no quotes, no escapes, no expansion), or ``KEY`` alone (its value taken from
    this process's environment); lines starting with ``#`` (after leading
    whitespace) and blank lines are skipped. Unlike docker, a ``KEY`` missing
    from the environment is an error, not silently left out.
    """
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as exc:
        raise EnvFileError(f"--env-file {path}: cannot read it: {exc.strerror or exc}") from None
    entries: list[tuple[str, str]] = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if number == 1:
            raw = raw.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte order mark
        where = f"--env-file {path} line {number}"
        try:
            line = raw.decode().removesuffix("\r").lstrip()
        except UnicodeDecodeError:
            raise EnvFileError(f"{where}: not UTF-8 text") from None
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not key:
            raise EnvFileError(f"{where}: no variable name before '='")
        if any(c.isspace() for c in key) or "\0" in key:
            raise EnvFileError(f"{where}: not KEY=VALUE or KEY (the name has whitespace)")
        if "\0" in value:
            raise EnvFileError(f"{where}: the value of {key} has a NUL byte")
        if not sep:
            if key not in os.environ:
                raise EnvFileError(
                    f"{where}: {key} is not set in this environment "
                    "(a line with KEY alone takes its value from there)"
                )
            value = os.environ[key]
        entries.append((key, value))
    return entries


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings from the environment plus ``--amqp-url`` / ``--namespace``."""
    return load_settings(amqp_url=args.amqp_url, namespace=args.namespace)


# What the AMQP libraries may log, at most: aiormq's debug lines dump every frame
# (request bodies: env values and stdin), and its errors may show a returned
# message whole; aio-pika's info lines name channels and queues, never bodies.
LIBRARY_LEVELS = {"aio_pika": logging.INFO, "aiormq": logging.CRITICAL + 1}


class _LibraryFilter(logging.Filter):
    """Drops library records below :data:`LIBRARY_LEVELS`, whoever set their loggers' levels."""

    def filter(self, record: logging.LogRecord) -> bool:
        top = record.name.partition(".")[0]
        return record.levelno >= LIBRARY_LEVELS.get(top, logging.NOTSET)


def quiet_libraries() -> None:
    """Keep the AMQP libraries' logging off the terminal (execbus reports the errors in
    one line); with ``EXECBUS_LOG_LEVEL=debug``, execbus's own debug lines and aio-pika's
    info lines, but never a frame dump (see :data:`LIBRARY_LEVELS`)."""
    debug = os.environ.get("EXECBUS_LOG_LEVEL") == "debug"
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="execbus: %(name)s: %(message)s",
    )
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _LibraryFilter) for f in handler.filters):
            handler.addFilter(_LibraryFilter())
    for name, level in LIBRARY_LEVELS.items():
        logging.getLogger(name).setLevel(level if debug else logging.CRITICAL + 1)


def fail(message: str, code: int = EXIT_EXECBUS) -> int:
    """Print ``execbus: message`` on stderr, as one line, and return ``code``."""
    print(f"execbus: {' '.join(message.split())}", file=sys.stderr, flush=True)
    return code


def execute(
    main: Callable[[argparse.Namespace, Settings], Coroutine[Any, Any, int]],
    args: argparse.Namespace,
) -> int:
    """Run an async command; execbus errors become one line on stderr and an exit code."""
    standard_streams()
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
    except Exception as exc:
        # Nothing execbus expects (those are ExecbusErrors): a bug, or a failure
        # nobody translated. Still one line; the traceback at debug level.
        if os.environ.get("EXECBUS_LOG_LEVEL") == "debug":
            raise
        return fail(
            f"unexpected error: {type(exc).__name__}: {exc} "
            "(EXECBUS_LOG_LEVEL=debug shows the traceback; please report it)"
        )


def standard_streams() -> None:
    """Make closed standard streams (``execbus run -i <&-``) ``/dev/null``.

    Otherwise the next file the CLI opens takes the free number: the event
    loop's epoll became "stdin", and ``-i`` waited on it forever."""
    for fd, name, mode in ((0, "stdin", "r"), (1, "stdout", "w"), (2, "stderr", "w")):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
        if getattr(sys, name) is None:
            setattr(sys, name, open(fd, mode, closefd=False))  # noqa: SIM115 (kept open)


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
