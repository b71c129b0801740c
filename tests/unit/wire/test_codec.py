"""Bytes <-> wire models: parse errors, round trips, events, ids and routing keys."""

from __future__ import annotations

import base64
import json
import re
import string
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from execbus.errors import ErrorCode, InvalidRequest
from execbus.wire import (
    REASON_HEADER,
    ConsoleSize,
    CreatedEvent,
    CreateRequest,
    ErrorInfo,
    ExecConfig,
    ExecInfo,
    ExecList,
    ExecState,
    ExitedEvent,
    ExitInfo,
    FailedEvent,
    InspectRequest,
    ListRequest,
    Names,
    OutputEvent,
    RemoveRequest,
    Reply,
    ResizeRequest,
    RunRequest,
    SignalRequest,
    StartedEvent,
    StartRequest,
    StdinRequest,
    WaitRequest,
    decode_key_segment,
    dump,
    encode_key_segment,
    make_event_id,
    parse_event,
    parse_reply,
    parse_request,
)
from execbus.wire.events import EVENT_KINDS
from execbus.wire.ids import CONTAINER_PATTERN, NAME_PATTERN
from execbus.wire.requests import REQUEST_TYPES

FAST = settings(max_examples=200, deadline=None, database=None)
T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
FULL_CONFIG = ExecConfig(
    container_id="sha256:abc.def",
    cmd=["sh", "-c", "echo 'hé' && exit 3", ""],
    env=["A=1", "B=", "C=x=y"],
    working_dir="/srv/app",
    user="1000:1000",
    tty=True,
    attach_stdin=True,
    attach_stdout=False,
    attach_stderr=False,
    privileged=True,
    detach=True,
    console_size=ConsoleSize(width=132, height=43),
    timeout=12.5,
    output_limit=4096,
    stream_output=True,
    labels={"team": "infra", "ünï": "cödé"},
)


def invalid(body: bytes | str) -> str:
    """Parse a body that must be rejected; return the InvalidRequest message."""
    with pytest.raises(InvalidRequest) as info:
        parse_request(body)
    return info.value.message


