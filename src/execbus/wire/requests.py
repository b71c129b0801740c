"""Exec requests: the messages orchestrators publish on ``<ns>.requests``.

Every request is an envelope ``{"v": 1, "type": "exec.<op>", ...}``,
discriminated by ``type``. ``agent`` names the target agent (it may be left
out when publishing to ``agent.<name>``; the worker fills it in), ``pool`` a
pool of agents instead (``pool.<name>``). ``request_id`` makes redelivery
detectable; when absent the AMQP ``message_id`` is used.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, TypeAdapter, field_validator

from execbus.wire.config import Dimension, ExecConfig, StrictModel, WireBytes
from execbus.wire.ids import AgentName, ContainerId, ExecId, PoolName

WIRE_VERSION = 1
MAX_STDIN_CHUNK = 1024 * 1024


def _require_version(schema: dict[str, Any]) -> None:
    """On the wire ``v`` is required (Python callers get the default)."""
    required = schema.setdefault("required", [])
    if "v" not in required:
        required.insert(0, "v")


class RequestBase(StrictModel):
    """Fields shared by every request."""

    model_config = ConfigDict(**StrictModel.model_config, json_schema_extra=_require_version)

    v: Literal[1] = 1
    request_id: str | None = Field(default=None, max_length=128)
    agent: AgentName | None = None
    pool: PoolName | None = None

    @field_validator("v", mode="before")
    @classmethod
    def _exact_version(cls, value: object) -> object:
        # Literal[1] alone would also take JSON ``true`` and ``1.0``.
        if type(value) is not int:
            raise ValueError(f"the wire version must be the integer {WIRE_VERSION}")
        return value


class ConfigRequest(RequestBase):
    """A request that brings an exec's whole configuration (create and run)."""

    exec_id: ExecId | None = None
    config: ExecConfig


class CreateRequest(ConfigRequest):
    """Register an exec without starting it (idempotent by ``exec_id``)."""

    type: Literal["exec.create"] = "exec.create"


class StartRequest(RequestBase):
    """Start a created exec. Replies when it exits, or at once when detached."""

    type: Literal["exec.start"] = "exec.start"
    exec_id: ExecId
    detach: bool | None = Field(default=None, description="overrides config.detach")
    console_size: Annotated[tuple[Dimension, Dimension], Field()] | None = Field(
        default=None, description="(width, height); overrides config.console_size"
    )


class RunRequest(ConfigRequest):
    """Create and start in one step."""

    type: Literal["exec.run"] = "exec.run"


class ResizeRequest(RequestBase):
    """Resize a running TTY exec."""

    type: Literal["exec.resize"] = "exec.resize"
    exec_id: ExecId
    width: Dimension
    height: Dimension


class SignalRequest(RequestBase):
    """Send a signal (name like ``SIGTERM``/``TERM`` or number) to the exec's process group."""

    type: Literal["exec.signal"] = "exec.signal"
    exec_id: ExecId
    signal: (
        Annotated[str, Field(pattern=r"^(SIG)?[A-Z0-9+-]{2,12}$")]
        | Annotated[int, Field(ge=1, le=64)]
    ) = "SIGKILL"


class StdinRequest(RequestBase):
    """Write bytes to the exec's stdin; ``close`` closes it afterwards."""

    type: Literal["exec.stdin"] = "exec.stdin"
    exec_id: ExecId
    data: WireBytes = Field(default=b"", max_length=MAX_STDIN_CHUNK)
    close: bool = False


class InspectRequest(RequestBase):
    """Return one exec; its captured output only with ``include_output``."""

    type: Literal["exec.inspect"] = "exec.inspect"
    exec_id: ExecId
    include_output: bool = Field(
        default=False, description="also return the captured stdout/stderr (up to output_limit)"
    )


class WaitRequest(RequestBase):
    """Reply once the exec has finished (at once if it already has); its captured
    output only with ``include_output``."""

    type: Literal["exec.wait"] = "exec.wait"
    exec_id: ExecId
    include_output: bool = Field(
        default=False, description="also return the captured stdout/stderr (up to output_limit)"
    )


class ListRequest(RequestBase):
    """List execs, optionally of one container; finished ones only when asked.
    Never with captured output (inspect an exec for it)."""

    type: Literal["exec.list"] = "exec.list"
    container_id: ContainerId | None = None
    include_finished: bool = True


class RemoveRequest(RequestBase):
    """Forget a finished exec; ``force`` kills a running one first."""

    type: Literal["exec.remove"] = "exec.remove"
    exec_id: ExecId
    force: bool = False


Request = Annotated[
    CreateRequest
    | StartRequest
    | RunRequest
    | ResizeRequest
    | SignalRequest
    | StdinRequest
    | InspectRequest
    | WaitRequest
    | ListRequest
    | RemoveRequest,
    Field(discriminator="type"),
]

REQUEST_ADAPTER: TypeAdapter[Request] = TypeAdapter(Request)
REQUEST_TYPES = (
    "exec.create",
    "exec.start",
    "exec.run",
    "exec.resize",
    "exec.signal",
    "exec.stdin",
    "exec.inspect",
    "exec.wait",
    "exec.list",
    "exec.remove",
)
