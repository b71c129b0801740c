"""Reading a policy file (TOML, or YAML with the same shape) into a :class:`Policy`.

Strict: unknown keys and fields, wrong types and empty ``callers``/``agents``
are :class:`~execbus.errors.ConfigError` naming the rule, so a typo never
silently widens or narrows a rule.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from execbus.errors import ConfigError
from execbus.worker.policy import RULE_FIELDS, Policy, Rule


def load_policy(path: Path | str) -> Policy:
    """Read a policy file (``.toml``, or ``.yaml``/``.yml``); ConfigError when it is bad."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the policy file {path}: {exc.strerror}") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        doc = _load_yaml(text, path)
    else:
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"policy file {path} is not valid TOML: {exc}") from None
    return parse_policy(doc, str(path))


def _load_yaml(text: str, path: Path) -> Any:
    try:
        import yaml
    except ImportError:
        raise ConfigError(
            f"policy file {path}: YAML policies need PyYAML installed; or write it in TOML"
        ) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"policy file {path} is not valid YAML: {exc}") from None


def parse_policy(doc: Any, source: str = "<policy>") -> Policy:
    """Validate a parsed policy document (strictly: unknown keys are errors)."""
    if doc is None:
        doc = {}
    if not isinstance(doc, Mapping):
        raise ConfigError(f"policy {source}: expected a table/mapping with a 'rule' list")
    unknown = set(doc) - {"rule", "rules"}
    if unknown:
        raise ConfigError(f"policy {source}: unknown keys {sorted(map(str, unknown))}")
    if "rule" in doc and "rules" in doc:
        raise ConfigError(f"policy {source}: give 'rule' or 'rules', not both")
    entries = doc.get("rule", doc.get("rules", []))
    if not isinstance(entries, list):
        raise ConfigError(f"policy {source}: 'rule' must be a list of tables ([[rule]])")
    rules = tuple(_parse_rule(entry, i, source) for i, entry in enumerate(entries, 1))
    return Policy(rules, source)


def _parse_rule(entry: Any, index: int, source: str) -> Rule:
    where = f"policy {source}: rule #{index}"
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{where}: must be a table of callers, agents, ...")
    unknown = set(entry) - RULE_FIELDS
    if unknown:
        raise ConfigError(
            f"{where}: unknown fields {sorted(map(str, unknown))} "
            f"(known: {', '.join(sorted(RULE_FIELDS))})"
        )
    name = entry.get("name")
    if name is not None and not isinstance(name, str):
        raise ConfigError(f"{where}: name must be a string")
    label = f"rule {name!r}" if name else f"rule #{index}"
    for required in ("callers", "agents"):
        if required not in entry:
            raise ConfigError(f"{where}: '{required}' is required")
    privileged = entry.get("privileged", False)
    if not isinstance(privileged, bool):
        raise ConfigError(f"{where}: privileged must be true or false")
    all_execs = entry.get("all_execs", False)
    if not isinstance(all_execs, bool):
        raise ConfigError(f"{where}: all_execs must be true or false")
    return Rule(
        label=label,
        callers=_patterns(entry["callers"], f"{where}: callers", allow_empty=False),
        agents=_patterns(entry["agents"], f"{where}: agents", allow_empty=False),
        containers=_patterns(entry.get("containers", []), f"{where}: containers"),
        users=_patterns(entry.get("users", []), f"{where}: users", numbers=True),
        privileged=privileged,
        max_timeout=_timeout(entry.get("max_timeout"), where),
        all_execs=all_execs,
    )


def _patterns(
    value: Any, where: str, *, allow_empty: bool = True, numbers: bool = False
) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, list):
        raise ConfigError(f"{where} must be a list of patterns")
    out = []
    for item in value:
        if numbers and isinstance(item, int) and not isinstance(item, bool) and item >= 0:
            item = str(item)  # users = [1000] means the uid "1000"
        if not isinstance(item, str):
            raise ConfigError(f"{where}: {item!r} is not a string")
        if item == "" and not allow_empty:
            raise ConfigError(f"{where}: the empty pattern is not allowed here")
        out.append(item)
    if not allow_empty and not out:
        raise ConfigError(f"{where} must not be empty")
    return tuple(out)


def _timeout(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigError(f"{where}: max_timeout must be a positive number of seconds")
    return float(value)