def body(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


def create_body(**config: Any) -> bytes:
    config.setdefault("cmd", ["true"])
    return body(v=1, type="exec.create", config=config)


# -- not a request at all ----------------------------------------------------


@pytest.mark.parametrize("raw", [b"", b"not json", b"{", b"{'v': 1}", b"\xff\xfe\x00", "{]"])
def test_not_json(raw: bytes | str) -> None:
    assert invalid(raw).startswith("body is not valid JSON")


@pytest.mark.parametrize("raw", [b"[]", b"[1, 2]", b"1", b'"exec.create"', b"null", b"true"])
def test_json_but_not_an_object(raw: bytes) -> None:
    assert invalid(raw) == "body must be a JSON object"


@pytest.mark.parametrize(
    "raw",
    [
        "[" * 100_000 + "]" * 100_000,
        '{"a":' * 100_000 + "1" + "}" * 100_000,
        '{"v":1,"type":"exec.create","config":{"cmd":["x"],"labels":'
        + "[" * 100_000
        + "]" * 100_000
        + "}}",
    ],
    ids=["lists", "objects", "inside-a-request"],
)
def test_deep_json_is_an_invalid_request_not_a_recursion_error(raw: str) -> None:
    # InvalidRequest; a RecursionError would escape pytest.raises
    assert invalid(raw).startswith("body is not valid JSON: maximum recursion depth exceeded")
    assert invalid(raw.encode()) == invalid(raw)


# -- envelope ----------------------------------------------------------------


@pytest.mark.parametrize("v", [0, 2, -1, "1", True, 1.0, None, [1], {"v": 1}])
def test_wrong_version(v: object) -> None:
    msg = invalid(body(v=v, type="exec.inspect", exec_id="x"))
    assert msg.startswith("unsupported wire version")
    assert "this worker speaks v=1" in msg


def test_missing_version() -> None:
    msg = invalid(body(type="exec.inspect", exec_id="x"))
    assert "wire version" in msg
    assert "v=1" in msg


def test_missing_version_with_other_errors() -> None:
    assert "wire version" in invalid(body(type="exec.inspect", exec_id="a.b"))


@pytest.mark.parametrize("kind", ["exec.launch", "EXEC.CREATE", "", "create", 5, None, ["x"]])
def test_unknown_type(kind: object) -> None:
    msg = invalid(body(v=1, type=kind, exec_id="x"))
    assert msg.startswith("unknown request type")
    for known in REQUEST_TYPES:
        assert known in msg


def test_missing_type() -> None:
    assert invalid(body(v=1, exec_id="x")).startswith("unknown request type 'None'")


def test_missing_required_field() -> None:
    assert invalid(body(v=1, type="exec.inspect")) == (
        "invalid request: exec.inspect.exec_id: Field required"
    )


def test_unknown_field() -> None:
    msg = invalid(body(v=1, type="exec.inspect", exec_id="x", force=True))
    assert msg == "invalid request: exec.inspect.force: Extra inputs are not permitted"


def test_unknown_config_field() -> None:
    msg = invalid(create_body(shell="/bin/sh"))
    assert msg == "invalid request: exec.create.config.shell: Extra inputs are not permitted"


@pytest.mark.parametrize(
    ("doc", "where", "text"),
    [
        ({"type": "exec.create", "config": {"cmd": "ls -l"}}, "config.cmd", "valid array"),
        ({"type": "exec.create", "config": {"cmd": [1]}}, "config.cmd.0", "valid string"),
        ({"type": "exec.create", "config": ["ls"]}, "config", "an object"),
        ({"type": "exec.create", "config": {"cmd": ["x"], "env": "A=1"}}, "config.env", "array"),
        ({"type": "exec.create", "config": {"cmd": ["x"], "tty": "maybe"}}, "config.tty", "bool"),
        (
            {"type": "exec.create", "config": {"cmd": ["x"], "timeout": "soon"}},
            "config.timeout",
            "",
        ),
        ({"type": "exec.create", "config": {"cmd": ["x"], "labels": ["a"]}}, "config.labels", ""),
        ({"type": "exec.inspect", "exec_id": 42}, "exec_id", "valid string"),
        ({"type": "exec.inspect", "exec_id": None}, "exec_id", "valid string"),
        ({"type": "exec.resize", "exec_id": "x", "width": "80", "height": []}, "height", ""),
        ({"type": "exec.list", "include_finished": "all"}, "include_finished", "bool"),
        ({"type": "exec.start", "exec_id": "x", "console_size": "80x24"}, "console_size", ""),
        ({"type": "exec.stdin", "exec_id": "x", "data": 5}, "data", ""),
    ],
)
def test_wrong_field_types(doc: dict[str, Any], where: str, text: str) -> None:
    msg = invalid(body(v=1, **doc))
    assert msg.startswith(f"invalid request: {doc['type']}.{where}")
    assert text in msg


def test_many_errors_are_summarised() -> None:
    msg = invalid(
        create_body(
            cmd=[],
            env=["X"],
            working_dir="rel",
            user="a b",
            timeout=0,
            output_limit=-1,
            console_size={"width": 0, "height": 0},
        )
    )
    assert msg.startswith("invalid request: ")
    assert msg.endswith("more")
    assert msg.count(";") == 5


@pytest.mark.parametrize(
    ("config", "text"),
    [
        ({"cmd": []}, "config.cmd: List should have at least 1 item"),
        ({"cmd": [""]}, "cmd[0] (the executable) must not be empty"),
        ({"cmd": ["a\u0000"]}, "cmd arguments must not contain NUL bytes"),
        ({"env": ["A"]}, "env[0] has no '='"),
        ({"env": ["=a"]}, "env[0] has an empty name"),
        ({"working_dir": "x"}, "working_dir must be an absolute path"),
        ({"user": "a b"}, "config.user: String should match pattern"),
        ({"timeout": -1}, "config.timeout: Input should be greater than 0"),
        ({"output_limit": -1}, "config.output_limit: Input should be greater than or equal to 0"),
        ({"container_id": "a b"}, "config.container_id: String should match pattern"),
    ],
)
def test_config_errors_through_the_codec(config: dict[str, Any], text: str) -> None:
    assert text in invalid(create_body(**config))


@pytest.mark.parametrize("timeout", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_timeouts(timeout: str) -> None:
    raw = '{"v":1,"type":"exec.create","config":{"cmd":["x"],"timeout":' + timeout + "}}"
    assert "config.timeout" in invalid(raw)


# -- huge inputs: rejected with a short message that does not echo them ------


@pytest.mark.parametrize(
    "doc",
    [
        {"v": 1, "type": "exec.inspect", "exec_id": "Z" * 1_000_000},
        {"v": 1, "type": "exec.inspect", "exec_id": "x", "request_id": "Z" * 1_000_000},
        {"v": 1, "type": "exec.inspect", "exec_id": "x", "agent": "Z" * 1_000_000},
        {"v": "Z" * 1_000_000, "type": "exec.inspect", "exec_id": "x"},
        {"v": 1, "type": "Z" * 1_000_000},
        {"v": 1, "type": "exec.create", "config": {"cmd": ["Z" * 1_000_000]}},
        {"v": 1, "type": "exec.create", "config": {"cmd": ["x"], "env": ["A=" + "Z" * 10**6]}},
        {"v": 1, "type": "exec.create", "config": {"cmd": ["x"], "working_dir": "/" + "Z" * 10**6}},
        {"v": 1, "type": "exec.create", "config": {"cmd": ["x"], "labels": {"k": "Z" * 10**6}}},
        {"v": 1, "type": "exec.stdin", "exec_id": "x", "data": "Wlpa" * 500_000},
        {"v": 1, "type": "exec.inspect", "exec_id": "x", "Z" * 1_000_000: 1},
        {"v": 1, "type": "exec.create", "config": {"cmd": ["x"], "labels": {"Z" * 10**6: 1}}},
    ],
)
def test_huge_strings(doc: dict[str, Any]) -> None:
    msg = invalid(body(**doc))
    assert len(msg) < 2_000
    assert "Z" * 100 not in msg


@pytest.mark.parametrize("key", ["a\nb", "a\rb", "\u2028", "\u0000", "\t", "\x1b[31m"])
def test_messages_stay_on_one_line(key: str) -> None:
    # Unknown keys travel into the error location; they must not break the line.
    msg = invalid(body(**{"v": 1, "type": "exec.inspect", "exec_id": "x", key: 1}))
    assert msg.startswith("invalid request: exec.inspect.")
    assert msg.isprintable()
    msg = invalid(create_body(labels={key: 1}))
    assert msg.startswith("invalid request: exec.create.config.labels.")
    assert msg.isprintable()


# -- secrets -----------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [
        {"env": ["TOKEN=SECRET123"], "user": "bad user"},
        {"env": ["TOKEN=SECRET123", "NOEQUALS"]},
        {"env": ["TOKEN=SECRET123\u0000"]},
        {"env": ["=SECRET123"]},
        {"env": ["TOKEN=SECRET123" + "x" * 40_000]},
        {"env": ["TOKEN=SECRET123", 7]},
        {"env": "TOKEN=SECRET123"},
        {"env": {"TOKEN": "SECRET123"}},
        {"env": ["TOKEN=SECRET123"] * 1025},
        {"env": ["TOKEN=SECRET123"], "cmd": []},
        {"env": ["TOKEN=SECRET123"], "timeout": 0},
        {"env": ["TOKEN=SECRET123"], "unknown": True},
        {"env": ["TOKEN=SECRET123"], "working_dir": "relative"},
    ],
)
def test_errors_never_echo_env_values(config: dict[str, Any]) -> None:
    assert "SECRET123" not in invalid(create_body(**config))


