"""The agent must run on a bare python3: standard library only."""

from __future__ import annotations

import subprocess

from tests.system.agent.harness import GUEST_PYTHON, ROOT

CHECK = (
    "import sys; sys.path.insert(0, 'src'); "
    "import execbus.agent.cli, execbus.agent.core, execbus.agent.server, "
    "execbus.agent.runc.backend; "
    "bad = [m for m in sys.modules if m.split('.')[0] in "
    "('pydantic', 'aio_pika', 'aiormq', 'tenacity')]; "
    "assert not bad, bad; "
    "mine = sorted(m for m in sys.modules if m.startswith('execbus') and "
    "not m.startswith('execbus.agent') and m != 'execbus'); "
    "assert not mine, mine"
)


def test_agent_imports_only_the_standard_library() -> None:
    result = subprocess.run(
        [GUEST_PYTHON, "-I", "-c", CHECK], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
