"""The exception tree and the wire-code <-> class mapping."""

from __future__ import annotations

import pytest

from execbus import errors as e
from execbus.agent import errors as codes
from execbus.connections.agent_client import start_failure_info
from execbus.errors import ErrorCode, agent_error, error_for_code, start_error_for_code

EXPECTED: dict[ErrorCode, type[e.ExecbusError]] = {
    ErrorCode.INVALID: e.InvalidRequest,
    ErrorCode.NOT_FOUND: e.NotFound,
    ErrorCode.CONFLICT: e.Conflict,
    ErrorCode.FORBIDDEN: e.Forbidden,
    ErrorCode.UNSUPPORTED: e.Unsupported,
    ErrorCode.LIMIT_EXCEEDED: e.LimitExceeded,
    ErrorCode.TIMEOUT: e.ExecTimeout,
    ErrorCode.UNKNOWN_AGENT: e.UnknownAgent,
    ErrorCode.AGENT_UNAVAILABLE: e.AgentUnavailable,
    ErrorCode.AGENT_AUTH_FAILED: e.AgentAuthFailed,
    ErrorCode.AGENT_LOST: e.AgentLost,
    ErrorCode.START_FAILED: e.StartFailed,
    ErrorCode.COMMAND_NOT_FOUND: e.CommandNotFound,
    ErrorCode.COMMAND_NOT_EXECUTABLE: e.CommandNotExecutable,
    ErrorCode.UNKNOWN_USER: e.UnknownUser,
    ErrorCode.INVALID_WORKING_DIR: e.InvalidWorkingDir,
    ErrorCode.CONTAINER_NOT_FOUND: e.ContainerNotFound,
    ErrorCode.CONTAINER_NOT_RUNNING: e.ContainerNotRunning,
    ErrorCode.INTERNAL: e.InternalError,
}

START_FAILURES = [
    e.CommandNotFound,
    e.CommandNotExecutable,
    e.UnknownUser,
    e.InvalidWorkingDir,
    e.ContainerNotFound,
    e.ContainerNotRunning,
]


def all_error_classes() -> list[type[e.ExecbusError]]:
    seen: list[type[e.ExecbusError]] = []
    todo: list[type[e.ExecbusError]] = [e.ExecbusError]
    while todo:
        cls = todo.pop()
        if cls.__module__ == "execbus.errors" and cls not in seen:
            seen.append(cls)
            todo.extend(cls.__subclasses__())
    return seen


def test_every_code_is_covered() -> None:
    assert set(EXPECTED) == set(ErrorCode)


@pytest.mark.parametrize("code", list(ErrorCode))
def test_error_for_code_maps_every_code(code: ErrorCode) -> None:
    err = error_for_code(code, "what happened")
    assert type(err) is EXPECTED[code]
    assert err.code == code
    assert err.message == "what happened"
    assert str(err) == "what happened"


@pytest.mark.parametrize("code", list(ErrorCode))
def test_error_for_code_accepts_plain_strings(code: ErrorCode) -> None:
    assert type(error_for_code(str(code.value), "m")) is EXPECTED[code]


@pytest.mark.parametrize("code", ["", "nope", "INVALID", "Not_Found", "conflict ", "start-failed"])
def test_unknown_code_is_internal_error(code: str) -> None:
    err = error_for_code(code, "strange")
    assert type(err) is e.InternalError
    assert err.message == "strange"
    assert err.code is ErrorCode.INTERNAL


@pytest.mark.parametrize("cls", list(EXPECTED.values()))
def test_a_raised_error_round_trips_through_its_code(cls: type[e.ExecbusError]) -> None:
    assert type(error_for_code(cls.code, "x")) is cls


@pytest.mark.parametrize("cls", START_FAILURES)
def test_start_failure_subclasses(cls: type[e.StartFailed]) -> None:
    assert issubclass(cls, e.StartFailed)
    assert issubclass(cls, e.ExecbusError)
    err = error_for_code(cls.code, "boom")
    assert isinstance(err, e.StartFailed)
    with pytest.raises(e.StartFailed):
        raise err


def test_start_failed_subclasses_are_exactly_these() -> None:
    assert set(e.StartFailed.__subclasses__()) == set(START_FAILURES)


@pytest.mark.parametrize("cls", [e.StartFailed, *START_FAILURES])
def test_start_error_for_code_keeps_start_failures(cls: type[e.StartFailed]) -> None:
    err = start_error_for_code(cls.code, "m")
    assert type(err) is cls
    assert err.message == "m"


