"""The authorization policy's rules: who may run what where (``worker/policy.py``)."""

from __future__ import annotations

from typing import Any

import pytest

from execbus.errors import ErrorCode
from execbus.worker.guard import RequestGuard
from execbus.worker.limits import RequestLimits
from execbus.worker.policy import Policy, PolicyDenied
from execbus.worker.policy_file import parse_policy
from tests.unit.worker.policy_example import cfg


def denied(fn: Any, *args: Any) -> str:
    with pytest.raises(PolicyDenied) as exc:
        fn(*args)
    assert exc.value.code == ErrorCode.FORBIDDEN
    return exc.value.message


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


def _limits(**kw: int) -> RequestLimits:
    base = {
        "max_argv_entries": 4096,
        "max_argv_bytes": 128 * 1024,
        "max_env_entries": 1024,
        "max_env_bytes": 1024 * 1024,
        "max_output_limit": 4 * 1024 * 1024,
    }
    return RequestLimits(**{**base, **kw})


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
