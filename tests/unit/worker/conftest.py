"""Fixtures of the worker's unit tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from execbus.worker.policy import Policy
from execbus.worker.policy_file import load_policy
from tests.unit.worker.policy_example import POLICY


@pytest.fixture
def policy(tmp_path: Path) -> Policy:
    path = tmp_path / "policy.toml"
    path.write_text(POLICY)
    return load_policy(path)
