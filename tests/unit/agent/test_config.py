"""Agent configuration: the command line's checks, and the same limits for an embedded core."""

from __future__ import annotations

import pytest

from execbus.agent.cli import build_parser
from execbus.agent.config import MIN_MAX_FRAME, ConfigError, make_config, validate
from execbus.agent.core import AgentCore
from execbus.agent.options import AgentOptions


def test_defaults_are_valid() -> None:
    validate(AgentOptions())
    config = make_config(build_parser().parse_args([]))
    assert [spec.url for spec in config.listeners] == ["unix:///run/execbus/agent.sock"]
    assert config.token is None


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (AgentOptions(max_connections=0), "--max-connections must be at least 1"),
        (AgentOptions(max_handshakes=-1), "--max-handshakes must be >= 0"),
        (AgentOptions(max_execs_per_connection=-1), "--max-execs-per-connection must be >= 0"),
        (AgentOptions(handshake_timeout=0), "--handshake-timeout must be > 0"),
        (
            AgentOptions(max_frame=MIN_MAX_FRAME - 1),
            f"--max-frame must be at least {MIN_MAX_FRAME}",
        ),
        (AgentOptions(max_execs=0), "--max-execs must be at least 1"),
        (AgentOptions(grace=-1), "--grace must be >= 0"),
        (
            AgentOptions(runc_root="/run/runc", runc_binary="/no/such/runc"),
            "runc binary '/no/such/runc' was not found",
        ),
    ],
)
def test_out_of_bounds_options_are_refused_on_the_command_line_and_embedded(
    options: AgentOptions, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        validate(options)
    with pytest.raises(ConfigError, match=message):
        AgentCore(options)  # what the worker's in-process agent goes through


def test_command_line_errors_name_the_flag() -> None:
    with pytest.raises(ConfigError, match="--max-execs must be at least 1"):
        make_config(build_parser().parse_args(["--max-execs", "0"]))
    with pytest.raises(ConfigError, match="requires --token-file"):
        make_config(build_parser().parse_args(["--listen", "tcp://127.0.0.1:0"]))
