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

from execbus.wire import config, events, replies, requests

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


# Bytes out are standard base64 (RFC 4648 section 4) with padding: nothing else matches.
STD_BASE64_PATTERN = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"
# ExecConfig.env entries: a non-empty name, '=', a value; no NUL anywhere (the model's rules).
ENV_ENTRY_PATTERN = r"^[^=\u0000]+=[^\u0000]*$"
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
ASYNCAPI_VERSION = "3.1.0"
Mode = Literal["validation", "serialization"]


def json_schemas() -> dict[str, dict[str, Any]]:
    """File name -> JSON Schema (2020-12), for every request, the reply and every event.

    Plain JSON Schema only: they compile under strict validators (ajv's strict mode),
    so pydantic's OpenAPI-style ``discriminator`` is dropped (every variant already
    pins ``type`` with ``const``).
    """
    out: dict[str, dict[str, Any]] = {}
    out["request.json"] = standardize(
        TypeAdapter(requests.Request).json_schema(mode="validation"), "validation"
    )
    out["reply.json"] = standardize(
        replies.Reply.model_json_schema(mode="serialization"), "serialization"
    )
    out["event.json"] = standardize(
        TypeAdapter(events.Event).json_schema(mode="serialization"), "serialization"
    )
    for name, model in {**REQUESTS, **EVENTS}.items():
        out[f"{name}.json"] = standardize(model.model_json_schema(mode=_mode(name)), _mode(name))
    for doc in out.values():
        doc["$schema"] = JSON_SCHEMA_DIALECT
    return out


def _mode(name: str) -> Mode:
    """Requests are documented as accepted (validation), the rest as produced."""
    return "validation" if name in REQUESTS else "serialization"


def standardize(node: Any, mode: Mode) -> Any:
    """Rewrite a pydantic JSON Schema (in place) into strict, standard JSON Schema 2020-12.

    - ``discriminator`` objects (OpenAPI, not JSON Schema) are dropped;
    - tuples close with ``items: false`` (strict tuples);
    - byte fields: produced ones (``serialization``) must match padded standard base64,
      accepted ones take either alphabet, padded or not;
    - ``ExecConfig.env`` entries carry the ``KEY=VALUE`` pattern the model enforces;
    - produced objects list as required every field that always appears on the wire
      (``codec.dump`` leaves out only the fields whose value is null, so a field that
      may be null, like an exit's ``stdout`` when the capture was not asked for, is
      not required).
    """
    if isinstance(node, list):
        for item in node:
            standardize(item, mode)
        return node
    if not isinstance(node, dict):
        return node
    if isinstance(node.get("discriminator"), dict):
        del node["discriminator"]
    if "prefixItems" in node:
        node.setdefault("items", False)
    if node.get("contentEncoding") == "base64":
        if mode == "serialization":
            node["pattern"] = STD_BASE64_PATTERN
            node["description"] = "bytes as standard base64 (RFC 4648 section 4), padded"
        else:
            node["description"] = (
                "bytes as base64: the standard or the URL-safe alphabet, padding optional"
            )
    if node.get("title") == "ExecConfig" and isinstance(node.get("properties"), dict):
        env = node["properties"].get("env")
        if isinstance(env, dict) and isinstance(env.get("items"), dict):
            env["items"]["pattern"] = ENV_ENTRY_PATTERN
            env["items"]["maxLength"] = config.MAX_ENV_ENTRY_BYTES
            env["description"] = (
                "KEY=VALUE entries: a non-empty name, '=', then the value "
                f"(no NUL; at most {config.MAX_ENV_ENTRY_BYTES} bytes each)"
            )
    props = node.get("properties")
    if mode == "serialization" and node.get("type") == "object" and isinstance(props, dict):
        required = node.setdefault("required", [])
        for key, prop in props.items():
            always = not isinstance(prop, dict) or (
                prop.get("default", 0) is not None and not _nullable(prop)
            )
            if always and key not in required:
                required.append(key)
    for key, value in node.items():
        if key not in ("default", "const", "enum", "examples"):
            standardize(value, mode)
    return node


def _nullable(prop: dict[str, Any]) -> bool:
    return any(isinstance(alt, dict) and alt.get("type") == "null" for alt in prop.get("anyOf", []))


def asyncapi() -> dict[str, Any]:
    """An AsyncAPI 3.1 document: servers, exchanges, routing keys, operations and payloads.

    Payloads are AsyncAPI Schema objects (a JSON Schema draft-07 superset), so the
    2020-12 tuple form (``prefixItems``) is rewritten to draft-07's ``items`` array.
    """
    schemas: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    models: dict[str, type[BaseModel]] = {**REQUESTS, **EVENTS, "reply": replies.Reply}
    for name, model in models.items():
        ref = "#/components/schemas/{model}"
        schema = model.model_json_schema(mode=_mode(name), ref_template=ref)
        schema = _draft07(standardize(schema, _mode(name)))
        for def_name, definition in schema.pop("$defs", {}).items():
            if schemas.get(def_name, definition) != definition:
                raise ValueError(f"schema {def_name} differs between messages")
            schemas[def_name] = definition
        schemas[model.__name__] = schema
        messages[_message_id(name)] = {
            "name": name,
            "title": name,
            "summary": (model.__doc__ or name).strip().splitlines()[0],
            "contentType": "application/json",
            "payload": {"$ref": f"#/components/schemas/{model.__name__}"},
        }
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "id": "urn:execbus:wire:v1",
        "info": _info(),
        "defaultContentType": "application/json",
        "servers": _servers(),
        "channels": _channels(),
        "operations": _operations(),
        "components": {"messages": messages, "schemas": schemas},
    }


def _message_id(name: str) -> str:
    return name.replace(".", "_")


