"""Generated documents stay current: the message contract and the README settings table."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from execbus.cli.config import settings_table
from execbus.wire.config import ExecConfig
from execbus.wire.schema import ENV_ENTRY_PATTERN, STD_BASE64_PATTERN, render_all
from tests.conftest import ROOT


def test_contract_documents_are_current() -> None:
    for rel, content in render_all().items():
        path = ROOT / "docs" / rel
        assert path.exists(), f"{path} is missing: run `make schema`"
        assert path.read_text() == content, f"{path} is stale: run `make schema`"


def test_asyncapi_is_valid_yaml_with_every_message() -> None:
    """The parser's own check (no diagnostics at all) runs in tests/system/contract."""
    doc = yaml.safe_load((ROOT / "docs" / "asyncapi.yaml").read_text())
    assert doc["asyncapi"] == "3.1.0"
    assert doc["id"] and doc["servers"]
    names = {m["name"] for m in doc["components"]["messages"].values()}
    assert {"exec.run", "exec.exited", "exec.output", "reply"} <= names
    assert {"execRun", "execCreate", "execStart", "execEvents"} <= set(doc["operations"])


def _walk(node: Any) -> Any:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item)


def test_schemas_use_standard_keywords_only() -> None:
    """No OpenAPI ``discriminator``, no format a strict validator does not know."""
    for path in sorted((ROOT / "docs" / "schema").glob("*.json")):
        doc = json.loads(path.read_text())
        assert doc["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        for node in _walk(doc):
            assert "discriminator" not in node, path.name
            assert node.get("format", "date-time") == "date-time", path.name
            if "prefixItems" in node:
                assert node["items"] is False and node["minItems"] == len(node["prefixItems"])


ENV_SAMPLES = [
    "A=1",
    "A=",
    "A==",
    "PATH=/bin:/usr/bin",
    "WITH SPACE=x",
    "ü=ß",
    "A=b\nc",
    "A=b\n",
    "=",
    "=x",
    "A",
    "",
    "A\x00=1",
    "A=1\x00",
    "\n=1",
]


@pytest.mark.parametrize("entry", ENV_SAMPLES)
def test_env_pattern_matches_the_model(entry: str) -> None:
    """The schema's KEY=VALUE pattern accepts exactly what ExecConfig accepts."""
    try:
        ExecConfig(cmd=["true"], env=[entry])
        accepted = True
    except ValidationError:
        accepted = False
    # ECMA-262 semantics, as JSON Schema validators apply it: ``$`` is the very end.
    pattern = ENV_ENTRY_PATTERN.removesuffix("$") + r"\Z"
    assert (re.search(pattern, entry) is not None) == accepted, entry


@pytest.mark.parametrize(
    "data", [b"", b"a", b"ab", b"abc", b"\xfb\xff\xbf", b"ab?", bytes(range(256))]
)
def test_output_base64_pattern(data: bytes) -> None:
    """Produced bytes must be padded standard base64: unpadded or URL-safe text fails."""
    standard = base64.b64encode(data).decode()
    assert re.fullmatch(STD_BASE64_PATTERN, standard)
    if standard.endswith("="):
        assert re.fullmatch(STD_BASE64_PATTERN, standard.rstrip("=")) is None
    urlsafe = base64.urlsafe_b64encode(data).decode()
    if urlsafe != standard:
        assert re.fullmatch(STD_BASE64_PATTERN, urlsafe) is None


def test_readme_configuration_table_matches_settings() -> None:
    readme = (ROOT / "README.md").read_text()
    assert settings_table() in readme, "README settings table is stale: `execbus config --markdown`"


def test_the_permissions_in_security_md_are_the_generated_ones() -> None:
    """Every ``<!-- execbus permissions ARGS -->`` block shows exactly what the command
    prints (the security tests create their users with the same generator)."""
    import shlex

    from execbus.cli.permissions import build_parser
    from execbus.wire.permissions import permissions

    text = (ROOT / "docs" / "security.md").read_text()
    blocks = re.findall(r"<!-- execbus permissions (.+?) -->\n\s*```sh\n(.*?)```", text, re.S)
    assert len(blocks) >= 3
    for args, shown in blocks:
        parsed = build_parser().parse_args(shlex.split(args))
        granted = permissions(parsed.role, parsed.user, parsed.namespace, parsed.agents)
        expected = granted.commands(parsed.vhost)
        assert [line.strip() for line in shown.strip().splitlines()] == expected, args