@pytest.mark.parametrize(
    "doc",
    [
        {"v": 2, "type": "exec.run", "config": {"cmd": ["x"], "env": ["T=SECRET123"]}},
        {"type": "exec.run", "config": {"cmd": ["x"], "env": ["T=SECRET123"]}},
        {"v": 1, "type": "exec.nope", "config": {"cmd": ["x"], "env": ["T=SECRET123"]}},
        {"v": 1, "type": "exec.run", "exec_id": "a.b", "config": {"env": ["T=SECRET123"]}},
    ],
)
def test_envelope_errors_never_echo_env_values(doc: dict[str, Any]) -> None:
    assert "SECRET123" not in invalid(body(**doc))


# -- round trips -------------------------------------------------------------

ALL_REQUESTS: list[BaseModel] = [
    CreateRequest(config=ExecConfig(cmd=["true"])),
    CreateRequest(
        config=FULL_CONFIG, exec_id="job-42", request_id="req-1", agent="agent-a", pool="p1"
    ),
    StartRequest(exec_id="job-42"),
    StartRequest(exec_id="job-42", detach=True, console_size=(100, 30), request_id="r"),
    StartRequest(exec_id="job-42", detach=False),
    RunRequest(config=FULL_CONFIG),
    RunRequest(config=ExecConfig(cmd=["ls"]), exec_id="r1", agent="local"),
    ResizeRequest(exec_id="job-42", width=200, height=50),
    SignalRequest(exec_id="job-42"),
    SignalRequest(exec_id="job-42", signal="TERM"),
    SignalRequest(exec_id="job-42", signal=15),
    StdinRequest(exec_id="job-42"),
    StdinRequest(exec_id="job-42", data=bytes(range(256)), close=True),
    InspectRequest(exec_id="job-42", request_id="rq"),
    WaitRequest(exec_id="job-42"),
    ListRequest(),
    ListRequest(container_id="", include_finished=False),
    ListRequest(container_id="pod/ctr:1"),
    RemoveRequest(exec_id="job-42", force=True),
]