def _draft07(node: Any) -> Any:
    """Rewrite 2020-12 tuples (``prefixItems``) into draft-07's (``items`` as an array)."""
    if isinstance(node, list):
        return [_draft07(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _draft07(value) for key, value in node.items()}
    if "prefixItems" in out:
        out["items"] = out.pop("prefixItems")
        out["additionalItems"] = False
    return out


def _info() -> dict[str, Any]:
    return {
        "title": "execbus",
        "version": "1",
        "description": (
            "Exec requests, RPC replies and exec events over RabbitMQ. Every exchange and "
            "queue name starts with the namespace (default `execbus`). Container ids in "
            "routing keys are percent-encoded (every byte outside [A-Za-z0-9_-]); the empty "
            "container id (the agent's own host) is `~`. `exec_id` is the idempotency key: "
            "a repeated run, create or start of an exec with the same config never runs it "
            "again (the reply says `replayed: true`). Bytes are standard base64 (RFC 4648 "
            "section 4, padded) out; either alphabet is accepted in. See docs/integration.md."
        ),
        "license": {"name": "Apache-2.0", "url": "https://www.apache.org/licenses/LICENSE-2.0"},
    }


def _servers() -> dict[str, Any]:
    return {
        "rabbitmq": {
            "host": "localhost:5672",
            "protocol": "amqp",
            "protocolVersion": "0.9.1",
            "description": "Any RabbitMQ node of the cluster the workers use "
            "(`EXECBUS_AMQP_URL`); publish with publisher confirms.",
        }
    }


def _amqp_exchange(name: str, kind: str) -> dict[str, Any]:
    return {
        "amqp": {
            "is": "routingKey",
            "exchange": {"name": name, "type": kind, "durable": True, "autoDelete": False},
            "bindingVersion": "0.3.0",
        }
    }


def _channels() -> dict[str, Any]:
    def refs(names: Any) -> dict[str, Any]:
        return {_message_id(n): {"$ref": f"#/components/messages/{_message_id(n)}"} for n in names}

    return {
        "requests": {
            "address": "agent.{agent}",
            "title": "Exec requests",
            "description": "Requests for one agent: exchange `<ns>.requests` (declared by the "
            "workers; never redeclare it), routed to the quorum queue `<ns>.agent.<agent>` "
            "(single active consumer, delivery limit, dead letters to `<ns>.dead` with the "
            "reason in header `x-execbus-reason`). Set `reply_to` and `correlation_id` to get "
            "a reply; `pool.<pool>` routes to a pool of agents instead.",
            "parameters": {
                "agent": {
                    "description": "the agent name, `^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$`",
                }
            },
            "messages": refs(REQUESTS),
            "bindings": _amqp_exchange("execbus.requests", "topic"),
        },
        "replies": {
            "address": None,
            "title": "RPC replies",
            "description": "The reply, published to the default exchange with the request's "
            "`reply_to` as routing key and its `correlation_id`. Non-detached "
            "`exec.run`/`exec.start` and `exec.wait` are answered when the exec finishes.",
            "messages": refs(["reply"]),
        },
        "events": {
            "address": "exec.{agent}.{container}.{event}",
            "title": "Exec events",
            "description": "Exec events on exchange `<ns>.events`. Per exec they leave in "
            "order: created, started, output (by `seq` per stream), then exited or failed. "
            "Drop duplicates by `event_id` (the same event may be published twice after a "
            "failover). Header `x-execbus-exec-id` carries the exec id.",
            "parameters": {
                "agent": {"description": "the agent name"},
                "container": {
                    "description": "the container id, percent-encoded; `~` for the agent's host"
                },
                "event": {
                    "description": "the event kind",
                    "enum": list(events.EVENT_KINDS),
                },
            },
            "messages": refs(EVENTS),
            "bindings": _amqp_exchange("execbus.events", "topic"),
        },
    }


def _operations() -> dict[str, Any]:
    ops: dict[str, Any] = {}
    for name, model in REQUESTS.items():
        op_id = "".join(part.capitalize() if i else part for i, part in enumerate(name.split(".")))
        ops[op_id] = {
            "action": "send",
            "title": name,
            "summary": (model.__doc__ or name).strip().splitlines()[0],
            "channel": {"$ref": "#/channels/requests"},
            "messages": [{"$ref": f"#/channels/requests/messages/{_message_id(name)}"}],
            "reply": {
                "address": {
                    "description": "the request's AMQP `reply_to` property",
                    "location": "$message.header#/reply_to",
                },
                "channel": {"$ref": "#/channels/replies"},
                "messages": [{"$ref": "#/channels/replies/messages/reply"}],
            },
        }
    ops["execEvents"] = {
        "action": "receive",
        "title": "exec events",
        "summary": "Follow exec events: bind your own queue to `<ns>.events`.",
        "channel": {"$ref": "#/channels/events"},
        "messages": [
            {"$ref": f"#/channels/events/messages/{_message_id(name)}"} for name in EVENTS
        ],
    }
    return ops


def to_yaml(value: Any, indent: int = 0) -> str:
    """A minimal YAML emitter (JSON-compatible subset), so no YAML library is needed."""
    if not isinstance(value, dict | list):
        return json.dumps(value)
    if not value:
        return "{}" if isinstance(value, dict) else "[]"
    pad = "  " * indent
    items = value.items() if isinstance(value, dict) else ((None, item) for item in value)
    lines = []
    for key, item in items:
        head = f"{pad}{json.dumps(str(key))}:" if isinstance(value, dict) else f"{pad}-"
        rendered = to_yaml(item, indent + 1)
        nested = isinstance(item, dict | list) and item
        lines.append(f"{head}\n{rendered}" if nested else f"{head} {rendered}")
    return "\n".join(lines)


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
