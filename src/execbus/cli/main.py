"""``execbus``: one command, several roles (worker, agent, run, inspect, ps, kill, events, ...).

The ``agent`` subcommand is dispatched before anything else is imported, so
it runs with the standard library only.
"""

from __future__ import annotations

import sys

USAGE = """usage: execbus [-h] COMMAND ...

Run commands inside containers and VM guests, over RabbitMQ.

commands:
  run        run a command on an agent, like `docker exec` (streams output, exits with its code)
  inspect    show one exec
  ps         list execs of an agent
  kill       send a signal to an exec
  events     follow exec events as JSON lines
  status     live workers, the agents they own, queue depths
  console    a live web view of the fleet and the execs (`pip install 'execbus[console]'`)
  purge      delete every queue and exchange of a stopped namespace
  permissions  the RabbitMQ permissions of a caller, observer or worker (rabbitmqctl lines)
  worker     serve agents: consume exec requests, drive the agents, publish results
  agent      the guest agent daemon (standard library only)
  agent-bundle  write the agent as one file for guests (python3 >= 3.9, nothing installed)
  config     show the configuration settings (EXECBUS_* variables)

Run `execbus COMMAND --help` for the options of a command.
Settings come from EXECBUS_* environment variables (see `execbus config`).
"""

COMMANDS = {
    "run": "execbus.cli.commands:run_main",
    "inspect": "execbus.cli.commands:inspect_main",
    "ps": "execbus.cli.commands:ps_main",
    "kill": "execbus.cli.commands:kill_main",
    "events": "execbus.cli.commands:events_main",
    "status": "execbus.cli.commands:status_main",
    "console": "execbus.console.cli:main",
    "purge": "execbus.cli.purge:main",
    "permissions": "execbus.cli.permissions:main",
    "worker": "execbus.cli.worker:main",
    "agent": "execbus.agent.cli:main",
    "agent-bundle": "execbus.cli.bundle:main",
    "config": "execbus.cli.config:main",
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``execbus`` console script."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0 if args else 2
    if args[0] == "--version":
        from execbus import __version__

        print(f"execbus {__version__}")
        return 0
    target = COMMANDS.get(args[0])
    if target is None:
        print(f"execbus: unknown command {args[0]!r}; see `execbus --help`", file=sys.stderr)
        return 2
    module_name, func_name = target.split(":")
    import importlib

    func = getattr(importlib.import_module(module_name), func_name)
    result: int = func(args[1:])
    return result


if __name__ == "__main__":
    sys.exit(main())
