"""The example policy the policy, policy-file and guard tests share."""

from __future__ import annotations

from typing import Any

from execbus.wire.config import ExecConfig

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
