"""Signal names and numbers (``agent/signames.py``)."""

from __future__ import annotations

import signal

import pytest

from execbus.agent.errors import AgentError
from execbus.agent.signames import parse_signal, signal_name


def test_signals() -> None:
    assert parse_signal("SIGTERM") == parse_signal("term") == parse_signal(15) == 15
    assert parse_signal("RTMIN+1") == signal.SIGRTMIN + 1
    assert signal_name(9) == "SIGKILL"
    assert signal_name(signal.SIGRTMIN + 2) == "SIGRTMIN+2"
    for bad in ("SIGNOPE", -1, 0, 1000, 1.5, "RTMAX+5"):
        with pytest.raises(AgentError):
            parse_signal(bad)
