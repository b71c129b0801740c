"""The user commands: ``run``, ``inspect``, ``ps``, ``kill``, ``events`` and ``status``.

Each ``<name>_main(argv) -> int`` parses its arguments, builds the settings
(environment plus ``--amqp-url``/``--namespace``) and talks to the workers
through :class:`execbus.Client`. Errors are one line on stderr; see
:mod:`execbus.cli.common` for the exit codes.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
from collections.abc import Awaitable
from typing import Any, TypeVar

from execbus.agent.signals import install_shutdown
from execbus.cli.common import (
    EnvFileError,
    add_agent_arg,
    add_target_args,
    env_entry,
    execute,
    key_value,
    new_parser,
    non_negative_int,
    positive_seconds,
    read_env_file,
)
from execbus.cli.render import list_json, ps_table, to_json
from execbus.cli.run import RunSession, exec_options
from execbus.client import Client, Subscription
from execbus.client.cluster import ClusterStatus
from execbus.settings import Settings
from execbus.wire.config import DEFAULT_OUTPUT_LIMIT
from execbus.wire.events import EVENT_KINDS
from execbus.wire.records import ExecState

T = TypeVar("T")

# -- run ---------------------------------------------------------------------

RUN_DESCRIPTION = """\
Run a command on an agent, like `docker exec`: its stdout and stderr stream
to yours as it runs, and execbus exits with the command's exit status.

With --pool instead of --agent, a worker serving the pool runs it on the
pool's least-loaded agent (named on stderr with --detach, and in the hints).

With -it your terminal is put in raw mode and every keystroke (Ctrl-C too)
goes to the remote terminal, which follows your window size. Otherwise
Ctrl-C (SIGINT), SIGTERM and SIGHUP are passed on to the command; a second
one stops waiting and leaves the command running.

With --json the output is not streamed: when the command ends, its exec
record is printed as JSON on stdout, as `execbus inspect` prints it, with
the captured output (exit.stdout/exit.stderr, base64; at most
--output-limit bytes per stream, the rest counted in exit.stdout_dropped/
stderr_dropped). stderr then carries execbus's own messages only, and the
exit status is the command's, as without --json. With -d, --json prints
the record of the started exec instead of its id.

With --timeout, a command still running after SECONDS is killed with its
whole process group; execbus then says `execbus: timed out after SECONDS s;
killed` on stderr and exits 124, like timeout(1).

