"""Building exec configurations and requests from friendly values (``client/config.py``)."""

from __future__ import annotations

import pytest

from execbus.client.config import build_config, env_list, exec_request, signal_arg
from execbus.client.target import AgentTarget, PoolTarget
from execbus.errors import InvalidRequest
from execbus.wire.config import ExecConfig
from execbus.wire.requests import CreateRequest, RunRequest


def test_build_config_accepts_friendly_values() -> None:
    config = build_config(
        ["echo", "hi"], env={"A": "1"}, labels={"k": "v"}, console_size=(100, 40), user=None
    )
    assert config.env == ["A=1"]
    assert config.console_size is not None
    assert (config.console_size.width, config.console_size.height) == (100, 40)
    assert build_config(["x"], env=["B=2"]).env == ["B=2"]
    assert build_config(ExecConfig(cmd=["x"]), detach=True).detach


@pytest.mark.parametrize(
    ("cmd", "options", "message"),
    [
        ("echo hi", {}, "list of arguments"),
        (["x"], {"env": ["NOPE"]}, "env"),
        (["x"], {"working_dir": "rel"}, "absolute"),
        (["x"], {"bogus": 1}, "bogus"),
        (ExecConfig(cmd=["x"]), {"tty": True}, "not both"),
    ],
)
def test_build_config_rejects_bad_values(
    cmd: object, options: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidRequest, match=message):
        build_config(cmd, **options)  # type: ignore[arg-type]


def test_env_list_rejects_a_string() -> None:
    with pytest.raises(InvalidRequest):
        env_list("A=1")


def test_exec_request_addresses_the_target_with_a_fresh_or_given_id() -> None:
    target, exec_id, run = exec_request(RunRequest, None, "gpu", ["true"], None, {})
    assert target == PoolTarget("gpu")
    assert (run.agent, run.pool, run.exec_id, run.config.cmd) == (None, "gpu", exec_id, ["true"])
    target, exec_id, create = exec_request(
        CreateRequest, "a1", None, ["true"], "e1", {"tty": True}, detach=True
    )
    assert (target, exec_id, create.agent, create.pool) == (AgentTarget("a1"), "e1", "a1", None)
    assert create.config.tty and create.config.detach


def test_signal_arguments() -> None:
    assert signal_arg("9") == 9
    assert signal_arg("term") == "TERM"
    assert signal_arg(15) == 15
