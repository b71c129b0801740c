"""The agent package runs on Python 3.9 (docs/guest.md), while execbus itself needs 3.11.

What is verified, and how:

* syntax: every module parses with the 3.9 grammar (``ast.parse(...,
  feature_version=(3, 9))`` rejects ``match``, ``except*``, ...);
* the 3.10+/3.11+ constructs and standard-library names the grammar cannot
  see (``dataclass(slots=...)``, ``zip(strict=...)``, ``X | Y`` evaluated at
  run time, ``asyncio.timeout``, ``datetime.UTC``, ``enum.StrEnum``,
  ``typing.Self``, ...): an AST scan for a list of them (a list, so it can
  miss what it does not name);
* every 3.11-only standard-library API: ``mypy --python-version 3.10`` over the
  package (typeshed knows in which release each name appeared; mypy no longer
  checks against 3.9, so 3.10-only APIs rest on the scan and the next point);
* for real: where a Python 3.9 is installed, every module is imported under
  it, and ``tests/system/integration/test_agent_bundle.py`` runs the zipapp under it
  with a worker. ``EXECBUS_TEST_AGENT_PYTHON=/path/to/python3.9 pytest
  tests/system/agent`` runs the whole agent suite's agents under 3.9.
"""

from __future__ import annotations

import ast
import contextlib
import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.system.agent.harness import ROOT

AGENT = ROOT / "src" / "execbus" / "agent"
MODULES = sorted(AGENT.rglob("*.py"))  # runc/ is a subpackage

# module -> names that appeared after 3.9 (attribute access or `from module import name`)
NEW_NAMES = {
    "asyncio": {"timeout", "timeout_at", "Timeout", "TaskGroup", "Runner", "Barrier"},
    "datetime": {"UTC"},
    "enum": {"StrEnum", "ReprEnum", "verify", "EnumCheck", "member", "nonmember", "global_enum"},
    "typing": {
        "Self",
        "TypeAlias",
        "ParamSpec",
        "Concatenate",
        "TypeGuard",
        "LiteralString",
        "Never",
        "assert_never",
        "assert_type",
        "reveal_type",
        "Required",
        "NotRequired",
        "Unpack",
        "TypeVarTuple",
        "dataclass_transform",
        "is_typeddict",
        "get_overloads",
    },
    "contextlib": {"chdir", "aclosing"},
    "itertools": {"pairwise", "batched"},
    "dataclasses": {"KW_ONLY"},
    "inspect": {"get_annotations", "markcoroutinefunction"},
    "hashlib": {"file_digest"},
    "operator": {"call"},
    "logging": {"getLevelNamesMapping"},
    "os": {"eventfd", "splice", "EFD_CLOEXEC"},
    "sys": {"orig_argv", "stdlib_module_names", "exception"},
    "math": {"cbrt", "exp2"},
}
NEW_MODULES = {"tomllib", "wsgiref.types"}
NEW_BUILTINS = {"anext", "aiter", "ExceptionGroup", "BaseExceptionGroup", "EncodingWarning"}
NEW_METHODS = {"bit_count", "add_note"}
# keyword arguments that appeared after 3.9: callee name -> keywords
NEW_KEYWORDS = {
    "dataclass": {"slots", "kw_only", "match_args", "weakref_slot"},
    "slots_dataclass": {"slots"},  # compat adds it where it exists
    "zip": {"strict"},
    "Popen": {"process_group", "pipesize"},
    "run": {"process_group", "pipesize"},
    "bisect": {"key"},
    "bisect_left": {"key"},
    "bisect_right": {"key"},
    "insort": {"key"},
}
TYPE_NAMES = {"int", "str", "float", "bytes", "bool", "list", "dict", "tuple", "set", "type"}


def _looks_like_type(node: ast.expr) -> bool:
    if isinstance(node, ast.Constant) and node.value is None:
        return True
    if isinstance(node, ast.Name):
        return node.id in TYPE_NAMES or node.id[:1].isupper()
    if isinstance(node, ast.Subscript):
        return True
    if isinstance(node, ast.Attribute):
        return node.attr[:1].isupper()
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _looks_like_type(node.left) or _looks_like_type(node.right)
    return False


