"""The exec configuration: everything needed to start one process.

It carries all the reference ``ExecConfig``/``ExecStartParams`` had, plus a
timeout, an output byte cap and caller labels. Validation is strict: a bad
value is a clear error, never a silent drop.
"""

from __future__ import annotations

import base64
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, WithJsonSchema, field_validator

from execbus.wire.ids import ContainerId

MAX_ARGS = 4096
MAX_ARG_BYTES = 128 * 1024
MAX_ENV = 1024
MAX_ENV_ENTRY_BYTES = 32 * 1024
MAX_LABELS = 64
MAX_TIMEOUT_S = 7 * 24 * 3600.0
MAX_OUTPUT_LIMIT = 4 * 1024 * 1024  # both streams fit one agent frame (16 MiB)
DEFAULT_OUTPUT_LIMIT = 1024 * 1024
MAX_CONSOLE_DIM = 10_000
MAX_USER_CHARS = 256
#: ``ExecConfig.user``: name, uid, uid:gid or name:group (Docker ``--user`` rules).
USER_PATTERN = r"^[A-Za-z0-9_.][A-Za-z0-9_.-]*(:[A-Za-z0-9_.][A-Za-z0-9_.-]*)?$"

Dimension = Annotated[int, Field(ge=1, le=MAX_CONSOLE_DIM)]
#: The lifecycle events a caller may turn off; the exit notification
#: (``exec.exited``/``exec.failed``) is always published.
LifecycleEvent = Literal["created", "started"]
LIFECYCLE_EVENTS: tuple[LifecycleEvent, ...] = ("created", "started")


def _b64encode(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


# Bytes travel as standard base64 (RFC 4648 section 4, padded): pydantic's own
# ``ser_json_bytes="base64"`` writes the URL-safe alphabet, which most base64
# decoders (Node's atob, Python's b64decode, Java's Base64.getDecoder) reject
# or misread. Input accepts both alphabets, padded or not (``val_json_bytes``).
WireBytes = Annotated[
    bytes,
    PlainSerializer(_b64encode, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "contentEncoding": "base64"}),
]


class StrictModel(BaseModel):
    """Base for wire models: unknown fields are errors, instances are immutable."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        val_json_bytes="base64",
    )


class ConsoleSize(StrictModel):
    """A terminal size in character cells."""

    width: Dimension = 80
    height: Dimension = 24


def _check_no_nul(value: str, what: str) -> None:
    if "\x00" in value:
        raise ValueError(f"{what} must not contain NUL bytes")


class ExecConfig(StrictModel):
    """How to run one command."""

    container_id: ContainerId = Field(
        default="", description="OCI container id; empty runs in the agent's own host."
    )
    cmd: list[str] = Field(min_length=1, max_length=MAX_ARGS, description="argv; never a shell.")
    env: list[str] = Field(default_factory=list, max_length=MAX_ENV, description="KEY=VALUE")
    working_dir: str | None = Field(default=None, max_length=4096)
    user: str | None = Field(
        default=None,
        max_length=MAX_USER_CHARS,
        pattern=USER_PATTERN,
        description="name, uid, uid:gid or name:group (Docker --user rules).",
    )
    tty: bool = False
    attach_stdin: bool = False
    attach_stdout: bool = True
    attach_stderr: bool = True
    privileged: bool = False
    detach: bool = False
    console_size: ConsoleSize | None = None
    timeout: float | None = Field(default=None, gt=0, le=MAX_TIMEOUT_S, description="seconds")
    output_limit: int = Field(
        default=DEFAULT_OUTPUT_LIMIT,
        ge=0,
        le=MAX_OUTPUT_LIMIT,
        description="bytes captured per stream; the rest is counted as dropped.",
    )
    stream_output: bool = Field(default=False, description="publish exec.output events")
    lifecycle_events: list[LifecycleEvent] | None = Field(
        default=None,
        max_length=2,
        description="which of exec.created and exec.started to publish (default: both, "
        "unless the worker turned one off); [] for the exit notification only",
    )
    labels: dict[str, str] = Field(default_factory=dict, max_length=MAX_LABELS)

    @field_validator("cmd")
    @classmethod
    def _check_cmd(cls, cmd: list[str]) -> list[str]:
        if cmd[0] == "":
            raise ValueError("cmd[0] (the executable) must not be empty")
        total = 0
        for arg in cmd:
            _check_no_nul(arg, "cmd arguments")
            total += len(arg.encode())
        if total > MAX_ARG_BYTES:
            raise ValueError(f"cmd is {total} bytes; the limit is {MAX_ARG_BYTES}")
        return cmd

    @field_validator("env")
    @classmethod
    def _check_env(cls, env: list[str]) -> list[str]:
        for i, entry in enumerate(env):
            key, sep, _ = entry.partition("=")
            if not sep:
                raise ValueError(f"env[{i}] has no '=': entries must be KEY=VALUE")
            if not key:
                raise ValueError(f"env[{i}] has an empty name")
            _check_no_nul(entry, f"env[{i}]")
            if len(entry.encode()) > MAX_ENV_ENTRY_BYTES:
                raise ValueError(f"env[{i}] is longer than {MAX_ENV_ENTRY_BYTES} bytes")
        return env

    @field_validator("working_dir")
    @classmethod
    def _check_working_dir(cls, wd: str | None) -> str | None:
        if wd is not None:
            _check_no_nul(wd, "working_dir")
            if not wd.startswith("/"):
                raise ValueError("working_dir must be an absolute path")
        return wd

    @field_validator("labels")
    @classmethod
    def _check_labels(cls, labels: dict[str, str]) -> dict[str, str]:
        for key, value in labels.items():
            if not key or len(key) > 128 or len(value) > 1024:
                raise ValueError("label keys must be 1-128 chars and values at most 1024")
        return labels

    def env_keys(self) -> list[str]:
        """The env variable names, without values (safe to log and publish)."""
        return [entry.partition("=")[0] for entry in self.env]
