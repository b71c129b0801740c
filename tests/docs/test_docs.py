"""Generated documents stay current: the message contract and the README settings table."""

from __future__ import annotations

from pathlib import Path

import yaml

from execbus.cli.worker import settings_table
from execbus.wire.schema import render_all

ROOT = Path(__file__).resolve().parents[2]


def test_contract_documents_are_current() -> None:
    for rel, content in render_all().items():
        path = ROOT / "docs" / rel
        assert path.exists(), f"{path} is missing: run `make schema`"
        assert path.read_text() == content, f"{path} is stale: run `make schema`"


def test_asyncapi_is_valid_yaml_with_every_message() -> None:
    doc = yaml.safe_load((ROOT / "docs" / "asyncapi.yaml").read_text())
    assert doc["asyncapi"].startswith("2.6")
    names = {m["name"] for m in doc["components"]["messages"].values()}
    assert {"exec.run", "exec.exited", "exec.output", "reply"} <= names


def test_readme_configuration_table_matches_settings() -> None:
    readme = (ROOT / "README.md").read_text()
    assert settings_table() in readme, "README settings table is stale: `execbus config --markdown`"
