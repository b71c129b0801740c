"""The RPC reply sent to a request's ``reply_to`` with its ``correlation_id``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, TypeAdapter

from execbus.wire.config import StrictModel
from execbus.wire.ids import AgentName, ExecId
from execbus.wire.records import ErrorInfo, ExecInfo, ExecList


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
    def success(
        cls,
        result: ExecInfo | ExecList | None,
        *,
        request_type: str | None = None,
        request_id: str | None = None,
        agent: str | None = None,
        exec_id: str | None = None,
        replayed: bool = False,
    ) -> Reply:
        """A successful reply."""
        return cls(
            ok=True,
            result=result,
            request_type=request_type,
            request_id=request_id,
            agent=agent,
            exec_id=exec_id,
            replayed=replayed,
        )

    @classmethod
    def failure(
        cls,
        code: str,
        message: str,
        *,
        request_type: str | None = None,
        request_id: str | None = None,
        agent: str | None = None,
        exec_id: str | None = None,
        exit_code: int | None = None,
        replayed: bool = False,
    ) -> Reply:
        """An error reply with a stable ``code``."""
        return cls(
            ok=False,
            error=ErrorInfo(code=code, message=message[:4096], exit_code=exit_code),
            request_type=request_type,
            request_id=request_id,
            agent=agent,
            exec_id=exec_id,
            replayed=replayed,
        )


REPLY_ADAPTER: TypeAdapter[Reply] = TypeAdapter(Reply)
