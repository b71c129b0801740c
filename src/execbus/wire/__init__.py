"""The wire contract: requests, replies, events and the names they travel under.

Everything here is pydantic v2; JSON Schema and AsyncAPI documents are
generated from these models (``execbus.wire.schema``).
"""

from execbus.wire.codec import dump, parse_event, parse_reply, parse_request
from execbus.wire.config import ConsoleSize, ExecConfig
from execbus.wire.events import (
    CreatedEvent,
    Event,
    ExitedEvent,
    FailedEvent,
    OutputEvent,
    StartedEvent,
    make_event_id,
)
from execbus.wire.ids import decode_key_segment, encode_key_segment, new_exec_id
from execbus.wire.records import ErrorInfo, ExecInfo, ExecList, ExecState, ExitInfo
from execbus.wire.replies import Reply
from execbus.wire.requests import (
    CreateRequest,
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
from execbus.wire.routing import REASON_HEADER, Names

__all__ = [
    "REASON_HEADER",
    "ConsoleSize",
    "CreateRequest",
    "CreatedEvent",
    "ErrorInfo",
    "Event",
    "ExecConfig",
    "ExecInfo",
    "ExecList",
    "ExecState",
    "ExitInfo",
    "ExitedEvent",
    "FailedEvent",
    "InspectRequest",
    "ListRequest",
    "Names",
    "OutputEvent",
    "RemoveRequest",
    "Reply",
    "Request",
    "ResizeRequest",
    "RunRequest",
    "SignalRequest",
    "StartRequest",
    "StartedEvent",
    "StdinRequest",
    "WaitRequest",
    "decode_key_segment",
    "dump",
    "encode_key_segment",
    "make_event_id",
    "new_exec_id",
    "parse_event",
    "parse_reply",
    "parse_request",
]
