"""Signal names and numbers, as the protocol spells them."""

from __future__ import annotations

import signal

from execbus.agent.errors import INVALID, AgentError


def signal_name(number: int) -> str:
    """``9`` → ``"SIGKILL"``; real-time signals as ``"SIGRTMIN+n"``."""
    try:
        return signal.Signals(number).name
    except ValueError:
        if signal.SIGRTMIN <= number <= signal.SIGRTMAX:
            return f"SIGRTMIN+{number - signal.SIGRTMIN}"
        return f"SIG{number}"


def parse_signal(value: object) -> int:
    """A signal from a number, ``"9"``, ``"SIGTERM"``, ``"term"`` or ``"SIGRTMIN+2"``."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise AgentError(INVALID, "signal must be a name like SIGTERM or a number")
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    number = value if isinstance(value, int) else _number_of(value)
    if number is None or not 1 <= number <= signal.SIGRTMAX:
        raise AgentError(INVALID, f"unknown signal {value!r}")
    return number


def _number_of(name: str) -> int | None:
    name = name.strip().upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    base, plus, offset = name.partition("+")
    if plus and base in ("SIGRTMIN", "SIGRTMAX") and offset.isdigit():
        number = getattr(signal, base) + int(offset)
        return int(number) if number <= signal.SIGRTMAX else None
    member = signal.Signals.__members__.get(name)
    return int(member) if member is not None else None