@pytest.mark.parametrize("request_model", ALL_REQUESTS, ids=lambda r: r.type)
def test_every_request_round_trips(request_model: BaseModel) -> None:
    raw = dump(request_model)
    assert isinstance(raw, bytes)
    parsed = parse_request(raw)
    assert parsed == request_model
    assert type(parsed) is type(request_model)
    assert dump(parsed) == raw
    assert parse_request(raw.decode()) == request_model


def test_every_request_type_is_covered_by_round_trips() -> None:
    assert {r.type for r in ALL_REQUESTS} == set(REQUEST_TYPES)  # type: ignore[attr-defined]


def test_dump_omits_none_and_keeps_version() -> None:
    doc = json.loads(dump(StartRequest(exec_id="x")))
    assert doc == {"v": 1, "type": "exec.start", "exec_id": "x"}


def test_stdin_data_is_base64_on_the_wire_and_bytes_in_the_model() -> None:
    data = b"\x00\xff binary \n\r"
    doc = json.loads(dump(StdinRequest(exec_id="x", data=data)))
    assert doc["data"] == base64.b64encode(data).decode()
    parsed = parse_request(
        body(v=1, type="exec.stdin", exec_id="x", data=base64.b64encode(data).decode())
    )
    assert isinstance(parsed, StdinRequest)
    assert parsed.data == data


# Bytes whose base64 differs between the standard and the URL-safe alphabet.
ALPHABET_BYTES = [(b"\xfb\xff\xbf", "+/+/"), (b"ab?", "YWI/"), (b"\xff", "/w==")]


@pytest.mark.parametrize(("data", "standard"), ALPHABET_BYTES)
def test_bytes_out_are_standard_padded_base64(data: bytes, standard: str) -> None:
    exit_info = ExitInfo(exit_code=0, stdout=data, stderr=data)
    doc = json.loads(exit_info.model_dump_json())
    assert doc["stdout"] == doc["stderr"] == standard
    assert base64.b64decode(standard, validate=True) == data
    chunk = OutputEvent(**event_common("output"), stream="stdout", seq=0, data=data)
    assert json.loads(dump(chunk))["data"] == standard
    assert json.loads(dump(StdinRequest(exec_id="x", data=data)))["data"] == standard


@pytest.mark.parametrize(("data", "standard"), ALPHABET_BYTES)
def test_bytes_in_accept_both_alphabets_padded_or_not(data: bytes, standard: str) -> None:
    urlsafe = standard.replace("+", "-").replace("/", "_")
    for text in {standard, urlsafe, standard.rstrip("="), urlsafe.rstrip("=")}:
        parsed = parse_request(body(v=1, type="exec.stdin", exec_id="x", data=text))
        assert isinstance(parsed, StdinRequest)
        assert parsed.data == data, text


@given(st.binary(max_size=4096))
@FAST
def test_stdin_bytes_round_trip(data: bytes) -> None:
    req = StdinRequest(exec_id="x", data=data)
    assert parse_request(dump(req)) == req


@pytest.mark.parametrize("data", ["!!!!", "abc$", "é", "a b c d"])
def test_stdin_invalid_base64(data: str) -> None:
    msg = invalid(body(v=1, type="exec.stdin", exec_id="x", data=data))
    assert msg.startswith("invalid request: exec.stdin.data: ")
    assert "base64" in msg


