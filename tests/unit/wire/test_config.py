"""ExecConfig and ConsoleSize validation: every rule has a test with its message."""

from __future__ import annotations

import math
from typing import Any

import pytest
from pydantic import ValidationError

from execbus.wire import ConsoleSize, ExecConfig
from execbus.wire.codec import describe_validation_error
from execbus.wire.config import (
    DEFAULT_OUTPUT_LIMIT,
    MAX_ARG_BYTES,
    MAX_ARGS,
    MAX_CONSOLE_DIM,
    MAX_ENV,
    MAX_ENV_ENTRY_BYTES,
    MAX_LABELS,
    MAX_OUTPUT_LIMIT,
    MAX_TIMEOUT_S,
)


def config_error(**fields: Any) -> str:
    """Build an ExecConfig that must fail; return the one-line description of why."""
    fields.setdefault("cmd", ["true"])
    with pytest.raises(ValidationError) as info:
        ExecConfig(**fields)
    return describe_validation_error(info.value)


def test_minimal_config_defaults() -> None:
    cfg = ExecConfig(cmd=["true"])
    assert cfg.container_id == ""
    assert cfg.env == []
    assert cfg.working_dir is None
    assert cfg.user is None
    assert cfg.tty is False
    assert cfg.attach_stdin is False
    assert cfg.attach_stdout is True
    assert cfg.attach_stderr is True
    assert cfg.privileged is False
    assert cfg.detach is False
    assert cfg.console_size is None
    assert cfg.timeout is None
    assert cfg.output_limit == DEFAULT_OUTPUT_LIMIT
    assert cfg.stream_output is False
    assert cfg.labels == {}


def test_full_config_is_accepted() -> None:
    cfg = ExecConfig(
        container_id="ctr-1",
        cmd=["sh", "-c", "echo hi", ""],
        env=["A=1", "B=", "C=x=y", "EMPTY_OK="],
        working_dir="/tmp",
        user="1000:1000",
        tty=True,
        attach_stdin=True,
        privileged=True,
        detach=True,
        console_size=ConsoleSize(width=120, height=40),
        timeout=1.5,
        output_limit=0,
        stream_output=True,
        labels={"team": "infra"},
    )
    assert cfg.env_keys() == ["A", "B", "C", "EMPTY_OK"]


def test_config_is_frozen() -> None:
    cfg = ExecConfig(cmd=["true"])
    with pytest.raises(ValidationError, match="frozen"):
        cfg.tty = True  # type: ignore[misc]


# -- cmd ---------------------------------------------------------------------


def test_empty_cmd() -> None:
    msg = config_error(cmd=[])
    assert msg.startswith("cmd: ")
    assert "at least 1 item" in msg


def test_empty_executable() -> None:
    msg = config_error(cmd=["", "arg"])
    assert "cmd[0] (the executable) must not be empty" in msg


def test_empty_later_argument_is_fine() -> None:
    assert ExecConfig(cmd=["echo", ""]).cmd == ["echo", ""]


@pytest.mark.parametrize("cmd", [["ls\x00"], ["ls", "a\x00b"], ["ls", "x", "\x00"]])
def test_nul_in_argument(cmd: list[str]) -> None:
    assert "cmd arguments must not contain NUL bytes" in config_error(cmd=cmd)