class _Scanner(ast.NodeVisitor):
    def __init__(self, name: str) -> None:
        self.name = name
        self.problems: list[str] = []
        self.aliases: dict[str, str] = {}  # local name -> module

    def flag(self, node: ast.AST, what: str) -> None:
        self.problems.append(f"{self.name}:{getattr(node, 'lineno', '?')}: {what}")

    # Annotations are never evaluated (every module has `from __future__ import annotations`).
    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            self.visit(node.value)

    def visit_arg(self, node: ast.arg) -> None:
        return

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._function(node)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self._function(node)

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        for child in [*node.decorator_list, *node.args.defaults, *node.args.kw_defaults]:
            if child is not None:
                self.visit(child)
        for stmt in node.body:
            self.visit(stmt)

    def visit_If(self, node: ast.If) -> None:
        # `if TYPE_CHECKING:` and `if sys.version_info >= (3, N):` bodies never run on 3.9.
        test = ast.unparse(node.test)
        if test == "TYPE_CHECKING" or test.startswith("sys.version_info >= (3, 1"):
            for stmt in node.orelse:
                self.visit(stmt)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name in NEW_MODULES:
                self.flag(node, f"module {alias.name} is new in 3.10+")
            self.aliases[alias.asname or alias.name] = alias.name

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        if module in NEW_MODULES:
            self.flag(node, f"module {module} is new in 3.10+")
        for alias in node.names:
            if alias.name in NEW_NAMES.get(module, ()):
                self.flag(node, f"{module}.{alias.name} is new in 3.10+")

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if isinstance(node.value, ast.Name):
            module = self.aliases.get(node.value.id, node.value.id)
            if node.attr in NEW_NAMES.get(module, ()):
                self.flag(node, f"{module}.{node.attr} is new in 3.10+")
        if node.attr in NEW_METHODS:
            self.flag(node, f".{node.attr}() is new in 3.10+")
        self.generic_visit(node)

    def visit_Name(self, node: ast.Name) -> None:
        if node.id in NEW_BUILTINS:
            self.flag(node, f"builtin {node.id} is new in 3.10+")

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        callee = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
        for kw in node.keywords:
            if kw.arg in NEW_KEYWORDS.get(callee, ()):
                self.flag(node, f"{callee}({kw.arg}=...) is new in 3.10+")
        second = node.args[1] if len(node.args) == 2 else None
        if (
            callee in ("isinstance", "issubclass")
            and isinstance(second, ast.BinOp)
            and isinstance(second.op, ast.BitOr)
        ):
            self.flag(node, f"{callee}(x, A | B) needs 3.10+: use a tuple")
        self.generic_visit(node)

    def visit_BinOp(self, node: ast.BinOp) -> None:
        # `int | None` outside an annotation is evaluated: a TypeError before 3.10.
        if isinstance(node.op, ast.BitOr) and (
            (isinstance(node.left, ast.Constant) and node.left.value is None)
            or (isinstance(node.right, ast.Constant) and node.right.value is None)
            or (isinstance(node.left, ast.Subscript) and _looks_like_type(node.right))
            or (isinstance(node.left, ast.Name) and node.left.id in TYPE_NAMES)
        ):
            self.flag(node, "`X | Y` of types evaluated at run time needs 3.10+")
        self.generic_visit(node)


def scan(name: str, source: str) -> list[str]:
    tree = ast.parse(source, filename=name)
    scanner = _Scanner(name)
    scanner.visit(tree)
    return scanner.problems


def _rel(path: Path) -> str:
    return str(path.relative_to(AGENT))


def _module(path: Path) -> str:
    """``execbus.agent.x`` (``execbus.agent.runc`` for ``runc/__init__.py``)."""
    parts = path.relative_to(AGENT).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(("execbus", "agent", *parts))