def test_full_config_survives_the_wire() -> None:
    parsed = parse_request(dump(CreateRequest(config=FULL_CONFIG)))
    assert isinstance(parsed, CreateRequest)
    assert parsed.config == FULL_CONFIG
    assert parsed.config.env == ["A=1", "B=", "C=x=y"]
    assert parsed.config.console_size == ConsoleSize(width=132, height=43)


# -- replies -----------------------------------------------------------------


def exec_info(**over: Any) -> ExecInfo:
    fields: dict[str, Any] = {
        "exec_id": "job-1",
        "agent": "local",
        "container_id": "c.1",
        "state": ExecState.EXITED,
        "cmd": ["sh", "-c", "exit 3"],
        "env_keys": ["A"],
        "created_at": T0,
        "started_at": T0 + timedelta(seconds=1),
        "finished_at": T0 + timedelta(seconds=2),
        "pid": 1234,
        "exit": ExitInfo(
            exit_code=137,
            signal="SIGKILL",
            timed_out=True,
            stdout=b"\x00out",
            stderr=b"err\xff",
            stdout_dropped=10,
            stderr_dropped=0,
        ),
    }
    fields.update(over)
    return ExecInfo(**fields)


def test_reply_success_round_trip() -> None:
    reply = Reply.success(
        exec_info(), request_type="exec.run", request_id="r1", agent="local", exec_id="job-1"
    )
    assert reply.ok is True
    assert reply.error is None
    parsed = parse_reply(dump(reply))
    assert parsed == reply
    assert isinstance(parsed.result, ExecInfo)
    assert parsed.result.exit is not None
    assert parsed.result.exit.stdout == b"\x00out"


def test_reply_success_with_a_list_and_with_nothing() -> None:
    listing = Reply.success(ExecList(execs=[exec_info(), exec_info(exec_id="job-2")]))
    parsed = parse_reply(dump(listing))
    assert isinstance(parsed.result, ExecList)
    assert [e.exec_id for e in parsed.result.execs] == ["job-1", "job-2"]
    empty = Reply.success(ExecList(execs=[]))
    assert parse_reply(dump(empty)) == empty
    nothing = Reply.success(None, request_type="exec.stdin")
    assert parse_reply(dump(nothing)) == nothing


def test_reply_failure() -> None:
    reply = Reply.failure(
        ErrorCode.COMMAND_NOT_FOUND,
        "nope: not found",
        request_type="exec.start",
        request_id="r",
        agent="local",
        exec_id="x",
        exit_code=127,
    )
    assert reply.ok is False
    assert reply.result is None
    assert reply.error == ErrorInfo(
        code="command_not_found", message="nope: not found", exit_code=127
    )
    assert parse_reply(dump(reply)) == reply


def test_reply_failure_truncates_long_messages() -> None:
    reply = Reply.failure("internal", "x" * 10_000)
    assert reply.error is not None
    assert len(reply.error.message) == 4096


@pytest.mark.parametrize("raw", [b"nope", b"[]", b'{"v":1,"type":"reply"}', b'{"ok":true,"v":2}'])
def test_parse_reply_rejects_garbage(raw: bytes) -> None:
    with pytest.raises(InvalidRequest, match=r"^invalid reply: "):
        parse_reply(raw)


# -- events ------------------------------------------------------------------


def event_common(kind: str) -> dict[str, Any]:
    return {
        "event_id": make_event_id("local", "job-1", "inst", kind),
        "agent": "local",
        "exec_id": "job-1",
        "container_id": "ns:ctr.1",
        "time": T0,
        "labels": {"team": "infra"},
    }


ALL_EVENTS: list[BaseModel] = [
    CreatedEvent(**event_common("created"), cmd=["ls"], env_keys=["A", "B"], tty=True),
    StartedEvent(**event_common("started"), pid=42, started_at=T0),
    StartedEvent(**event_common("started")),
    OutputEvent(**event_common("output"), stream="stdout", seq=0, data=b"\x00\x01hello"),
    OutputEvent(**event_common("output"), stream="stderr", seq=7, data=b""),
    ExitedEvent(**event_common("exited"), exit=ExitInfo(exit_code=0, started_at=T0)),
    ExitedEvent(
        **event_common("exited"),
        exit=ExitInfo(exit_code=143, signal="SIGTERM", timed_out=True, stdout=b"x"),
    ),
    FailedEvent(
        **event_common("failed"),
        error=ErrorInfo(code="command_not_found", message="no such file", exit_code=127),
    ),
    CreatedEvent(**event_common("created"), cmd=["id", "-u"], user="1000:1000"),
]


