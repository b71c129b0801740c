"""qemu-ga command translation, without qemu-ga: guest-exec arguments, start
failures, exits and output chunks from guest-exec-status answers, identities."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

import pytest

from execbus.agent.spawn import DEFAULT_PATH
from execbus.connections.qga.translate import (
    OUTPUT_CHUNK,
    Streams,
    capped,
    decode_output,
    exec_environment,
    exit_from_status,
    guest_exec_args,
    output_chunks,
    process_identity,
    restart_cause,
    start_failure,
    unsupported_reason,
)
from execbus.errors import AgentProtocolError, ErrorCode
from execbus.wire.config import ExecConfig


def cfg(*cmd: str, **kwargs: Any) -> ExecConfig:
    return ExecConfig(cmd=list(cmd or ("true",)), **kwargs)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# -- what qemu-ga cannot run ---------------------------------------------------


def test_a_plain_exec_is_supported() -> None:
    assert unsupported_reason(cfg("echo", "hi", env=["A=1"], timeout=5)) is None


def test_a_working_dir_is_left_to_the_probe() -> None:
    assert unsupported_reason(cfg(working_dir="/tmp")) is None


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"tty": True}, "qemu-ga cannot allocate a TTY"),
        (
            {"attach_stdin": True},
            "qemu-ga cannot stream stdin: guest-exec takes the whole input up front "
            "(attach_stdin is unsupported)",
        ),
        (
            {"container_id": "c1"},
            "qemu-ga execs only in the guest itself (container_id must be empty)",
        ),
        ({"user": "nobody"}, "qemu-ga cannot switch users: commands run as qemu-ga's own user"),
        (
            {"privileged": True},
            "qemu-ga cannot run privileged execs: commands get qemu-ga's own privileges",
        ),
    ],
)
def test_unsupported_configs_say_why(kwargs: dict[str, Any], reason: str) -> None:
    assert unsupported_reason(cfg(**kwargs)) == reason


def test_the_first_unsupported_feature_is_named() -> None:
    assert unsupported_reason(cfg(tty=True, user="root")) == "qemu-ga cannot allocate a TTY"


# -- guest-exec arguments ------------------------------------------------------


def test_the_environment_gets_the_agents_default_path() -> None:
    assert exec_environment(["A=1"]) == [f"PATH={DEFAULT_PATH}", "A=1"]
    assert exec_environment([]) == [f"PATH={DEFAULT_PATH}"]


def test_a_configured_path_is_kept_and_the_list_copied() -> None:
    env = ["A=1", "PATH=/opt/bin"]
    result = exec_environment(env)
    assert result == env
    assert result is not env


def test_guest_exec_args_always_send_input_and_capture() -> None:
    assert guest_exec_args(cfg("ls", "-l", "/"), None) == {
        "path": "ls",
        "arg": ["-l", "/"],
        "env": [f"PATH={DEFAULT_PATH}"],
        "input-data": "",
        "capture-output": True,
    }


def test_guest_exec_args_with_input_and_cwd() -> None:
    args = guest_exec_args(cfg("cat", working_dir="/srv", env=["X=y"]), b"in\x00put")
    assert args["input-data"] == b64(b"in\x00put")
    assert args["cwd"] == "/srv"
    assert args["env"] == [f"PATH={DEFAULT_PATH}", "X=y"]
    assert args["arg"] == []


# -- start failures ------------------------------------------------------------


def test_a_missing_command_is_127() -> None:
    desc = 'Failed to execute child process "nope" (No such file or directory)'
    error = start_failure(desc)
    assert (error.code, error.exit_code) == (ErrorCode.COMMAND_NOT_FOUND, 127)
    assert error.message == f"qemu-ga: {desc}"


def test_a_command_that_cannot_run_is_126() -> None:
    error = start_failure('Failed to execute child process "/etc/passwd" (Permission denied)')
    assert (error.code, error.exit_code) == (ErrorCode.COMMAND_NOT_EXECUTABLE, 126)


@pytest.mark.parametrize(
    "desc",
    [
        'Failed to execute child process "x" (Exec format error)',
        "Guest agent command failed, error was 'something else'",
    ],
)
def test_other_refusals_are_plain_start_failures(desc: str) -> None:
    error = start_failure(desc)
    assert (error.code, error.exit_code) == (ErrorCode.START_FAILED, None)


def test_a_start_failure_message_is_capped() -> None:
    assert len(start_failure("x" * 10_000).message) == 4096


# -- captures ------------------------------------------------------------------


def test_streams_decode_a_status() -> None:
    status = {"out-data": b64(b"out"), "err-data": b64(b"err"), "out-truncated": True}
    assert Streams.from_status(status) == Streams(b"out", b"err", True, False)


def test_absent_captures_are_empty() -> None:
    assert Streams.from_status({"exited": True}) == Streams(b"", b"", False, False)
    assert decode_output(None) == b""
    assert decode_output(42) == b""


def test_invalid_base64_is_a_protocol_error() -> None:
    with pytest.raises(AgentProtocolError, match="not valid base64"):
        decode_output("not base64!")


@pytest.mark.parametrize(
    ("data", "truncated", "limit", "attached", "expected"),
    [
        (b"abcdef", False, 10, True, (b"abcdef", 0)),
        (b"abcdef", False, 4, True, (b"abcd", 2)),
        (b"abcdef", True, 4, True, (b"abcd", 3)),  # qemu-ga's own cut: +1, amount unknown
        (b"abc", True, 10, True, (b"abc", 1)),
        (b"abcdef", True, 4, False, (b"", 0)),  # not attached: nothing, nothing dropped
    ],
)
def test_capped(
    data: bytes, truncated: bool, limit: int, attached: bool, expected: tuple[bytes, int]
) -> None:
    assert capped(data, truncated, limit, attached) == expected


# -- exits ---------------------------------------------------------------------


def test_an_exit_code_and_the_captures() -> None:
    streams = Streams(b"out\n", b"err\n", False, False)
    status = {"exited": True, "exitcode": 3}
    exit_info = exit_from_status(
        status, streams, cfg(), started_at=1_700_000_000.0, finished_at=1_700_000_002.5
    )
    assert (exit_info.exit_code, exit_info.signal, exit_info.timed_out) == (3, None, False)
    assert (exit_info.stdout, exit_info.stderr) == (b"out\n", b"err\n")
    assert exit_info.started_at == datetime.fromtimestamp(1_700_000_000.0, UTC)
    assert exit_info.finished_at == datetime(2023, 11, 14, 22, 13, 22, 500000, tzinfo=UTC)


def test_a_signal_is_128_plus_n_and_named() -> None:
    streams = Streams(b"", b"", False, False)
    exit_info = exit_from_status(
        {"exited": True, "signal": 9},
        streams,
        cfg(),
        started_at=None,
        finished_at=1.0,
        timed_out=True,
    )
    assert (exit_info.exit_code, exit_info.signal, exit_info.timed_out) == (137, "SIGKILL", True)
    assert exit_info.started_at is None


@pytest.mark.parametrize(
    ("status", "code"),
    [
        ({"exited": True}, 0),
        ({"exited": True, "exitcode": 300}, 255),
        ({"exited": True, "exitcode": -1}, 255),
        ({"exited": True, "exitcode": "1"}, 255),
        ({"exited": True, "signal": 0, "exitcode": 2}, 2),
        ({"exited": True, "signal": 200}, 255),
    ],
)
def test_odd_statuses_stay_in_range(status: dict[str, Any], code: int) -> None:
    exit_info = exit_from_status(
        status, Streams(b"", b"", False, False), cfg(), started_at=None, finished_at=0.0
    )
    assert exit_info.exit_code == code


def test_the_exit_caps_each_stream_at_the_output_limit() -> None:
    streams = Streams(b"x" * 10, b"y" * 3, False, True)
    config = cfg(output_limit=4, attach_stderr=False)
    exit_info = exit_from_status(
        {"exited": True}, streams, config, started_at=None, finished_at=0.0
    )
    assert (exit_info.stdout, exit_info.stdout_dropped) == (b"xxxx", 6)
    assert (exit_info.stderr, exit_info.stderr_dropped) == (b"", 0)


# -- stream_output, emulated at exit -------------------------------------------


def test_output_chunks_split_each_attached_stream_with_its_own_seq() -> None:
    stdout = b"a" * OUTPUT_CHUNK + b"b"
    chunks = output_chunks(cfg(), Streams(stdout, b"err", False, False))
    assert chunks == [
        ("stdout", 0, b"a" * OUTPUT_CHUNK),
        ("stdout", 1, b"b"),
        ("stderr", 0, b"err"),
    ]


def test_output_chunks_skip_empty_and_detached_streams() -> None:
    assert output_chunks(cfg(attach_stdout=False), Streams(b"out", b"", False, False)) == []


# -- identities ------------------------------------------------------------------


def test_process_identity_reads_the_start_time_after_the_command_name() -> None:
    # The command name may hold spaces and parentheses: fields count from the last ')'.
    rest = " ".join(["S", *(str(n) for n in range(1, 19)), "424242", "0"])
    stat = f"1234 (qemu (ga) x) {rest}\n".encode()
    assert process_identity(stat) == "1234@424242"


def test_process_identity_of_a_short_line() -> None:
    assert process_identity(b"77 (sh) S 1 2") == "77@?"


def test_restart_cause_tells_a_reboot_from_a_restart() -> None:
    assert restart_cause("k1/10@5", "k2/10@5") == "the guest rebooted (boot k1/10@5 -> k2/10@5)"
    assert restart_cause("k1/10@5", "k1/11@9") == "qemu-ga restarted (instance k1/10@5 -> k1/11@9)"
