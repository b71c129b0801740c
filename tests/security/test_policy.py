"""The authorization policy, the request limits and the broker TLS settings (no broker)."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest

from execbus.broker import broker_tls_context
from execbus.errors import ConfigError, ErrorCode, Forbidden, LimitExceeded
from execbus.registry import ExecRegistry, RegistryLimits
from execbus.settings import load_settings
from execbus.wire.config import ExecConfig
from execbus.wire.requests import (
    CreateRequest,
    InspectRequest,
    Request,
    RunRequest,
    SignalRequest,
    StartRequest,
)
from execbus.worker.context import RequestContext
from execbus.worker.guard import RequestGuard
from execbus.worker.limits import RequestLimits, RequestTooLarge
from execbus.worker.policy import Policy, PolicyDenied
from execbus.worker.policy_file import load_policy, parse_policy
from tests.security.support import Certs

POLICY = """
[[rule]]
name = "ci"
callers = ["ci-*"]
agents = ["vm-*"]
containers = ["*"]
users = ["nobody", 1000]
max_timeout = 3600

[[rule]]
name = "ops"
callers = ["ops"]
agents = ["*"]
containers = ["", "*"]
users = ["", "*"]
privileged = true

[[rule]]
callers = ["auditor"]
agents = ["vm-1"]
"""


def cfg(**kw: Any) -> ExecConfig:
    return ExecConfig(**{"cmd": ["true"], **kw})


@pytest.fixture
def policy(tmp_path: Path) -> Policy:
    path = tmp_path / "policy.toml"
    path.write_text(POLICY)
    return load_policy(path)


def denied(fn: Any, *args: Any) -> str:
    with pytest.raises(PolicyDenied) as exc:
        fn(*args)
    assert exc.value.code == ErrorCode.FORBIDDEN
    return exc.value.message


# -- rules -------------------------------------------------------------------


def test_a_rule_that_allows_all_of_the_request_allows_it(policy: Policy) -> None:
    allowed = policy.check_exec("ci-7", "vm-1", cfg(container_id="web", user="nobody", timeout=60))
    assert allowed.label == "rule 'ci'"
    allowed = policy.check_exec("ci-7", "vm-1", cfg(container_id="web", user="1000", timeout=3600))
    assert allowed.label == "rule 'ci'"
    host = policy.check_exec("ops", "anything", cfg(privileged=True))  # host, default user
    assert host.label == "rule 'ops'" and host.privileged
    assert [rule.label for rule in policy.check_agent("auditor", "vm-1")] == ["rule #3"]
    assert [rule.label for rule in policy.check_agent("ops", "vm-1")] == ["rule 'ops'"]


def test_unknown_callers_and_agents_are_denied(policy: Policy) -> None:
    assert "caller 'eve' is not allowed" in denied(policy.check_agent, "eve", "vm-1")
    assert "may not use agent 'db-1'" in denied(policy.check_agent, "ci-7", "db-1")
    assert "may not use agent 'vm-2'" in denied(policy.check_agent, "auditor", "vm-2")


def test_each_exec_field_is_checked(policy: Policy) -> None:
    ok: dict[str, Any] = {"container_id": "web", "user": "nobody", "timeout": 60}
    cases = {
        "user 'root' is not allowed": {"user": "root"},
        "user 'nobody:root' is not allowed": {"user": "nobody:root"},
        "user '0' is not allowed": {"user": "0"},
        "the default user (user '') is not allowed": {"user": None},
        "the agent's host (container '') is not allowed": {"container_id": ""},
        "privileged execs are not allowed": {"privileged": True},
        "a timeout is required (at most 3600 s)": {"timeout": None},
        "timeout 7200 s is above max_timeout 3600 s": {"timeout": 7200},
    }
    for reason, change in cases.items():
        message = denied(policy.check_exec, "ci-1", "vm-1", cfg(**{**ok, **change}))
        assert reason in message, (reason, message)
        assert "rule 'ci'" in message


def test_a_rule_without_containers_or_users_allows_no_exec(policy: Policy) -> None:
    message = denied(policy.check_exec, "auditor", "vm-1", cfg())
    assert "is not allowed (containers: [])" in message


def test_rules_never_combine() -> None:
    # one rule gives the container, the other the user: neither allows both
    policy = parse_policy(
        {
            "rule": [
                {"callers": ["x"], "agents": ["a"], "containers": ["c1"], "users": ["u1"]},
                {"callers": ["x"], "agents": ["a"], "containers": ["c2"], "users": ["u2"]},
            ]
        }
    )
    assert policy.check_exec("x", "a", cfg(container_id="c1", user="u1")).label == "rule #1"
    assert policy.check_exec("x", "a", cfg(container_id="c2", user="u2")).label == "rule #2"
    message = denied(policy.check_exec, "x", "a", cfg(container_id="c1", user="u2"))
    assert "rule #1: user 'u2'" in message and "rule #2: container 'c1'" in message


def test_globs_are_case_sensitive_and_whole_value() -> None:
    policy = parse_policy({"rule": [{"callers": ["ci-?"], "agents": ["vm-[12]"]}]})
    assert [rule.label for rule in policy.check_agent("ci-1", "vm-2")] == ["rule #1"]
    denied(policy.check_agent, "CI-1", "vm-1")
    denied(policy.check_agent, "ci-10", "vm-1")
    denied(policy.check_agent, "ci-1", "vm-3")


def test_an_empty_policy_denies_everything() -> None:
    policy = parse_policy({})
    denied(policy.check_agent, "anyone", "a")
    assert RequestGuard(policy, _limits()).startup_warning() == (
        "the policy <policy> has no rules: every request is denied"
    )


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"rule": [{"agents": ["a"]}]}, "'callers' is required"),
        ({"rule": [{"callers": ["x"]}]}, "'agents' is required"),
        ({"rule": [{"callers": [], "agents": ["a"]}]}, "callers must not be empty"),
        ({"rule": [{"callers": "x", "agents": ["a"]}]}, "callers must be a list"),
        ({"rule": [{"callers": [""], "agents": ["a"]}]}, "empty pattern is not allowed"),
        ({"rule": [{"callers": ["x"], "agents": ["a"], "user": ["u"]}]}, "unknown fields ['user']"),
        ({"rule": [{"callers": ["x"], "agents": ["a"], "privileged": "yes"}]}, "true or false"),
        ({"rule": [{"callers": ["x"], "agents": ["a"], "max_timeout": 0}]}, "positive number"),
        ({"rules": [], "rule": []}, "not both"),
        ({"allow": True}, "unknown keys ['allow']"),
        ({"rule": {"callers": ["x"]}}, "must be a list"),
        ([1, 2], "expected a table"),
    ],
)
def test_bad_policies_are_config_errors(doc: Any, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_policy(doc, "p.toml")
    assert message in exc.value.message
    assert exc.value.message.startswith("policy p.toml")


def test_policy_files_toml_and_yaml(tmp_path: Path) -> None:
    yaml_path = tmp_path / "policy.yaml"
    yaml_path.write_text(
        "rules:\n  - callers: [ci-*]\n    agents: [vm-*]\n    containers: ['']\n"
        "    users: ['']\n    max_timeout: 60\n"
    )
    policy = load_policy(yaml_path)
    assert policy.check_exec("ci-1", "vm-1", cfg(timeout=10)).max_timeout == 60
    bad = tmp_path / "bad.toml"
    bad.write_text("[[rule]\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_policy(bad)
    with pytest.raises(ConfigError, match="cannot read the policy file"):
        load_policy(tmp_path / "missing.toml")


# -- the consumer hook ---------------------------------------------------------


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


# -- amqps ---------------------------------------------------------------------


def test_broker_tls_context(certs: Certs) -> None:
    url = "amqps://u:p@mq.example:5671/"
    assert broker_tls_context(url, None, None, None) is None  # aio-pika's default
    ctx = broker_tls_context(url, certs.pem("ca"), certs.pem("client"), certs.key("client"))
    assert ctx is not None
    assert ctx.verify_mode is ssl.CERT_REQUIRED and ctx.check_hostname
    assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert any("execbus test ca" in str(c.get("subject")) for c in ctx.get_ca_certs())
    with pytest.raises(ConfigError, match="need an amqps:// URL"):
        broker_tls_context("amqp://localhost/", certs.pem("ca"), None, None)
    with pytest.raises(ConfigError, match="cannot load the broker TLS files"):
        broker_tls_context(url, certs.pem("ca"), Path("/no/cert.pem"), None)


async def test_worker_passes_the_broker_tls_context(
    certs: Certs, monkeypatch: pytest.MonkeyPatch
) -> None:
    import aio_pika

    from execbus.worker.service import Worker

    seen: dict[str, Any] = {}

    async def fake_connect(url: str, **kwargs: Any) -> Any:
        seen.update(kwargs, url=url)
        raise ConnectionError("no broker in this test")

    monkeypatch.setattr(aio_pika, "connect", fake_connect)
    settings = load_settings(
        amqp_url="amqps://u:p@mq.example:5671/",
        amqp_ca_file=str(certs.pem("ca")),
        amqp_cert_file=str(certs.pem("client")),
        amqp_key_file=str(certs.key("client")),
    )
    worker = Worker(settings, {})
    with pytest.raises(Exception, match="cannot connect to the broker"):
        await worker._connect()
    assert seen["url"] == "amqps://u:p@mq.example:5671/"
    assert isinstance(seen["ssl_context"], ssl.SSLContext)
    assert seen["ssl_context"].verify_mode is ssl.CERT_REQUIRED


# -- users and groups, exec ownership -------------------------------------------


@pytest.mark.parametrize(
    ("patterns", "user", "allowed"),
    [
        (["10*"], "1000", True),
        (["10*"], "10:root", False),  # a glob never crosses the colon
        (["10*"], "1000:1000", False),
        (["10*:10*"], "1000:1000", True),
        (["10*:10*"], "1000:root", False),
        (["*"], "root", True),
        (["*"], "root:root", False),
        (["*:*"], "root:root", True),
        (["*:*"], "root", False),
        (["nobody", "nobody:nogroup"], "nobody:nogroup", True),
        (["", "*"], "", True),
    ],
)
def test_a_user_glob_never_reaches_across_user_group(
    patterns: list[str], user: str, allowed: bool
) -> None:
    rule = {"callers": ["c"], "agents": ["a"], "containers": [""], "users": patterns}
    policy = parse_policy({"rule": [rule]})
    config = cfg(user=user) if user else cfg()
    if allowed:
        assert policy.check_exec("c", "a", config).users == tuple(patterns)
    else:
        assert "is not allowed (users:" in denied(policy.check_exec, "c", "a", config)


def test_all_execs_must_be_a_boolean() -> None:
    with pytest.raises(ConfigError, match="all_execs must be true or false"):
        parse_policy({"rule": [{"callers": ["c"], "agents": ["a"], "all_execs": "yes"}]})


def _owned_registry() -> ExecRegistry:
    registry = ExecRegistry("vm-1", RegistryLimits())
    registry.create(cfg(container_id="box", user="nobody", timeout=10), "mine", owner="ci-1")
    return registry


@pytest.mark.parametrize(
    "request_",
    [
        InspectRequest(exec_id="mine"),
        SignalRequest(exec_id="mine"),
        StartRequest(exec_id="mine"),
        RunRequest(exec_id="mine", config=cfg(container_id="box", user="nobody", timeout=10)),
    ],
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