@pytest.mark.parametrize("path", MODULES, ids=_rel)
def test_agent_module_parses_with_the_39_grammar(path: Path) -> None:
    tree = ast.parse(path.read_text(), filename=str(path), feature_version=(3, 9))
    assert isinstance(tree, ast.Module) and ast.get_docstring(tree), "a module with its purpose"


def test_agent_modules_defer_annotations() -> None:
    """With ``from __future__ import annotations`` no annotation is evaluated on 3.9."""
    missing = []
    for path in MODULES:
        tree = ast.parse(path.read_text())
        annotated = any(
            (isinstance(n, ast.AnnAssign | ast.arg) and n.annotation is not None)
            or (isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.returns is not None)
            for n in ast.walk(tree)
        )
        future = any(
            isinstance(n, ast.ImportFrom)
            and n.module == "__future__"
            and any(a.name == "annotations" for a in n.names)
            for n in tree.body
        )
        if annotated and not future:
            missing.append(_rel(path))
    assert not missing, missing


def test_agent_uses_nothing_newer_than_39() -> None:
    problems = [p for path in MODULES for p in scan(_rel(path), path.read_text())]
    assert not problems, "\n".join(problems)


def test_the_scan_finds_what_it_looks_for() -> None:
    source = """
import asyncio, datetime as dt
from enum import StrEnum
from dataclasses import dataclass
Alias = dict[str, int] | None
@dataclass(slots=True)
class A:
    x: int | None = None
def f(a: int | None) -> str | None:
    isinstance(a, int | str)
    zip([], [], strict=True)
    n = (5).bit_count()
    y = dt.UTC
    async with asyncio.timeout(1):
        pass
    flags = a | 4
if sys.version_info >= (3, 11):
    from asyncio import timeout
else:
    from typing import Self
"""
    lines = sorted(int(p.split(":")[1]) for p in scan("probe.py", source))
    # Not the annotations (lines 8, 9), not `a | 4` (16), not what 3.11+ alone runs (18);
    # line 10 twice (isinstance, |).
    assert lines == [3, 5, 6, 10, 10, 11, 12, 13, 14, 20], lines


def test_agent_type_checks_against_python_310() -> None:
    """mypy with typeshed's version markers: no 3.11-only standard-library API."""
    mypy = shutil.which("mypy", path=os.path.dirname(sys.executable)) or shutil.which("mypy")
    if mypy is None:
        pytest.skip("mypy is not installed")
    result = subprocess.run(
        [
            mypy,
            "--strict",
            "--python-version",
            "3.10",
            "--no-incremental",
            "--cache-dir",
            os.devnull,
            "--config-file",
            "/dev/null",
            "src/execbus/agent",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if "is not supported" in result.stderr:
        pytest.skip(f"this mypy cannot check against 3.10: {result.stderr.strip()}")
    assert result.returncode == 0, result.stdout + result.stderr


def _python39() -> str | None:
    candidates = [
        os.environ.get("EXECBUS_TEST_PY39", ""),
        "/usr/bin/python3.9",
        *sorted(glob.glob("/root/.pyenv/versions/3.9*/bin/python3.9")),
    ]
    for candidate in filter(None, candidates):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [candidate, "-I", "-c", "import sys; print(sys.version_info[:2])"],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            )
            if out.stdout.strip() == "(3, 9)":
                return candidate
    return None


def test_every_agent_module_imports_under_a_real_python_39() -> None:
    python = _python39()
    if python is None:
        pytest.skip("no Python 3.9 on this machine")
    names = [_module(p) for p in MODULES if p.stem != "__main__"]
    code = (
        "import importlib, sys; sys.path.insert(0, 'src'); "
        f"[importlib.import_module(m) for m in {names!r}]; "
        "bad = sorted(m for m in sys.modules if m.startswith('execbus.') "
        "and not m.startswith('execbus.agent')); assert not bad, bad"
    )
    result = subprocess.run(
        [python, "-I", "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
