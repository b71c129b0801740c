"""``execbus config``: the settings in force (``EXECBUS_*``), or the README's table of them.

The AMQP password is shown as ``***``, as the logs show it
(:func:`execbus.broker.redact_url`): the output is meant to be pasted into
bug reports and CI logs.
"""

from __future__ import annotations

import argparse
import json
import sys

from execbus.broker import redact_url
from execbus.cli.common import EXIT_USAGE, command_parser
from execbus.errors import ConfigError
from execbus.settings import Settings, load_settings

DESCRIPTION = """\
Show the execbus settings in force, as JSON: each EXECBUS_* environment
variable's value, or its default. The password of EXECBUS_AMQP_URL is shown
as *** (as in the logs). With --markdown, the table of every setting
(README.md's "Configuration" section) instead.
"""

EPILOG = """\
exit status:
  0        success
  2        invalid arguments, or an EXECBUS_* variable has an invalid value
"""


def build_parser() -> argparse.ArgumentParser:
    p = command_parser("config", DESCRIPTION, EPILOG)
    p.add_argument("--markdown", action="store_true", help="print the settings table of README.md")
    return p


def shown(settings: Settings) -> dict[str, object]:
    """The settings as JSON-able values, secrets redacted."""
    values: dict[str, object] = settings.model_dump(mode="json")
    values["amqp_url"] = redact_url(settings.amqp_url)
    return values


def main(argv: list[str]) -> int:
    """``execbus config``."""
    args = build_parser().parse_args(argv)
    if args.markdown:
        print(settings_table())
        return 0
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"execbus config: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps(shown(settings), indent=2))
    return 0


def settings_table() -> str:
    """The configuration table, generated from :class:`Settings`."""
    rows = ["| Variable | Default | Meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        value = "" if default is None else json.dumps(default, default=str)
        rows.append(f"| `EXECBUS_{name.upper()}` | `{value}` | {field.description or ''} |")
    return "\n".join(rows)