@pytest.mark.parametrize("event", ALL_EVENTS, ids=lambda e: e.type)
def test_every_event_round_trips(event: BaseModel) -> None:
    parsed = parse_event(dump(event))
    assert parsed == event
    assert type(parsed) is type(event)
    assert parsed.time.tzinfo is not None


def test_output_event_data_is_base64_on_the_wire() -> None:
    event = ALL_EVENTS[3]
    doc = json.loads(dump(event))
    assert doc["data"] == base64.b64encode(b"\x00\x01hello").decode()


def test_created_event_carries_the_user_only_when_one_was_asked_for() -> None:
    """``user`` is additive: left out for the agent's default user, so such an event is
    the same bytes a reader from before the field sees; a body without it still parses."""
    with_user = json.loads(dump(ALL_EVENTS[-1]))
    assert with_user["user"] == "1000:1000"
    assert "SECRET" not in json.dumps(with_user)
    default = CreatedEvent(**event_common("created"), cmd=["ls"], env_keys=["SECRET"])
    doc = json.loads(dump(default))
    assert "user" not in doc
    assert set(doc) == {*event_common("created"), "v", "type", "cmd", "env_keys", "tty"}
    older = parse_event(json.dumps({k: v for k, v in with_user.items() if k != "user"}))
    assert isinstance(older, CreatedEvent) and older.user is None
    named = parse_event(json.dumps({**with_user, "user": "nobody"}))
    assert isinstance(named, CreatedEvent) and named.user == "nobody"


@pytest.mark.parametrize("user", ["", "a b", "-x", "root:", "x" * 257])
def test_created_event_user_follows_the_config_rules(user: str) -> None:
    doc = json.loads(dump(ALL_EVENTS[-1]))
    with pytest.raises(InvalidRequest, match=r"^invalid event: exec\.created\.user: "):
        parse_event(json.dumps({**doc, "user": user}))
    with pytest.raises(ValueError, match="user"):
        ExecConfig(cmd=["true"], user=user)


def test_every_event_kind_is_covered() -> None:
    kinds = {e.type.removeprefix("exec.") for e in ALL_EVENTS}  # type: ignore[attr-defined]
    assert kinds == set(EVENT_KINDS)


@pytest.mark.parametrize(
    "raw",
    [
        b"{}",
        b"garbage",
        b'{"v":1,"type":"exec.unknown"}',
        b'{"v":1,"type":"exec.output","event_id":"e","agent":"a","exec_id":"x",'
        b'"time":"2024-01-01T00:00:00Z","stream":"stdin","seq":0,"data":""}',
    ],
)
def test_parse_event_rejects_garbage(raw: bytes) -> None:
    with pytest.raises(InvalidRequest, match=r"^invalid event: "):
        parse_event(raw)


def test_exit_code_range() -> None:
    ExitInfo(exit_code=255)
    with pytest.raises(ValueError, match="less than or equal to 255"):
        ExitInfo(exit_code=256)
    with pytest.raises(ValueError, match="greater than or equal to 0"):
        ExitInfo(exit_code=-1)


# -- event ids ---------------------------------------------------------------


def test_make_event_id_is_deterministic() -> None:
    a = make_event_id("local", "job-1", "inst-1", "exited")
    assert a == make_event_id("local", "job-1", "inst-1", "exited")
    assert re.fullmatch(r"[0-9a-f]{32}", a)


def test_make_event_id_is_distinct_by_every_input() -> None:
    base = ("local", "job-1", "inst-1", "output", "stdout:0")
    ids = {make_event_id(*base)}
    for i, other in enumerate(["remote", "job-2", "inst-2", "exited", "stdout:1"]):
        changed = list(base)
        changed[i] = other
        ids.add(make_event_id(*changed))
    assert len(ids) == 6


def test_make_event_id_distinct_by_kind_and_instance() -> None:
    ids = {
        make_event_id("local", "job-1", instance, kind)
        for instance in ("i1", "i2", "i3")
        for kind in EVENT_KINDS
    }
    assert len(ids) == 3 * len(EVENT_KINDS)


def test_make_event_id_fields_do_not_run_together() -> None:
    assert make_event_id("ab", "c", "i", "k") != make_event_id("a", "bc", "i", "k")
    assert make_event_id("a", "b", "ik", "") != make_event_id("a", "b", "i", "k")