Secrets: pass them as `-e KEY` or in an --env-file, not as `-e KEY=VALUE`
(the command line is visible to every user of this machine in `ps`), or
better on stdin (-i). Env values and stdin never appear in execbus's logs,
whatever EXECBUS_LOG_LEVEL says; the exec's record shows env keys only.
"""

RUN_EPILOG = """\
examples:
  execbus run --agent local -- uname -a
  execbus run --agent vm1 --container web -e MODE=debug -w /srv -- ./check.sh
  echo hello | execbus run -i --agent local -- cat
  execbus run -it --agent local -- sh            (an interactive shell)
  execbus run -d --agent local -- sleep 600     (prints the exec id)
  execbus run --pool gpu -- nvidia-smi          (on any agent of the pool)
  execbus run -d --pool gpu -- ./train.sh       (exec id on stdout, agent on stderr)
  TOKEN=... execbus run --agent vm1 -e TOKEN -- ./deploy.sh   (TOKEN's value from here)
  execbus run --agent vm1 --env-file prod.env -- ./deploy.sh
  execbus run --json --agent local -- make test | jq .exit.exit_code
  execbus run --agent local --timeout 60 -- ./check.sh; [ $? = 124 ] && echo "timed out"

env files (--env-file), docker's format:
  # a comment (also after leading blanks); blank lines are skipped
  MODE=debug          KEY=VALUE: the value is the rest of the line, verbatim
                      (no quotes, no escapes, no $expansion)
  TOKEN               KEY alone: the value of TOKEN in this environment
  Files are read in order, then -e entries; a later KEY replaces an earlier one.
  A KEY alone that is not set here is an error; errors name the file and the
  line, never a value.
"""


def build_run_parser() -> argparse.ArgumentParser:
    p = new_parser("run", RUN_DESCRIPTION, RUN_EPILOG)
    add_target_args(p)
    p.add_argument("--container", "-c", default="", metavar="ID", help="run in this container")
    p.add_argument(
        "-e",
        "--env",
        action="append",
        type=env_entry,
        default=[],
        metavar="KEY[=VALUE]",
        help="set an environment variable (repeatable); KEY alone takes its value from "
        "this environment (for secrets: the command line is visible in `ps`)",
    )
    p.add_argument(
        "--env-file",
        action="append",
        default=[],
        metavar="FILE",
        help="read environment variables from FILE (repeatable; format below)",
    )
    p.add_argument("-u", "--user", help="user: name, uid, uid:gid or name:group")
    p.add_argument("-w", "--workdir", metavar="DIR", help="working directory (absolute path)")
    p.add_argument("-t", "--tty", action="store_true", help="allocate a pseudo-terminal")
    p.add_argument("-i", "--interactive", action="store_true", help="forward stdin")
    p.add_argument("--privileged", action="store_true", help="extended privileges (containers)")
    p.add_argument(
        "--timeout",
        type=positive_seconds,
        metavar="SECONDS",
        help="kill the command (its process group) after SECONDS; execbus then exits 124",
    )
    p.add_argument(
        "--output-limit",
        type=non_negative_int,
        metavar="BYTES",
        help=f"bytes of each stream kept in the exec's record (default {DEFAULT_OUTPUT_LIMIT}; "
        "the worker allows up to EXECBUS_MAX_OUTPUT_LIMIT); streaming is not limited",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="do not stream the output: print the final exec record as JSON, output included",
    )
    p.add_argument(
        "-d",
        "--detach",
        action="store_true",
        help="start it, print the exec id (with --json: its record) and return",
    )
    p.add_argument("--exec-id", metavar="ID", help="the exec id (an idempotency key)")
    p.add_argument(
        "-l",
        "--label",
        action="append",
        type=key_value,
        default=[],
        metavar="KEY=VALUE",
        help="a label on the exec and its events (repeatable)",
    )
    p.add_argument(
        "cmd",
        nargs=argparse.REMAINDER,
        metavar="-- CMD [ARG...]",
        help="the command and its arguments (argv, no shell), after `--`",
    )
    return p


def parse_run_args(argv: list[str]) -> argparse.Namespace:
    parser = build_run_parser()
    args = parser.parse_args(argv)
    if args.cmd and args.cmd[0] == "--":
        args.cmd = args.cmd[1:]
    if not args.cmd:
        parser.error("no command given; put it after `--`")
    if args.detach and args.interactive:
        parser.error("--interactive cannot be combined with --detach")
    if args.json and args.tty and args.interactive:
        parser.error("--json does not stream the output, so it cannot drive a terminal (-it)")
    try:
        args.environment = merged_env(args.env_file, args.env)
    except EnvFileError as exc:
        parser.error(str(exc))
    return args


def merged_env(files: list[str], entries: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The env files in order, then the ``-e`` entries; a later KEY replaces an earlier one."""
    merged: dict[str, str] = {}
    for path in files:
        merged.update(read_env_file(path))
    merged.update(entries)
    return list(merged.items())


async def run_command(args: argparse.Namespace, settings: Settings) -> int:
    async with Client(settings=settings) as client:
        if args.detach:
            info = await client.run(
                args.agent,
                args.cmd,
                pool=args.pool,
                exec_id=args.exec_id,
                detach=True,
                **exec_options(args),
            )
            print(to_json(info) if args.json else info.exec_id, flush=True)
            if args.pool is not None:  # stdout stays the exec id alone, for scripts
                print(f"agent: {info.agent}", file=sys.stderr, flush=True)
            return 0
        return await RunSession(client, args).run()


def run_main(argv: list[str]) -> int:
    """``execbus run``."""
    return execute(run_command, parse_run_args(argv))


# -- inspect -----------------------------------------------------------------


def build_inspect_parser() -> argparse.ArgumentParser:
    p = new_parser("inspect", "Show one exec as JSON (state, command, exit, output).")
    p.add_argument("exec_id", metavar="EXEC_ID")
    p.add_argument(
        "--no-output",
        dest="output",
        action="store_false",
        help="leave the captured stdout/stderr out (a smaller reply)",
    )
    add_agent_arg(p)
    return p


async def inspect_command(args: argparse.Namespace, settings: Settings) -> int:
    async with Client(settings=settings) as client:
        info = await client.inspect(args.agent, args.exec_id, include_output=args.output)
        print(to_json(info), flush=True)
    return 0


def inspect_main(argv: list[str]) -> int:
    """``execbus inspect``."""
    return execute(inspect_command, build_inspect_parser().parse_args(argv))


# -- ps ----------------------------------------------------------------------


def build_ps_parser() -> argparse.ArgumentParser:
    p = new_parser("ps", "List the execs of an agent (running ones, unless --all).")
    add_agent_arg(p)
    p.add_argument("--container", "-c", metavar="ID", help="only the execs of this container")
    p.add_argument("--all", "-A", action="store_true", help="also created and finished execs")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


async def ps_command(args: argparse.Namespace, settings: Settings) -> int:
    async with Client(settings=settings) as client:
        execs = await client.list(args.agent, args.container, include_finished=args.all)
    if not args.all:
        execs = [info for info in execs if info.state is ExecState.RUNNING]
    print(list_json(execs) if args.json else ps_table(execs), flush=True)
    return 0


def ps_main(argv: list[str]) -> int:
    """``execbus ps``."""
    return execute(ps_command, build_ps_parser().parse_args(argv))


# -- kill --------------------------------------------------------------------


def build_kill_parser() -> argparse.ArgumentParser:
    p = new_parser(
        "kill",
        "Send a signal to an exec's process group (prints the exec id).",
        "example:\n  execbus kill 3f2a... --agent local --signal TERM\n",
    )
    p.add_argument("exec_id", metavar="EXEC_ID")
    add_agent_arg(p)
    p.add_argument(
        "--signal",
        "-s",
        default="SIGKILL",
        metavar="SIG",
        help="name (KILL, SIGTERM) or number (default SIGKILL)",
    )
    return p


async def kill_command(args: argparse.Namespace, settings: Settings) -> int:
    async with Client(settings=settings) as client:
        await client.signal(args.agent, args.exec_id, args.signal)
    print(args.exec_id, flush=True)
    return 0


def kill_main(argv: list[str]) -> int:
    """``execbus kill``."""
    return execute(kill_command, build_kill_parser().parse_args(argv))


# -- events ------------------------------------------------------------------


def build_events_parser() -> argparse.ArgumentParser:
    p = new_parser(
        "events",
        "Follow exec events as JSON lines (one per event) until interrupted (Ctrl-C).",
        "example:\n  execbus events --agent local --kind exited | jq .exit.exit_code\n",
    )
    add_agent_arg(p, required=False)
    p.add_argument("--container", "-c", metavar="ID", help="only events of this container")
    p.add_argument("--kind", "-k", choices=EVENT_KINDS, help="only events of this kind")
    return p


async def events_command(args: argparse.Namespace, settings: Settings) -> int:
    stop = asyncio.Event()
    install_shutdown(asyncio.get_running_loop(), stop)  # a second signal exits at once
    async with Client(settings=settings) as client:
        await print_events(client.events(args.agent, args.container, args.kind), stop)
    return 0


async def print_events(events: Subscription, stop: asyncio.Event) -> None:
    """Print each event as a JSON line (flushed) until ``stop`` is set."""
    stopped = asyncio.ensure_future(stop.wait())
    try:
        async with events:
            while (event := await _until(anext(events, None), stopped)) is not None:
                sys.stdout.write(event.model_dump_json() + "\n")
                sys.stdout.flush()
    finally:
        stopped.cancel()


async def _until(step: Awaitable[T], stopped: asyncio.Future[Any]) -> T | None:
    """``step``'s result, or ``None`` if ``stopped`` completes first."""
    task = asyncio.ensure_future(step)
    waiting: list[asyncio.Future[Any]] = [task, stopped]
    await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        return task.result()
    task.cancel()
    return None


def events_main(argv: list[str]) -> int:
    """``execbus events``."""
    return execute(events_command, build_events_parser().parse_args(argv))


# -- status ------------------------------------------------------------------


def build_status_parser() -> argparse.ArgumentParser:
    p = new_parser(
        "status",
        "Show the live workers, the agents each owns, and the depth of every agent "
        "queue (listens to worker announcements for --listen seconds). With --agent, "
        "also check that a worker serves each named agent (exit 1 if one is not).",
    )
    p.add_argument(
        "--agent",
        "-a",
        action="append",
        default=[],
        metavar="NAME",
        help="an agent to check (repeatable)",
    )
    p.add_argument(
        "--listen",
        type=positive_seconds,
        default=2.5,
        metavar="SECONDS",
        help="seconds to listen (default 2.5)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    return p


async def status_command(args: argparse.Namespace, settings: Settings) -> int:
    async with Client(settings=settings) as client:
        status = await client.cluster_status(args.listen, args.agent)
        unserved = [a for a in args.agent if not (status.queues[a].consumers or 0)]
        if args.json:
            print(json.dumps(dataclasses.asdict(status), indent=2))
        else:
            print_status(status, settings.namespace)
        for agent in unserved:
            print(f"agent {agent}: NOT served (no worker consumes its queue)", file=sys.stderr)
    return 1 if unserved else 0


def print_status(status: ClusterStatus, namespace: str) -> None:
    print(f"namespace {namespace!r}: {len(status.workers)} live worker(s)")
    print(f"{'WORKER':<14} {'OWNS':>4} {'LOAD':>5}  AGENTS OWNED")
    for w in status.workers:
        print(f"{w.worker_id:<14} {len(w.owned):>4} {w.load:>5}  {' '.join(sorted(w.owned))}")
    print()
    print(f"{'QUEUE':<24} {'OWNER':<14} {'QUEUED':>7} {'CONSUMERS':>9}  LINK")
    for name, q in status.queues.items():
        owner = status.owner_of(name) or "-"
        queued = "-" if q.messages is None else str(q.messages)
        consumers = "-" if q.consumers is None else str(q.consumers)
        print(f"{name:<24} {owner:<14} {queued:>7} {consumers:>9}  {_link_text(status, name)}")


def _link_text(status: ClusterStatus, name: str) -> str:
    """``connected``, or ``DOWN (code): reason`` for an agent queue; "-" for pools."""
    link = status.link_of(name)
    if link is None:
        return "-"
    if link.get("connected"):
        return "connected"
    return f"DOWN ({link.get('code', '?')}): {link.get('reason', '')}"


def status_main(argv: list[str]) -> int:
    """``execbus status``."""
    return execute(status_command, build_status_parser().parse_args(argv))
