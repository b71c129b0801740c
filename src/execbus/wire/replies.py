"""The RPC reply sent to a request's ``reply_to`` with its ``correlation_id``."""

from __future__ import annotations

from typing import Literal, TypedDict, Unpack

from pydantic import Field, TypeAdapter

from execbus.wire.config import StrictModel
from execbus.wire.ids import AgentName, ExecId
from execbus.wire.records import ErrorInfo, ExecInfo, ExecList


class ReplyAbout(TypedDict, total=False):
    """What a reply is about, each optional: the request it answers and the exec."""

    request_type: str | None
    request_id: str | None
    agent: str | None
    exec_id: str | None
    replayed: bool


class Reply(StrictModel):
    """``ok`` with a ``result``, or not ``ok`` with an ``error``.

    ``replayed``: the request named an exec that already existed with the same
    config (a retry, a re-published request): the reply is that exec, its
    recorded outcome, and nothing ran again.
    """

    v: Literal[1] = 1
    type: Literal["reply"] = "reply"
    ok: bool
    request_type: str | None = Field(default=None, max_length=64)
    request_id: str | None = None
    agent: AgentName | None = None
    exec_id: ExecId | None = None
    replayed: bool = Field(
        default=False,
        description="true when the exec already existed: nothing ran again, this is its "
        "recorded state or outcome",
    )
    result: ExecInfo | ExecList | None = None
    error: ErrorInfo | None = None

    @classmethod
    def success(cls, result: ExecInfo | ExecList | None, **about: Unpack[ReplyAbout]) -> Reply:
        """A successful reply."""
        return cls(ok=True, result=result, **about)

    @classmethod
    def failure(
        cls, code: str, message: str, *, exit_code: int | None = None, **about: Unpack[ReplyAbout]
    ) -> Reply:
        """An error reply with a stable ``code``."""
        error = ErrorInfo(code=code, message=message[:4096], exit_code=exit_code)
        return cls(ok=False, error=error, **about)


REPLY_ADAPTER: TypeAdapter[Reply] = TypeAdapter(Reply)
