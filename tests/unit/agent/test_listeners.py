"""Listener URLs of the agent (``agent/listeners.py``)."""

from __future__ import annotations

import pytest

from execbus.agent.listeners import VMADDR_CID_ANY, ListenerSpec, parse_listen_url


def test_listen_urls() -> None:
    assert parse_listen_url("unix:///run/x.sock") == ListenerSpec("unix", "/run/x.sock")
    assert parse_listen_url("tcp://127.0.0.1:7000") == ListenerSpec("tcp", "127.0.0.1", 7000)
    assert parse_listen_url("tcp://[::1]:7000").url == "tcp://[::1]:7000"
    assert parse_listen_url("vsock://any:7000") == ListenerSpec("vsock", str(VMADDR_CID_ANY), 7000)
    assert parse_listen_url("vsock://3:7000") == ListenerSpec("vsock", "3", 7000)
    for bad in ("/run/x.sock", "http://x:1", "tcp://host", "vsock://cid:1", "tcp://h:99999"):
        with pytest.raises(ValueError):
            parse_listen_url(bad)
