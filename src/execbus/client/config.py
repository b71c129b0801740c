"""Friendly arguments to validated wire values: exec configs, requests, event kinds, signals."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypedDict, TypeVar

from pydantic import BaseModel, ValidationError

from execbus.client.target import Target
from execbus.errors import InvalidRequest
from execbus.wire.codec import describe_validation_error
from execbus.wire.config import ExecConfig
from execbus.wire.events import EVENT_KINDS
from execbus.wire.ids import new_exec_id
from execbus.wire.requests import CreateRequest, RunRequest

M = TypeVar("M", bound=BaseModel)
NewExec = TypeVar("NewExec", RunRequest, CreateRequest)


class ExecOptions(TypedDict, total=False):
    """How to run a command, besides its argv (see :class:`ExecConfig`)."""

    container_id: str
    env: Mapping[str, str] | Sequence[str] | None
    user: str | None
    working_dir: str | None
    tty: bool
    attach_stdin: bool
    privileged: bool
    console_size: tuple[int, int] | None
    timeout: float | None
    output_limit: int | None
    stream_output: bool
    labels: Mapping[str, str] | None
    lifecycle_events: Sequence[str] | None  # of "created", "started"; [] = the exit only


def env_list(env: Mapping[str, str] | Sequence[str] | None) -> list[str]:
    """``{"K": "V"}`` or ``["K=V"]`` as the wire's ``KEY=VALUE`` list (validated later)."""
    if env is None:
        return []
    if isinstance(env, str):
        raise InvalidRequest("env must be a mapping or a list of KEY=VALUE strings, not a string")
    if isinstance(env, Mapping):
        return [f"{key}={value}" for key, value in env.items()]
    return list(env)


def build_config(
    cmd: Sequence[str] | ExecConfig, *, detach: bool = False, **options: Any
) -> ExecConfig:
    """A validated config; a bad value raises :class:`InvalidRequest` naming the field."""
    if isinstance(cmd, ExecConfig):
        if options:
            raise InvalidRequest("pass either an ExecConfig or options, not both")
        return cmd.model_copy(update={"detach": detach}) if detach else cmd
    if isinstance(cmd, str):
        raise InvalidRequest("cmd must be a list of arguments (argv), not a string")
    fields: dict[str, Any] = {k: v for k, v in options.items() if v is not None}
    if "env" in fields:
        fields["env"] = env_list(fields["env"])
    if "labels" in fields:
        fields["labels"] = dict(fields["labels"])
    if "lifecycle_events" in fields:
        fields["lifecycle_events"] = list(fields["lifecycle_events"])
    if "console_size" in fields:
        width, height = fields["console_size"]
        fields["console_size"] = {"width": width, "height": height}
    return model(ExecConfig, cmd=list(cmd), detach=detach, **fields)


def exec_request(
    cls: type[NewExec],
    agent: str | None,
    pool: str | None,
    cmd: Sequence[str] | ExecConfig,
    exec_id: str | None,
    options: ExecOptions,
    *,
    detach: bool = False,
) -> tuple[Target, str, NewExec]:
    """A run or create request to ``agent`` or ``pool`` (exactly one), with its target
    and exec id (``exec_id``, or a fresh one)."""
    target = Target.of(agent, pool)
    config = build_config(cmd, detach=detach, **options)
    exec_id = exec_id or new_exec_id()
    fields = {"agent": target.agent, "pool": target.pool, "exec_id": exec_id, "config": config}
    return target, exec_id, model(cls, **fields)


def model(cls: type[M], **fields: Any) -> M:
    """Build a wire model; validation errors become :class:`InvalidRequest`."""
    try:
        return cls(**fields)
    except ValidationError as exc:
        what = "exec config" if cls is ExecConfig else "request"
        raise InvalidRequest(f"invalid {what}: {describe_validation_error(exc)}") from None


def event_kind(kind: str | None) -> str | None:
    """``"exited"`` or ``"exec.exited"`` → ``"exited"``; an unknown kind is an error."""
    if kind is None:
        return None
    short = kind.removeprefix("exec.")
    if short not in EVENT_KINDS:
        raise InvalidRequest(
            f"unknown event kind {kind!r}; expected one of {', '.join(EVENT_KINDS)}"
        )
    return short


def signal_arg(signal: str | int) -> str | int:
    """``"9"`` → 9, ``"term"`` → ``"TERM"``: what the wire's signal field accepts."""
    if isinstance(signal, str):
        text = signal.strip()
        return int(text) if text.isdigit() else text.upper()
    return signal
