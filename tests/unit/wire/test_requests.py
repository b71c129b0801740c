"""Request models: ids and names safe in routing keys, per-request field rules."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from execbus.wire import (
    CreateRequest,
    ExecConfig,
    InspectRequest,
    ListRequest,
    RemoveRequest,
    Request,
    ResizeRequest,
    RunRequest,
    SignalRequest,
    StartRequest,
    StdinRequest,
    WaitRequest,
)
from execbus.wire.codec import describe_validation_error
from execbus.wire.ids import is_valid_name, new_exec_id
from execbus.wire.requests import MAX_STDIN_CHUNK, REQUEST_TYPES

CFG = ExecConfig(cmd=["true"])

# Characters that would break a topic routing key or a queue name.
UNSAFE_IDS = [
    "",
    "a.b",
    "a*b",
    "a#b",
    "a b",
    " a",
    "a ",
    "a\n",
    "a\x00",
    "-leading-dash",
    "_leading_underscore",
    "a/b",
    "a:b",
    "ä",
    "*",
    "#",
    ".",
]


def request_error(cls: type[BaseModel], **fields: Any) -> str:
    with pytest.raises(ValidationError) as info:
        cls(**fields)
    return describe_validation_error(info.value)


# -- exec ids ----------------------------------------------------------------


@pytest.mark.parametrize("exec_id", ["a", "A9", "0" * 128, "abc-DEF_123", new_exec_id()])
def test_good_exec_ids(exec_id: str) -> None:
    assert InspectRequest(exec_id=exec_id).exec_id == exec_id


@pytest.mark.parametrize("exec_id", [*UNSAFE_IDS, "a" * 129])
def test_unsafe_exec_ids_are_rejected(exec_id: str) -> None:
    msg = request_error(InspectRequest, exec_id=exec_id)
    assert msg.startswith("exec_id: String should match pattern")


@pytest.mark.parametrize(
    "cls",
    [StartRequest, ResizeRequest, SignalRequest, StdinRequest, InspectRequest, WaitRequest],
)
def test_every_exec_id_field_is_checked(cls: type[BaseModel]) -> None:
    fields: dict[str, Any] = {"exec_id": "a.b"}
    if cls is ResizeRequest:
        fields |= {"width": 80, "height": 24}
    assert request_error(cls, **fields).startswith("exec_id: String should match pattern")


@pytest.mark.parametrize("cls", [CreateRequest, RunRequest])
def test_create_and_run_take_an_optional_safe_exec_id(cls: type[BaseModel]) -> None:
    assert cls(config=CFG).exec_id is None  # type: ignore[attr-defined]
    assert cls(config=CFG, exec_id="my-id").exec_id == "my-id"  # type: ignore[attr-defined]
    msg = request_error(cls, config=CFG, exec_id="my.id")
    assert msg.startswith("exec_id: String should match pattern")


def test_new_exec_id_is_safe_and_unique() -> None:
    ids = {new_exec_id() for _ in range(1000)}
    assert len(ids) == 1000
    for exec_id in ids:
        InspectRequest(exec_id=exec_id)
        assert len(exec_id) == 32


# -- agent and pool names ----------------------------------------------------


@pytest.mark.parametrize("name", ["local", "a", "A" * 64, "agent-1_b"])
def test_good_agent_and_pool_names(name: str) -> None:
    req = InspectRequest(exec_id="x", agent=name, pool=name)
    assert (req.agent, req.pool) == (name, name)
    assert is_valid_name(name)


@pytest.mark.parametrize("name", [*UNSAFE_IDS, "a" * 65])
@pytest.mark.parametrize("field", ["agent", "pool"])
def test_unsafe_agent_and_pool_names(field: str, name: str) -> None:
    msg = request_error(InspectRequest, exec_id="x", **{field: name})
    assert msg.startswith(f"{field}: String should match pattern")
    assert not is_valid_name(name)


def test_is_valid_name_rejects_a_trailing_newline() -> None:
    # re.match with '$' accepts "name\n"; the routing key would carry the newline.
    assert not is_valid_name("agent\n")
    assert not is_valid_name("agent\n\n")


# -- envelope ----------------------------------------------------------------


def test_every_request_type_has_its_literal_type() -> None:
    made: list[Request] = [
        CreateRequest(config=CFG),
        StartRequest(exec_id="x"),
        RunRequest(config=CFG),
        ResizeRequest(exec_id="x", width=1, height=1),
        SignalRequest(exec_id="x"),
        StdinRequest(exec_id="x"),
        InspectRequest(exec_id="x"),
        WaitRequest(exec_id="x"),
        ListRequest(),
        RemoveRequest(exec_id="x"),
    ]
    assert tuple(r.type for r in made) == REQUEST_TYPES
    assert all(r.v == 1 for r in made)


@pytest.mark.parametrize("v", [0, 2, True, 1.0, "1"])
def test_wrong_version_in_python(v: object) -> None:
    msg = request_error(InspectRequest, exec_id="x", v=v)
    assert msg.startswith("v: ")


def test_wrong_type_literal() -> None:
    msg = request_error(InspectRequest, exec_id="x", type="exec.wait")
    assert msg.startswith("type: Input should be 'exec.inspect'")


def test_unknown_field_is_rejected() -> None:
    assert request_error(InspectRequest, exec_id="x", extra=1) == (
        "extra: Extra inputs are not permitted"
    )


def test_request_id_too_long() -> None:
    msg = request_error(InspectRequest, exec_id="x", request_id="r" * 129)
    assert msg.startswith("request_id: String should have at most 128 characters")


def test_requests_are_frozen() -> None:
    req = InspectRequest(exec_id="x")
    with pytest.raises(ValidationError, match="frozen"):
        req.exec_id = "y"  # type: ignore[misc]


def test_config_errors_are_located_under_config() -> None:
    msg = request_error(CreateRequest, config={"cmd": ["true"], "env": ["NOEQ"]})
    assert msg.startswith("config.env: Value error, env[0] has no '='")


# -- start, resize -----------------------------------------------------------


def test_start_defaults() -> None:
    req = StartRequest(exec_id="x")
    assert req.detach is None
    assert req.console_size is None


def test_start_console_size() -> None:
    assert StartRequest(exec_id="x", console_size=(120, 40)).console_size == (120, 40)


@pytest.mark.parametrize("size", [(0, 24), (80, 0), (10_001, 24), (80, 10**6)])
def test_start_bad_console_size(size: tuple[int, int]) -> None:
    assert request_error(StartRequest, exec_id="x", console_size=size).startswith("console_size.")


def test_start_console_size_needs_two_values() -> None:
    assert request_error(StartRequest, exec_id="x", console_size=(80,)).startswith("console_size")


@pytest.mark.parametrize(
    ("width", "height", "loc"),
    [(0, 24, "width"), (80, 0, "height"), (10_001, 24, "width"), (80, -5, "height")],
)
def test_resize_bad_dimensions(width: int, height: int, loc: str) -> None:
    msg = request_error(ResizeRequest, exec_id="x", width=width, height=height)
    assert msg.startswith(f"{loc}: Input should be")


def test_resize_needs_both_dimensions() -> None:
    assert request_error(ResizeRequest, exec_id="x", width=80) == "height: Field required"


# -- signal ------------------------------------------------------------------


def test_signal_defaults_to_sigkill() -> None:
    assert SignalRequest(exec_id="x").signal == "SIGKILL"


@pytest.mark.parametrize("signal", ["SIGTERM", "TERM", "SIGRTMIN+3", "HUP", 1, 9, 64])
def test_good_signals(signal: str | int) -> None:
    assert SignalRequest(exec_id="x", signal=signal).signal == signal


@pytest.mark.parametrize("signal", ["sigterm", "S", "SIG TERM", "TERM;rm", "X" * 13, 0, 65, -9])
def test_bad_signals(signal: str | int) -> None:
    assert request_error(SignalRequest, exec_id="x", signal=signal).startswith("signal")


# -- stdin -------------------------------------------------------------------


def test_stdin_data_limit() -> None:
    assert StdinRequest(exec_id="x", data=b"\x00" * MAX_STDIN_CHUNK).data == b"\x00" * (
        MAX_STDIN_CHUNK
    )
    msg = request_error(StdinRequest, exec_id="x", data=b"a" * (MAX_STDIN_CHUNK + 1))
    assert msg.startswith(f"data: Data should have at most {MAX_STDIN_CHUNK} bytes")


def test_stdin_close_only() -> None:
    req = StdinRequest(exec_id="x", close=True)
    assert req.data == b""
    assert req.close is True


# -- list, remove ------------------------------------------------------------


def test_list_defaults_and_container_filter() -> None:
    assert ListRequest().container_id is None
    assert ListRequest().include_finished is True
    assert ListRequest(container_id="").container_id == ""
    assert ListRequest(container_id="sha256:ab.c").container_id == "sha256:ab.c"
    assert request_error(ListRequest, container_id="a*b").startswith("container_id: ")


def test_remove_force_default() -> None:
    assert RemoveRequest(exec_id="x").force is False