def test_argv_at_byte_limit_is_accepted() -> None:
    cmd = ["x" * (MAX_ARG_BYTES // 2), "y" * (MAX_ARG_BYTES // 2)]
    config = ExecConfig(cmd=cmd)
    assert config.cmd == cmd and sum(len(a.encode()) for a in config.cmd) == MAX_ARG_BYTES


def test_argv_too_many_bytes() -> None:
    msg = config_error(cmd=["x" * (MAX_ARG_BYTES // 2), "y" * (MAX_ARG_BYTES // 2 + 1)])
    assert f"cmd is {MAX_ARG_BYTES + 1} bytes; the limit is {MAX_ARG_BYTES}" in msg


def test_argv_bytes_count_utf8_not_characters() -> None:
    # 'é' is two bytes in UTF-8: the limit is in bytes, as the kernel counts it.
    msg = config_error(cmd=["é" * (MAX_ARG_BYTES // 2 + 1)])
    assert f"cmd is {MAX_ARG_BYTES + 2} bytes" in msg


def test_argv_at_count_limit_is_accepted() -> None:
    assert len(ExecConfig(cmd=["a"] * MAX_ARGS).cmd) == MAX_ARGS


def test_argv_too_many_arguments() -> None:
    msg = config_error(cmd=["a"] * (MAX_ARGS + 1))
    assert msg.startswith("cmd: ")
    assert f"at most {MAX_ARGS} items" in msg


def test_cmd_must_be_a_list_not_a_shell_string() -> None:
    assert "cmd: Input should be a valid list" in config_error(cmd="ls -l")


def test_surrogate_in_argument_is_a_validation_error() -> None:
    msg = config_error(cmd=["ls", "\ud800"])
    assert msg.startswith("cmd: ")


# -- env ---------------------------------------------------------------------


def test_env_without_equals_is_rejected_not_dropped() -> None:
    msg = config_error(env=["A=1", "NOEQUALS"])
    assert "env[1] has no '=': entries must be KEY=VALUE" in msg


def test_env_with_empty_name() -> None:
    assert "env[0] has an empty name" in config_error(env=["=value"])


@pytest.mark.parametrize("entry", ["A=b\x00c", "A\x00B=c", "A=\x00"])
def test_env_with_nul(entry: str) -> None:
    assert "env[0] must not contain NUL bytes" in config_error(env=[entry])


def test_env_entry_at_limit_is_accepted() -> None:
    entry = "A=" + "x" * (MAX_ENV_ENTRY_BYTES - 2)
    config = ExecConfig(cmd=["true"], env=[entry])
    assert config.env == [entry] and len(entry.encode()) == MAX_ENV_ENTRY_BYTES


def test_env_entry_too_large() -> None:
    msg = config_error(env=["OK=1", "A=" + "x" * (MAX_ENV_ENTRY_BYTES - 1)])
    assert f"env[1] is longer than {MAX_ENV_ENTRY_BYTES} bytes" in msg


def test_env_at_count_limit_is_accepted() -> None:
    config = ExecConfig(cmd=["true"], env=[f"V{i}=1" for i in range(MAX_ENV)])
    assert config.env is not None and len(config.env) == MAX_ENV


def test_too_many_env_entries() -> None:
    msg = config_error(env=[f"V{i}=1" for i in range(MAX_ENV + 1)])
    assert msg.startswith("env: ")
    assert f"at most {MAX_ENV} items" in msg


def test_env_messages_never_echo_values() -> None:
    for env in (
        ["A=SECRET123", "B"],
        ["=SECRET123"],
        ["A=SECRET123\x00"],
        ["A=SECRET123" + "x" * MAX_ENV_ENTRY_BYTES],
    ):
        assert "SECRET123" not in config_error(env=env)


def test_env_keys_never_carry_values() -> None:
    cfg = ExecConfig(cmd=["true"], env=["TOKEN=SECRET123", "X=a=b"])
    assert cfg.env_keys() == ["TOKEN", "X"]
    assert "SECRET123" not in repr(cfg.env_keys())


# -- working_dir, user -------------------------------------------------------


@pytest.mark.parametrize("wd", ["tmp", "./tmp", "", "~/x"])
def test_relative_working_dir(wd: str) -> None:
    assert "working_dir: Value error, working_dir must be an absolute path" in config_error(
        working_dir=wd
    )


def test_working_dir_with_nul() -> None:
    assert "working_dir must not contain NUL bytes" in config_error(working_dir="/tmp\x00x")


def test_working_dir_too_long() -> None:
    msg = config_error(working_dir="/" + "a" * 4096)
    assert msg.startswith("working_dir: ")
    assert "at most 4096 characters" in msg


@pytest.mark.parametrize(
    "user", ["root", "0", "1000:1000", "nobody:nogroup", "www-data", "_svc", "a.b:c.d"]
)
def test_good_users(user: str) -> None:
    assert ExecConfig(cmd=["true"], user=user).user == user


@pytest.mark.parametrize(
    "user",
    [
        "",
        "root:",
        ":root",
        "a:b:c",
        "-rf",
        "user name",
        "root\n",
        "root;id",
        "$(id)",
        "ro\x00ot",
        "us/er",
        "a" * 257,
    ],
)
def test_bad_users(user: str) -> None:
    msg = config_error(user=user)
    assert msg.startswith("user: ")
    assert "should match pattern" in msg or "at most 256 characters" in msg


# -- console size, timeout, output limit -------------------------------------


def test_console_size_defaults() -> None:
    assert ConsoleSize() == ConsoleSize(width=80, height=24)


@pytest.mark.parametrize(
    ("width", "height", "loc", "text"),
    [
        (0, 24, "width", "greater than or equal to 1"),
        (80, 0, "height", "greater than or equal to 1"),
        (-1, 24, "width", "greater than or equal to 1"),
        (MAX_CONSOLE_DIM + 1, 24, "width", f"less than or equal to {MAX_CONSOLE_DIM}"),
        (80, 10**9, "height", f"less than or equal to {MAX_CONSOLE_DIM}"),
    ],
)
def test_bad_console_size(width: int, height: int, loc: str, text: str) -> None:
    with pytest.raises(ValidationError) as info:
        ConsoleSize(width=width, height=height)
    msg = describe_validation_error(info.value)
    assert msg.startswith(f"{loc}: ")
    assert text in msg


def test_bad_console_size_inside_config() -> None:
    msg = config_error(console_size={"width": 0, "height": 24})
    assert msg.startswith("console_size.width: ")


def test_console_size_limits_accepted() -> None:
    smallest = ConsoleSize(width=1, height=1)
    largest = ConsoleSize(width=MAX_CONSOLE_DIM, height=MAX_CONSOLE_DIM)
    assert (smallest.width, smallest.height) == (1, 1)
    assert (largest.width, largest.height) == (MAX_CONSOLE_DIM, MAX_CONSOLE_DIM)


@pytest.mark.parametrize(
    ("timeout", "text"),
    [
        (0, "greater than 0"),
        (-1, "greater than 0"),
        (-0.001, "greater than 0"),
        (MAX_TIMEOUT_S + 1, f"less than or equal to {MAX_TIMEOUT_S:g}"),
        (1e300, "less than or equal to"),
        (math.inf, "less than or equal to"),
        (math.nan, "Input should be"),  # NaN compares false: rejected either way
    ],
)
def test_bad_timeout(timeout: float, text: str) -> None:
    msg = config_error(timeout=timeout)
    assert msg.startswith("timeout: ")
    assert text in msg


def test_timeout_limits_accepted() -> None:
    assert ExecConfig(cmd=["true"], timeout=0.001).timeout == 0.001
    assert ExecConfig(cmd=["true"], timeout=MAX_TIMEOUT_S).timeout == MAX_TIMEOUT_S


@pytest.mark.parametrize(
    ("limit", "text"),
    [
        (-1, "greater than or equal to 0"),
        (MAX_OUTPUT_LIMIT + 1, f"less than or equal to {MAX_OUTPUT_LIMIT}"),
        (2**63, "less than or equal to"),
    ],
)
def test_bad_output_limit(limit: int, text: str) -> None:
    msg = config_error(output_limit=limit)
    assert msg.startswith("output_limit: ")
    assert text in msg


def test_output_limit_bounds_accepted() -> None:
    assert ExecConfig(cmd=["true"], output_limit=0).output_limit == 0
    assert ExecConfig(cmd=["true"], output_limit=MAX_OUTPUT_LIMIT).output_limit == MAX_OUTPUT_LIMIT


# -- labels, unknown fields --------------------------------------------------


def test_labels_at_limit_accepted() -> None:
    labels = {f"k{i}": "v" for i in range(MAX_LABELS)}
    assert ExecConfig(cmd=["true"], labels=labels).labels == labels


def test_too_many_labels() -> None:
    msg = config_error(labels={f"k{i}": "v" for i in range(MAX_LABELS + 1)})
    assert msg.startswith("labels: ")
    assert f"at most {MAX_LABELS} items" in msg


@pytest.mark.parametrize(
    "labels", [{"": "v"}, {"k" * 129: "v"}, {"k": "v" * 1025}], ids=["empty", "long-key", "long"]
)
def test_bad_labels(labels: dict[str, str]) -> None:
    assert "label keys must be 1-128 chars and values at most 1024" in config_error(labels=labels)


def test_unknown_field_is_rejected() -> None:
    msg = config_error(shell=True)
    assert msg == "shell: Extra inputs are not permitted"


def test_unknown_console_size_field_is_rejected() -> None:
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        ConsoleSize(width=80, height=24, depth=3)  # type: ignore[call-arg]


# -- container ids -----------------------------------------------------------


@pytest.mark.parametrize(
    "container_id",
    [
        "",
        "abc",
        "a" * 160,
        "0123456789abcdef" * 4,
        "my.container",
        "ns:ctr",
        "sha256:abcdef",
        "user@host",
        "a+b",
        "pod/ctr",
        "my_ctr-1.2:3",
    ],
)
def test_allowed_container_ids(container_id: str) -> None:
    assert ExecConfig(cmd=["true"], container_id=container_id).container_id == container_id


@pytest.mark.parametrize(
    "container_id",
    [
        ".hidden",
        "-dash",
        "_under",
        ":colon",
        "a b",
        "a*b",
        "a#b",
        "a$b",
        "a\nb",
        "abc\n",
        "a\x00b",
        "ä",
        "a" * 256,
    ],
)
def test_rejected_container_ids(container_id: str) -> None:
    msg = config_error(container_id=container_id)
    assert msg.startswith("container_id: ")
    assert "should match pattern" in msg


@pytest.mark.parametrize("container_id", ["a" * 161, "a" + "." * 60, "a" * 255])
def test_container_ids_too_long_for_a_routing_key(container_id: str) -> None:
    with pytest.raises(ValidationError, match="too long for a routing key"):
        ExecConfig(cmd=["true"], container_id=container_id)
