"""The exec's ``meta``: what the agent keeps for the worker, so any owner can rebuild it.

The worker hands it to the agent with the start; the agent returns it with
every state of the exec (and keeps it at rest, env values redacted, with
``--state-dir``). A worker that takes the agent over rebuilds the registry
record and the reply targets from it, so it can publish the exit and answer
the original callers. Versioned: a meta of another version is ignored.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from execbus.connections.base import AgentExec
from execbus.registry import ExecRecord
from execbus.registry.registry import config_digest
from execbus.wire.config import ExecConfig
from execbus.wire.records import ExecState
from execbus.worker.context import ReplyTarget

META_VERSION = 1


def build_meta(record: ExecRecord, targets: list[ReplyTarget]) -> dict[str, Any]:
    """What the agent keeps for us so another worker can rebuild the record."""
    return {
        "v": META_VERSION,
        # The agent name it was started under: one agent process reachable under
        # several names (aliases) must not have its execs reported under each.
        "a": record.agent,
        "i": record.instance,
        "ca": record.created_at,
        "u": record.owner,
        "cfg": record.config.model_dump(mode="json", exclude_defaults=True),
        # The agent may keep the meta at rest with env values redacted: the next
        # owner recognises a retry of this exec by the digest.
        "h": record.config_digest or config_digest(record.config),
        "rt": [_target_meta(t) for t in targets],
    }


def started_under(agent: str, state: AgentExec) -> bool:
    """Whether the agent's exec was started under the name ``agent`` (a meta without a
    name, from before names were kept or from another client, counts as ours)."""
    name = state.meta.get("a")
    return not isinstance(name, str) or name == agent


def record_from_agent(agent: str, state: AgentExec) -> ExecRecord | None:
    """Rebuild a registry record from an agent's exec and its meta (takeover)."""
    meta = state.meta
    if meta.get("v") != META_VERSION:
        return None
    try:
        config = ExecConfig.model_validate(meta["cfg"])
    except (KeyError, ValidationError):
        return None
    return ExecRecord(
        exec_id=state.exec_id,
        agent=agent,
        config=config,
        instance=str(meta.get("i", "")),
        created_at=float(meta.get("ca") or state.started_at or 0.0),
        state=ExecState.RUNNING,
        owner=meta.get("u") if isinstance(meta.get("u"), str) else None,
        config_digest=meta.get("h") if isinstance(meta.get("h"), str) else None,
        pid=state.pid,
        started_at=state.started_at,
    )


def _target_meta(t: ReplyTarget) -> list[Any]:
    """``[reply_to, correlation_id]``, plus flags only when they differ from the default."""
    flags = (1 if t.replayed else 0) | (0 if t.output else 2)
    return [t.reply_to, t.correlation_id, *([flags] if flags else [])]


def targets_from_meta(meta: dict[str, Any]) -> list[ReplyTarget]:
    """The reply targets a meta carries (the original callers of the exec)."""
    targets = []
    for rt in meta.get("rt", []):
        if not isinstance(rt, list) or not rt or not rt[0]:
            continue
        flags = rt[2] if len(rt) > 2 and isinstance(rt[2], int) else 0
        targets.append(ReplyTarget(str(rt[0]), rt[1], bool(flags & 1), not flags & 2))
    return targets
