"""Generate the message contract from the models: JSON Schema files and an AsyncAPI document.

``python -m execbus.wire.schema docs`` writes ``docs/schema/*.json`` and
``docs/asyncapi.yaml``; a test regenerates them and compares, so the
documents can never drift from the code.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, TypeAdapter

from execbus.wire import events, replies, requests

REQUESTS: dict[str, type[BaseModel]] = {
    "exec.create": requests.CreateRequest,
    "exec.start": requests.StartRequest,
    "exec.run": requests.RunRequest,
    "exec.resize": requests.ResizeRequest,
    "exec.signal": requests.SignalRequest,
    "exec.stdin": requests.StdinRequest,
    "exec.inspect": requests.InspectRequest,
    "exec.wait": requests.WaitRequest,
    "exec.list": requests.ListRequest,
    "exec.remove": requests.RemoveRequest,
}
EVENTS: dict[str, type[BaseModel]] = {
    "exec.created": events.CreatedEvent,
    "exec.started": events.StartedEvent,
    "exec.output": events.OutputEvent,
    "exec.exited": events.ExitedEvent,
    "exec.failed": events.FailedEvent,
}


def json_schemas() -> dict[str, dict[str, Any]]:
    """File name -> JSON Schema, for every request, the reply and every event."""
    out: dict[str, dict[str, Any]] = {}
    out["request.json"] = TypeAdapter(requests.Request).json_schema(mode="validation")
    out["reply.json"] = replies.Reply.model_json_schema(mode="serialization")
    out["event.json"] = TypeAdapter(events.Event).json_schema(mode="serialization")
    for name, model in {**REQUESTS, **EVENTS}.items():
        out[f"{name}.json"] = model.model_json_schema(mode=_mode(name))
    for doc in out.values():
        doc["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return out


def _mode(name: str) -> Literal["validation", "serialization"]:
    """Requests are documented as accepted (validation), the rest as produced."""
    return "validation" if name in REQUESTS else "serialization"


def asyncapi() -> dict[str, Any]:
    """An AsyncAPI 2.6 document: exchanges, routing keys and payloads."""
    schemas: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    models: dict[str, type[BaseModel]] = {**REQUESTS, **EVENTS, "reply": replies.Reply}
    for name, model in models.items():
        ref = "#/components/schemas/{model}"
        schema = model.model_json_schema(mode=_mode(name), ref_template=ref)
        for def_name, definition in schema.pop("$defs", {}).items():
            schemas[def_name] = definition
        schemas[model.__name__] = schema
        messages[name.replace(".", "_")] = {
            "name": name,
            "contentType": "application/json",
            "payload": {"$ref": f"#/components/schemas/{model.__name__}"},
        }
    return {
        "asyncapi": "2.6.0",
        "info": _info(),
        "defaultContentType": "application/json",
        "channels": _channels(),
        "components": {"messages": messages, "schemas": schemas},
    }


def _info() -> dict[str, Any]:
    return {
        "title": "execbus",
        "version": "1",
        "description": (
            "Exec requests, RPC replies and exec events over RabbitMQ. Every exchange and "
            "queue name starts with the namespace (default `execbus`). Container ids in "
            "routing keys are percent-encoded (every byte outside [A-Za-z0-9_-]); the empty "
            "container id (the agent's own host) is `~`."
        ),
    }


def _amqp_exchange(name: str, kind: str) -> dict[str, Any]:
    return {"amqp": {"is": "routingKey", "exchange": {"name": name, "type": kind, "durable": True}}}


def _channels() -> dict[str, Any]:
    req_refs = [{"$ref": f"#/components/messages/{n.replace('.', '_')}"} for n in REQUESTS]
    ev_refs = [{"$ref": f"#/components/messages/{n.replace('.', '_')}"} for n in EVENTS]
    return {
        "agent.{agent}": {
            "description": "Requests for one agent: exchange `<ns>.requests`, routed to the "
            "quorum queue `<ns>.agent.<agent>` (single active consumer, delivery limit, "
            "dead letters to `<ns>.dead` with the reason in `x-execbus-reason`). Set "
            "`reply_to` and `correlation_id` to get a reply.",
            "parameters": {
                "agent": {
                    "schema": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"}
                }
            },
            "bindings": _amqp_exchange("execbus.requests", "topic"),
            "publish": {"message": {"oneOf": req_refs}},
        },
        "{reply_to}": {
            "description": "The RPC reply, published to the default exchange with the "
            "request's `reply_to` as routing key and its `correlation_id`. Non-detached "
            "`exec.run`/`exec.start` and `exec.wait` are answered when the exec finishes.",
            "parameters": {"reply_to": {"schema": {"type": "string"}}},
            "subscribe": {"message": {"$ref": "#/components/messages/reply"}},
        },
        "exec.{agent}.{container}.{event}": {
            "description": "Exec events on exchange `<ns>.events`. Drop duplicates by "
            "`event_id` (the same event may be published twice after a failover).",
            "parameters": {
                "agent": {"schema": {"type": "string"}},
                "container": {"schema": {"type": "string"}},
                "event": {"schema": {"type": "string", "enum": list(events.EVENT_KINDS)}},
            },
            "bindings": _amqp_exchange("execbus.events", "topic"),
            "subscribe": {"message": {"oneOf": ev_refs}},
        },
    }


def to_yaml(value: Any, indent: int = 0) -> str:
    """A minimal YAML emitter (JSON-compatible subset), so no YAML library is needed."""
    pad = "  " * indent
    if isinstance(value, dict):
        if not value:
            return "{}"
        lines = []
        for key, item in value.items():
            rendered = to_yaml(item, indent + 1)
            if isinstance(item, dict | list) and item:
                lines.append(f"{pad}{json.dumps(str(key))}:\n{rendered}")
            else:
                lines.append(f"{pad}{json.dumps(str(key))}: {rendered}")
        return "\n".join(lines)
    if isinstance(value, list):
        if not value:
            return "[]"
        lines = []
        for item in value:
            rendered = to_yaml(item, indent + 1)
            if isinstance(item, dict | list) and item:
                lines.append(f"{pad}-\n{rendered}")
            else:
                lines.append(f"{pad}- {rendered}")
        return "\n".join(lines)
    return json.dumps(value)


def render_all() -> dict[str, str]:
    """Relative path -> file content, for everything this module generates."""
    files = {
        f"schema/{name}": json.dumps(doc, indent=2, sort_keys=True) + "\n"
        for name, doc in json_schemas().items()
    }
    files["asyncapi.yaml"] = "# Generated by `make schema` from execbus.wire; do not edit.\n" + (
        to_yaml(asyncapi()) + "\n"
    )
    return files


def write_all(docs_dir: Path) -> list[Path]:
    """Write the generated documents under ``docs_dir``."""
    written = []
    for rel, content in render_all().items():
        path = docs_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
        written.append(path)
    return written


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "docs")
    for p in write_all(target):
        print(p)
