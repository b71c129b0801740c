"""The sizes this worker accepts in an exec's configuration (``EXECBUS_MAX_*``)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields

from execbus.errors import ErrorCode, LimitExceeded
from execbus.settings import Settings
from execbus.wire.config import ExecConfig


class RequestTooLarge(LimitExceeded):
    """The request is over one of this worker's size limits (``limit_exceeded``)."""

    code = ErrorCode.LIMIT_EXCEEDED


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """Sizes this worker accepts in an exec's configuration (``EXECBUS_MAX_*``).

    The wire contract has fixed upper bounds (``execbus.wire.config``); these
    let an operator go lower. Checked before the agent is touched.
    """

    max_argv_entries: int
    max_argv_bytes: int
    max_env_entries: int
    max_env_bytes: int
    max_output_limit: int

    @classmethod
    def from_settings(cls, settings: Settings) -> RequestLimits:
        """Each limit is the setting of the same name."""
        return cls(**{f.name: getattr(settings, f.name) for f in fields(cls)})

    def check(self, config: ExecConfig) -> None:
        """Raise :class:`RequestTooLarge` naming the limit and its setting (never a value)."""
        _at_most(len(config.cmd), self.max_argv_entries, "cmd has {} arguments", "ARGV_ENTRIES")
        _at_most(_size(config.cmd), self.max_argv_bytes, "cmd is {} bytes", "ARGV_BYTES")
        _at_most(len(config.env), self.max_env_entries, "env has {} entries", "ENV_ENTRIES")
        _at_most(_size(config.env), self.max_env_bytes, "env is {} bytes", "ENV_BYTES")
        _at_most(
            config.output_limit, self.max_output_limit, "output_limit is {} bytes", "OUTPUT_LIMIT"
        )


def _size(items: Iterable[str]) -> int:
    return sum(len(item.encode()) for item in items)


def _at_most(value: int, limit: int, what: str, setting: str) -> None:
    if value > limit:
        raise RequestTooLarge(
            f"{what.format(value)}; this worker accepts at most {limit} (EXECBUS_MAX_{setting})"
        )