@pytest.mark.parametrize("code", ["not_found", "conflict", "agent_unavailable", "internal", "??"])
def test_start_error_for_code_wraps_everything_else(code: str) -> None:
    err = start_error_for_code(code, "m")
    assert type(err) is e.StartFailed
    assert err.message == "m"


def test_hierarchy() -> None:
    agent_errors: list[type[e.ExecbusError]] = [
        e.AgentUnavailable,
        e.AgentLost,
        e.AgentProtocolError,
    ]
    assert all(issubclass(cls, e.AgentError) for cls in agent_errors)
    assert issubclass(e.BrokerUnavailable, e.BrokerError)
    assert issubclass(e.PublishFailed, e.BrokerError)
    for cls in all_error_classes():
        assert issubclass(cls, e.ExecbusError)
        assert issubclass(cls, Exception)
        assert isinstance(cls.code, ErrorCode)


def test_every_error_class_is_reachable() -> None:
    names = {cls.__name__ for cls in all_error_classes()}
    assert names >= {cls.__name__ for cls in EXPECTED.values()}
    assert {"ConfigError", "AgentError", "AgentProtocolError", "BrokerError"} <= names
    assert {"BrokerUnavailable", "PublishFailed"} <= names


def test_config_error_is_invalid() -> None:
    assert e.ConfigError.code is ErrorCode.INVALID
    # a ConfigError never travels on the wire; "invalid" comes back as InvalidRequest
    assert type(error_for_code(e.ConfigError.code, "x")) is e.InvalidRequest


@pytest.mark.parametrize("cls", all_error_classes())
def test_default_message_is_the_docstring(cls: type[e.ExecbusError]) -> None:
    err = cls()
    assert err.message
    assert err.message == (cls.__doc__ or cls.__name__)


def test_errors_chain() -> None:
    cause = ConnectionRefusedError("refused")

    def connect() -> None:
        try:
            raise cause
        except OSError as exc:
            raise e.AgentUnavailable("agent a1 refused") from exc

    with pytest.raises(e.AgentUnavailable) as info:
        connect()
    assert info.value.__cause__ is cause


# -- the agent's codes ------------------------------------------------------


def _agent_codes() -> set[str]:
    return {v for k, v in vars(codes).items() if k.isupper() and isinstance(v, str)}


def test_the_agent_codes_are_grouped_completely() -> None:
    groups = (codes.REQUEST_ERRORS, codes.HANDSHAKE_ERRORS, codes.START_FAILURES)
    assert set().union(*groups) == _agent_codes()
    assert sum(len(g) for g in groups) == len(_agent_codes()), "a code is in two groups"


@pytest.mark.parametrize("code", codes.REQUEST_ERRORS)
def test_every_agent_request_error_is_a_typed_error(code: str) -> None:
    err = agent_error(code, "boom")
    assert err.code in set(ErrorCode)
    assert err.message == "boom"
    assert not isinstance(err, e.InternalError) or code == codes.INTERNAL


@pytest.mark.parametrize("code", codes.START_FAILURES)
def test_every_agent_start_failure_is_an_error_code_the_sdk_raises_typed(code: str) -> None:
    assert code in set(ErrorCode), f"{code} reaches callers but ErrorCode does not know it"
    info = start_failure_info({"code": code, "message": "boom", "exit_code": 126})
    assert (info.code, info.message, info.exit_code) == (code, "boom", 126)
    raised = error_for_code(info.code, info.message)
    assert isinstance(raised, e.StartFailed | e.AgentLost)
    assert raised.code == code


def test_an_unknown_agent_start_failure_becomes_start_failed_and_is_named() -> None:
    info = start_failure_info({"code": "disk_on_fire", "message": "smoke"})
    assert (info.code, info.message) == ("start_failed", "smoke (agent code 'disk_on_fire')")


def test_an_unknown_agent_request_error_is_internal_and_named() -> None:
    err = agent_error("disk_on_fire", "smoke")
    assert isinstance(err, e.InternalError)
    assert err.message == "the agent answered with unknown error 'disk_on_fire': smoke"


def test_invalid_working_dir_has_the_docker_exit_code() -> None:
    failure = codes.bad_working_dir("working directory '/nope' does not exist")
    assert (failure.code, failure.exit_code) == ("invalid_working_dir", 126)
