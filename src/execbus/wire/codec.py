"""Bytes <-> wire models, with errors a caller can act on.

Parsing never raises anything but :class:`execbus.errors.InvalidRequest`,
whose message names the offending field, so the worker can answer and
dead-letter a bad message instead of crashing.
"""

from __future__ import annotations

import json

from pydantic import BaseModel, ValidationError

from execbus.errors import InvalidRequest
from execbus.wire.events import EVENT_ADAPTER, Event
from execbus.wire.replies import REPLY_ADAPTER, Reply
from execbus.wire.requests import REQUEST_ADAPTER, REQUEST_TYPES, WIRE_VERSION, Request

MAX_ERROR_DETAILS = 5
MAX_LOC_PART = 64


def _loc_part(part: int | str) -> str:
    """One element of an error location; unknown keys come from the input, so bound them."""
    text = str(part)
    if len(text) > MAX_LOC_PART:
        text = text[:MAX_LOC_PART] + "..."
    if not text.isprintable():
        text = text.encode("unicode_escape").decode("ascii")
    return text


def describe_validation_error(exc: ValidationError) -> str:
    """A short, one-line summary of a pydantic error (never echoes input values)."""
    parts = []
    for err in exc.errors(include_input=False, include_url=False)[:MAX_ERROR_DETAILS]:
        loc = ".".join(_loc_part(p) for p in err["loc"]) or "body"
        parts.append(f"{loc}: {err['msg']}")
    more = exc.error_count() - MAX_ERROR_DETAILS
    if more > 0:
        parts.append(f"and {more} more")
    return "; ".join(parts)


def _precheck(body: bytes | str) -> None:
    """Catch what pydantic's messages would make obscure: not JSON, wrong version/type."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise InvalidRequest(f"body is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(doc, dict):
        raise InvalidRequest("body must be a JSON object")
    version = doc.get("v")
    if type(version) is not int or version != WIRE_VERSION:
        raise InvalidRequest(
            f"unsupported wire version {repr(version)[:32]}; this worker speaks v={WIRE_VERSION}"
        )
    kind = doc.get("type")
    if kind not in REQUEST_TYPES:
        raise InvalidRequest(
            f"unknown request type {str(kind)[:64]!r}; expected one of {', '.join(REQUEST_TYPES)}"
        )


def parse_request(body: bytes | str) -> Request:
    """Parse and validate a request body."""
    try:
        request = REQUEST_ADAPTER.validate_json(body)
    except ValidationError as exc:
        _precheck(body)
        raise InvalidRequest(f"invalid request: {describe_validation_error(exc)}") from None
    except (ValueError, RecursionError) as exc:
        raise InvalidRequest(f"invalid request: {str(exc)[:200]}") from None
    if "v" not in request.model_fields_set:
        # The model defaults v=1 for Python callers; on the wire it is mandatory.
        raise InvalidRequest(f"missing wire version; this worker speaks v={WIRE_VERSION}")
    return request


def parse_reply(body: bytes | str) -> Reply:
    """Parse a reply (client side)."""
    try:
        return REPLY_ADAPTER.validate_json(body)
    except ValidationError as exc:
        raise InvalidRequest(f"invalid reply: {describe_validation_error(exc)}") from None


def parse_event(body: bytes | str) -> Event:
    """Parse an event (client side)."""
    try:
        return EVENT_ADAPTER.validate_json(body)
    except ValidationError as exc:
        raise InvalidRequest(f"invalid event: {describe_validation_error(exc)}") from None


def dump(model: BaseModel) -> bytes:
    """Serialize a wire model to compact JSON bytes (defaults omitted only when None)."""
    return model.model_dump_json(exclude_none=True).encode()
