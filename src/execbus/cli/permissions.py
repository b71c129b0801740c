"""``execbus permissions``: the RabbitMQ permissions of a caller, an observer or a worker."""

from __future__ import annotations

import argparse
import sys

from execbus.cli.common import command_parser
from execbus.wire.permissions import ROLES, permissions

DESCRIPTION = """\
Print the rabbitmqctl commands that give a RabbitMQ user exactly what its role
needs in a namespace (docs/security.md explains each permission):

  caller    publish requests to the agents it may use, read its own replies,
            follow those agents' events; configure (= create and delete) only
            its own queues <ns>.client.<user>.* and server-named amq.gen-*
  observer  follow events and worker announcements (execbus status, console)
  worker    everything of the namespace, server-named queues, the default exchange
"""


def build_parser() -> argparse.ArgumentParser:
    p = command_parser(
        "permissions",
        DESCRIPTION,
        "example:\n  execbus permissions caller --user ci-7 --agents 'vm-.*' | sh\n",
    )
    p.add_argument("role", choices=ROLES, help="what the user is for")
    p.add_argument("--user", required=True, help="the RabbitMQ user name")
    p.add_argument(
        "--namespace", default="execbus", metavar="NS", help="the namespace (default: execbus)"
    )
    p.add_argument(
        "--agents",
        default=".*",
        metavar="REGEX",
        help="agents and pools a caller may address and follow (a regex; default: all)",
    )
    p.add_argument("--vhost", default="/", help="the RabbitMQ vhost (default: /)")
    return p


def main(argv: list[str]) -> int:
    """``execbus permissions``."""
    args = build_parser().parse_args(argv)
    granted = permissions(args.role, args.user, args.namespace, args.agents)
    sys.stdout.write("\n".join(granted.commands(args.vhost)) + "\n")
    return 0
