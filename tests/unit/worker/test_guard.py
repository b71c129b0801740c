"""The authorization hook of every request: the policy, exec ownership and the limits
(``worker/guard.py``, ``worker/limits.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from execbus.errors import ConfigError, ErrorCode, Forbidden, LimitExceeded
from execbus.registry import ExecRegistry, RegistryLimits
from execbus.settings import load_settings
from execbus.wire.requests import (
    CreateRequest,
    InspectRequest,
    RemoveRequest,
    Request,
    ResizeRequest,
    RunRequest,
    SignalRequest,
    StartRequest,
    StdinRequest,
    WaitRequest,
)
from execbus.worker.context import RequestContext
from execbus.worker.guard import RequestGuard
from execbus.worker.limits import RequestLimits, RequestTooLarge
from execbus.worker.policy import Policy, PolicyDenied
from execbus.worker.policy_file import parse_policy
from tests.unit.worker.policy_example import POLICY, cfg


def _limits(**kw: int) -> RequestLimits:
    base = {
        "max_argv_entries": 4096,
        "max_argv_bytes": 128 * 1024,
        "max_env_entries": 1024,
        "max_env_bytes": 1024 * 1024,
        "max_output_limit": 4 * 1024 * 1024,
    }
    return RequestLimits(**{**base, **kw})


async def authorize(guard: RequestGuard, request: Request, user: str | None) -> None:
    registry = ExecRegistry("vm-1", RegistryLimits())
    await guard.for_agent("vm-1", registry)(request, RequestContext(user_id=user))


async def test_hook_denials_are_forbidden_and_dead_lettered(policy: Policy) -> None:
    guard = RequestGuard(policy, _limits())
    run = RunRequest(config=cfg(container_id="web", user="nobody", timeout=5))
    await authorize(guard, run, "ci-1")
    with pytest.raises(Forbidden) as exc:
        await authorize(guard, run, None)
    assert "no user_id" in exc.value.message
    # the consumer dead-letters forbidden and limit_exceeded from its authorize hook
    assert exc.value.code == "forbidden"
    with pytest.raises(Forbidden):
        await authorize(guard, run, "eve")
    await authorize(guard, InspectRequest(exec_id="e1"), "auditor")
    with pytest.raises(Forbidden):
        await authorize(guard, SignalRequest(exec_id="e1"), "eve")


async def test_a_start_is_checked_against_the_stored_exec(policy: Policy) -> None:
    guard = RequestGuard(policy, _limits())
    registry = ExecRegistry("vm-1", RegistryLimits())
    hook = guard.for_agent("vm-1", registry)
    as_root = cfg(user="root", container_id="web", timeout=5)
    await hook(CreateRequest(exec_id="e1", config=as_root), RequestContext(user_id="ops"))
    registry.create(as_root, "e1", owner="ops")
    await hook(StartRequest(exec_id="e1"), RequestContext(user_id="ops"))
    # ci-1's own exec, stored as root (created under an older policy, say)
    registry.create(as_root, "e3", owner="ci-1")
    with pytest.raises(Forbidden, match="user 'root' is not allowed"):
        await hook(StartRequest(exec_id="e3"), RequestContext(user_id="ci-1"))
    # unknown exec: only the agent is checked (the handler answers not_found)
    await hook(StartRequest(exec_id="e2"), RequestContext(user_id="ci-1"))


async def test_without_a_policy_everything_is_allowed_with_a_warning() -> None:
    guard = RequestGuard(None, _limits())
    await authorize(guard, RunRequest(config=cfg(user="root", privileged=True)), None)
    warning = guard.startup_warning()
    assert warning is not None and "every caller" in warning and "no authorization" in warning


async def test_limits_are_limit_exceeded_with_the_setting_named() -> None:
    guard = RequestGuard(
        None,
        _limits(
            max_argv_entries=3,
            max_argv_bytes=64,
            max_env_entries=2,
            max_env_bytes=32,
            max_output_limit=1024,
        ),
    )
    secret = "s3cr3t-value-123"
    cases = [
        (cfg(cmd=["a", "b", "c", "d"]), "cmd has 4 arguments", "EXECBUS_MAX_ARGV_ENTRIES"),
        (cfg(cmd=["x" * 65]), "cmd is 65 bytes", "EXECBUS_MAX_ARGV_BYTES"),
        (cfg(env=["A=1", "B=2", "C=3"]), "env has 3 entries", "EXECBUS_MAX_ENV_ENTRIES"),
        (
            cfg(env=[f"TOKEN={secret}", f"OTHER={secret}"]),
            "env is 44 bytes",
            "EXECBUS_MAX_ENV_BYTES",
        ),
        (cfg(output_limit=2048), "output_limit is 2048 bytes", "EXECBUS_MAX_OUTPUT_LIMIT"),
    ]
    for config, what, setting in cases:
        with pytest.raises(LimitExceeded) as exc:
            await authorize(guard, RunRequest(config=config), None)
        assert isinstance(exc.value, RequestTooLarge)
        assert exc.value.code == ErrorCode.LIMIT_EXCEEDED
        assert what in exc.value.message and setting in exc.value.message
        assert secret not in exc.value.message
    await authorize(
        guard, RunRequest(config=cfg(cmd=["a", "b"], env=["A=1"], output_limit=512)), None
    )


def test_guard_from_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "p.toml"
    path.write_text(POLICY)
    monkeypatch.setenv("EXECBUS_MAX_ENV_ENTRIES", "7")
    guard = RequestGuard.from_settings(load_settings(policy_file=str(path)))
    assert guard.policy is not None and len(guard.policy.rules) == 3
    assert guard.limits.max_env_entries == 7
    assert guard.startup_warning() is None
    with pytest.raises(ConfigError):
        load_settings(max_argv_entries=5000)  # above the wire contract's own cap


def _owned_registry() -> ExecRegistry:
    registry = ExecRegistry("vm-1", RegistryLimits())
    registry.create(cfg(container_id="box", user="nobody", timeout=10), "mine", owner="ci-1")
    return registry


@pytest.mark.parametrize(
    "request_",
    [
        InspectRequest(exec_id="mine"),
        WaitRequest(exec_id="mine"),
        SignalRequest(exec_id="mine"),
        StdinRequest(exec_id="mine", data=b"x"),
        ResizeRequest(exec_id="mine", width=80, height=24),
        RemoveRequest(exec_id="mine", force=True),
        StartRequest(exec_id="mine"),
        RunRequest(exec_id="mine", config=cfg(container_id="box", user="nobody", timeout=10)),
    ],
    ids=lambda request_: request_.type,
)
def test_execs_belong_to_their_caller(policy: Policy, request_: Request) -> None:
    guard = RequestGuard(policy, RequestLimits.from_settings(load_settings()))
    registry = _owned_registry()
    owner_ctx = guard.check("vm-1", registry, request_, RequestContext(user_id="ci-1"))
    assert owner_ctx.owner == "ci-1", "the owner sees its own execs only"
    with pytest.raises(PolicyDenied, match="exec 'mine' belongs to another caller"):
        guard.check("vm-1", registry, request_, RequestContext(user_id="ci-2"))


def test_all_execs_lets_an_operator_act_on_every_exec() -> None:
    policy = parse_policy(
        {
            "rule": [
                {"name": "ops", "callers": ["ops"], "agents": ["vm-*"], "all_execs": True},
            ]
        }
    )
    guard = RequestGuard(policy, RequestLimits.from_settings(load_settings()))
    ctx = guard.check(
        "vm-1", _owned_registry(), SignalRequest(exec_id="mine"), RequestContext(user_id="ops")
    )
    assert ctx.owner is None, "an operator lists every exec"
