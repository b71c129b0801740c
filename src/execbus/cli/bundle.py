"""``execbus agent-bundle``: the guest agent as one file that runs on any python3 >= 3.9.

The archive is a zipapp (PEP 441): a ``#!/usr/bin/env python3`` line, then a
zip holding ``__main__.py`` and the modules of :mod:`execbus.agent`, nothing
else. There is no ``execbus/__init__.py`` in it (``execbus`` is a namespace
package there): it would offer the client API, which needs aio-pika and is
not in the archive. The agent package imports the standard library only; the build checks that again
and refuses a module that imports anything else. Entries are sorted and
dated 1980-01-01, so the same sources always give the same bytes.

See docs/guest.md for running it (systemd, a container entrypoint).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import hashlib
import os
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

DEFAULT_OUTPUT = "execbus-agent.pyz"
DEFAULT_INTERPRETER = "/usr/bin/env python3"
MIN_PYTHON = (3, 9)

MAIN = '''\
"""execbus guest agent (zipapp): python3 execbus-agent.pyz --listen unix:///run/execbus/agent.sock"""
import sys

if sys.version_info < {min_python!r}:
    sys.stderr.write(
        "execbus-agent: needs Python {min_text} or later; this is %d.%d\\n" % sys.version_info[:2]
    )
    sys.exit(2)

from execbus.agent.cli import main

sys.exit(main())
'''

_DATE = (1980, 1, 1, 0, 0, 0)


class BundleError(Exception):
    """The bundle cannot be built; the message is one line for the user."""


@dataclass(frozen=True)
class Bundle:
    path: Path
    modules: list[str]
    size: int
    sha256: str


def agent_dir() -> Path:
    """The directory of the :mod:`execbus.agent` package (without importing it)."""
    return Path(__file__).resolve().parents[1] / "agent"


def agent_sources(directory: Path | None = None) -> dict[str, bytes]:
    """``{"execbus/agent/x.py": source}`` of every module of the agent package."""
    directory = directory or agent_dir()
    if not (directory / "__init__.py").is_file():
        raise BundleError(f"{directory} is not the execbus.agent package (no __init__.py)")
    files = sorted(directory.rglob("*.py"))  # subpackages (runc/) included
    return {f"execbus/agent/{f.relative_to(directory).as_posix()}": f.read_bytes() for f in files}


def foreign_imports(name: str, source: bytes) -> list[str]:
    """Modules ``source`` imports that are neither the standard library nor execbus.agent."""
    tree = ast.parse(source, filename=name)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module]
        else:
            continue
        for module in modules:
            top = module.split(".")[0]
            if module == "execbus.agent" or module.startswith("execbus.agent."):
                continue
            if top == "__future__" or top in sys.stdlib_module_names:
                continue
            found.append(module)
    return found


def build(output: Path, interpreter: str = DEFAULT_INTERPRETER) -> Bundle:
    """Write the zipapp to ``output`` (atomically, mode 0755)."""
    sources = agent_sources()
    for name, source in sources.items():
        try:
            bad = foreign_imports(name, source)
        except SyntaxError as exc:
            raise BundleError(f"{name}: {exc.msg} (line {exc.lineno})") from None
        if bad:
            raise BundleError(f"{name} imports {', '.join(bad)}: the agent must be stdlib-only")
    main = MAIN.format(min_python=MIN_PYTHON, min_text=".".join(map(str, MIN_PYTHON)))
    entries = {"__main__.py": main.encode(), **sources}

    output = output.resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", dir=output.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(b"#!" + interpreter.encode() + b"\n")
            with zipfile.ZipFile(f, "w") as archive:
                # Directory entries: zipimport finds the namespace package execbus by them.
                for name in _directories(sources):
                    info = zipfile.ZipInfo(name, date_time=_DATE)
                    info.external_attr = (0o40755 << 16) | 0x10
                    archive.writestr(info, b"")
                for name in sorted(entries):
                    info = zipfile.ZipInfo(name, date_time=_DATE)
                    info.compress_type = zipfile.ZIP_DEFLATED
                    info.external_attr = 0o100644 << 16
                    archive.writestr(info, entries[name])
        os.chmod(tmp, 0o755)
        os.replace(tmp, output)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    data = output.read_bytes()
    modules = sorted(n.removesuffix(".py").replace("/", ".") for n in sources)
    return Bundle(output, modules, len(data), hashlib.sha256(data).hexdigest())


def _directories(sources: dict[str, bytes]) -> list[str]:
    """``execbus/``, ``execbus/agent/`` and the agent's subpackages (``execbus/agent/runc/``)."""
    return sorted({"execbus/"} | {name.rsplit("/", 1)[0] + "/" for name in sources})


DESCRIPTION = """\
Write the guest agent as one executable file (a zipapp) that runs with any
python3 >= 3.9 and nothing installed: copy it into the guest and run
`python3 execbus-agent.pyz --listen unix:///run/execbus/agent.sock`
(it takes the options of `execbus agent`). It holds the execbus.agent
package only, which imports the standard library alone. See docs/guest.md.
"""


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="execbus agent-bundle",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "-o",
        "--output",
        metavar="PATH",
        default=DEFAULT_OUTPUT,
        help=f"where to write the archive (default: ./{DEFAULT_OUTPUT})",
    )
    p.add_argument(
        "--python",
        metavar="INTERPRETER",
        default=DEFAULT_INTERPRETER,
        help=f"the #! line's interpreter (default: {DEFAULT_INTERPRETER})",
    )
    args = p.parse_args(argv)
    try:
        bundle = build(Path(args.output), args.python)
    except BundleError as exc:
        print(f"execbus agent-bundle: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"execbus agent-bundle: cannot write {args.output}: {exc.strerror}", file=sys.stderr)
        return 1
    print(
        f"wrote {bundle.path} ({bundle.size} bytes, {len(bundle.modules)} modules, "
        f"sha256 {bundle.sha256}); run: python3 {bundle.path} --listen URL"
    )
    return 0
