"""Policy files, TOML or YAML, checked strictly (``worker/policy_file.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from execbus.errors import ConfigError
from execbus.worker.policy_file import load_policy, parse_policy
from tests.unit.worker.policy_example import cfg


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


def test_all_execs_must_be_a_boolean() -> None:
    with pytest.raises(ConfigError, match="all_execs must be true or false"):
        parse_policy({"rule": [{"callers": ["c"], "agents": ["a"], "all_execs": "yes"}]})