# -- routing-key segments ----------------------------------------------------


@given(st.text())
@FAST
def test_key_segment_round_trip(value: str) -> None:
    segment = encode_key_segment(value)
    assert decode_key_segment(segment) == value
    assert not set(segment) & {".", "*", "#"}
    assert segment.isascii()
    assert segment != ""


@given(st.text(alphabet=string.printable + "~%.:@+/*#é"), st.text(alphabet="~%.a:"))
@FAST
def test_key_segment_is_injective(a: str, b: str) -> None:
    if a != b:
        assert encode_key_segment(a) != encode_key_segment(b)


@given(st.from_regex(CONTAINER_PATTERN, fullmatch=True))
@FAST
def test_container_ids_round_trip_through_segments(container_id: str) -> None:
    segment = encode_key_segment(container_id)
    assert re.fullmatch(r"[A-Za-z0-9_%~-]+", segment)
    assert decode_key_segment(segment) == container_id


def test_key_segment_examples() -> None:
    assert encode_key_segment("") == "~"
    assert decode_key_segment("~") == ""
    assert encode_key_segment("~") == "%7E"  # a real "~" never collides with the host
    assert decode_key_segment("%7E") == "~"
    assert encode_key_segment("abc-DEF_123") == "abc-DEF_123"
    assert encode_key_segment("a.b") == "a%2Eb"
    assert encode_key_segment("ns:c*#") == "ns%3Ac%2A%23"
    assert encode_key_segment("100%") == "100%25"
    assert encode_key_segment("é") == "%C3%A9"
    assert decode_key_segment("%C3%A9") == "é"


# -- names and routing keys --------------------------------------------------


def test_names_of_a_namespace() -> None:
    names = Names("tenant1")
    assert names.requests_exchange == "tenant1.requests"
    assert names.events_exchange == "tenant1.events"
    assert names.dead_exchange == "tenant1.dead"
    assert names.dead_queue == "tenant1.dead"
    assert names.unrouted_exchange == "tenant1.unrouted"
    assert names.unrouted_queue == "tenant1.unrouted"
    assert names.control_exchange == "tenant1.control"
    assert names.agent_queue("a1") == "tenant1.agent.a1"
    assert names.pool_queue("p1") == "tenant1.pool.p1"
    assert Names.agent_routing_key("a1") == "agent.a1"
    assert Names.pool_routing_key("p1") == "pool.p1"
    assert Names().ns == "execbus"
    assert REASON_HEADER == "x-execbus-reason"


def test_event_routing_key_examples() -> None:
    assert Names.event_routing_key("local", "", "exited") == "exec.local.~.exited"
    assert Names.event_routing_key("a", "ns:ctr.1", "output") == "exec.a.ns%3Actr%2E1.output"


@given(
    st.from_regex(NAME_PATTERN, fullmatch=True),
    st.text(),
    st.sampled_from(EVENT_KINDS),
)
@FAST
def test_event_routing_key_round_trip(agent: str, container_id: str, kind: str) -> None:
    key = Names.event_routing_key(agent, container_id, kind)
    assert key.count(".") == 3
    assert "*" not in key
    assert "#" not in key
    parsed = Names.parse_event_routing_key(key)
    assert (parsed.agent, parsed.container_id, parsed.kind) == (agent, container_id, kind)


@pytest.mark.parametrize("key", ["exec.a.b", "exec.a.b.c.d", "event.a.~.exited", ""])
def test_parse_event_routing_key_rejects_other_keys(key: str) -> None:
    with pytest.raises(ValueError):
        Names.parse_event_routing_key(key)


@pytest.mark.parametrize(
    ("agent", "container_id", "kind", "pattern"),
    [
        (None, None, None, "exec.*.*.*"),
        ("a1", None, None, "exec.a1.*.*"),
        (None, "", None, "exec.*.~.*"),
        (None, "c.1", "exited", "exec.*.c%2E1.exited"),
        ("a1", "ns:c", "output", "exec.a1.ns%3Ac.output"),
    ],
)
def test_event_binding(
    agent: str | None, container_id: str | None, kind: str | None, pattern: str
) -> None:
    assert Names.event_binding(agent, container_id, kind) == pattern


def test_event_binding_matches_its_routing_key() -> None:
    key = Names.event_routing_key("a1", "x:y", "failed")
    assert Names.event_binding("a1", "x:y", "failed") == key
