"""Structured logging to stderr, text lines or JSON lines: the one formatter of execbus.

Code logs with ``extra={...}`` fields (``exec_id``, ``pid``, ``agent``, ...);
both formats print them, as a :class:`FieldPolicy` says: the agent's
(:data:`EVERY_EXTRA`) prints every extra in the order given; the worker's
(``execbus.logs``) puts its context fields first and leaves out the empty
ones. The worker embeds this formatter, so the in-process agent's lines keep
their own fields there. Env values and stdin bytes are never passed to a logger.

* JSON: one object per line, ``ts`` (UTC, ISO 8601, milliseconds, ``Z``),
  ``level``, ``logger``, ``msg``, then the fields (and ``exc``, a traceback).
* Text: ``<ts> <LEVEL> <logger>: <msg> key=value ...``, with the same ``ts``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from execbus.agent.compat import slots_dataclass

__all__ = ["EVERY_EXTRA", "FieldPolicy", "JsonFormatter", "TextFormatter", "setup_logging"]

_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


def _timestamp(record: logging.LogRecord) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{stamp}.{int(record.msecs):03d}Z"


@slots_dataclass(frozen=True)
class FieldPolicy:
    """Which extra fields a line shows: ``first`` in that order, then every other
    extra in the order given; ``None`` values left out if ``drop_none``."""

    first: tuple[str, ...] = ()
    drop_none: bool = False

    def fields(self, record: logging.LogRecord) -> dict[str, Any]:
        extras = _extras(record)
        fields = {key: extras.pop(key) for key in self.first if key in extras}
        fields.update(extras)
        if self.drop_none:
            return {key: value for key, value in fields.items() if value is not None}
        return fields


EVERY_EXTRA = FieldPolicy()


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg and the extra fields."""

    def __init__(self, policy: FieldPolicy = EVERY_EXTRA) -> None:
        super().__init__()
        self.policy = policy

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(self.policy.fields(record))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``<ts> <LEVEL> <logger>: <msg> key=value ...``."""

    def __init__(self, policy: FieldPolicy = EVERY_EXTRA) -> None:
        super().__init__()
        self.policy = policy

    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{k}={v}" for k, v in self.policy.fields(record).items())
        line = f"{_timestamp(record)} {record.levelname} {record.name}: {record.getMessage()}"
        if fields:
            line = f"{line} {fields}"
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        return line


def setup_logging(
    level: str = "info", fmt: str = "text", policy: FieldPolicy = EVERY_EXTRA
) -> None:
    """Send every log line of the process to stderr in the chosen format (the root logger)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(policy) if fmt == "json" else TextFormatter(policy))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
