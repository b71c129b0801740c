"""Identifiers and their routing-key encoding.

Exec ids, agent names and pool names are restricted to characters that are
safe in an AMQP topic routing key (``[A-Za-z0-9_-]``), so they appear in
routing keys as they are. Container ids may hold more (``.``, ``:``, ``@``,
``+``, ``/``): :func:`encode_key_segment` percent-encodes every byte outside
``[A-Za-z0-9_-]`` so a segment never contains ``.``, ``*`` or ``#``, and
:func:`decode_key_segment` reverses it. The empty container id (the agent's
own host) is written ``~``.
"""

from __future__ import annotations

import re
import uuid
from typing import Annotated

from pydantic import AfterValidator, StringConstraints

SAFE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
CONTAINER_PATTERN = r"^$|^[A-Za-z0-9][A-Za-z0-9_.:@+/-]{0,254}$"

ExecId = Annotated[str, StringConstraints(pattern=SAFE_ID_PATTERN)]
AgentName = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
PoolName = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
MAX_ENCODED_CONTAINER = 160  # keeps exec.<agent>.<container>.<kind> within AMQP's 255 bytes


def _check_encoded_length(value: str) -> str:
    if len(encode_key_segment(value)) > MAX_ENCODED_CONTAINER:
        raise ValueError(
            f"container id is too long for a routing key once encoded "
            f"(more than {MAX_ENCODED_CONTAINER} bytes; '.', ':', '@', '+', '/' count 3)"
        )
    return value


ContainerId = Annotated[
    str, StringConstraints(pattern=CONTAINER_PATTERN), AfterValidator(_check_encoded_length)
]

HOST_CONTAINER_SEGMENT = "~"
_SAFE_KEY_CHARS = re.compile(r"[A-Za-z0-9_-]")
_NAME_RE = re.compile(NAME_PATTERN)


def new_exec_id() -> str:
    """A fresh random exec id (32 hex characters, like the reference's ExecId)."""
    return uuid.uuid4().hex


def is_valid_name(name: str) -> bool:
    """True when ``name`` is a valid agent or pool name."""
    # fullmatch, not match: ``$`` also matches before a trailing newline.
    return _NAME_RE.fullmatch(name) is not None


def encode_key_segment(value: str) -> str:
    """Encode ``value`` as one routing-key segment (reversible, see module doc)."""
    if value == "":
        return HOST_CONTAINER_SEGMENT
    return "".join(
        ch if _SAFE_KEY_CHARS.match(ch) else "".join(f"%{b:02X}" for b in ch.encode())
        for ch in value
    )


def decode_key_segment(segment: str) -> str:
    """Reverse :func:`encode_key_segment`."""
    if segment == HOST_CONTAINER_SEGMENT:
        return ""
    out = bytearray()
    i = 0
    while i < len(segment):
        if segment[i] == "%":
            out.append(int(segment[i + 1 : i + 3], 16))
            i += 3
        else:
            out.extend(segment[i].encode())
            i += 1
    return out.decode()
