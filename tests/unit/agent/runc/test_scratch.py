"""The runc backend's scratch directory: a killed agent's is swept by the next one,
a live agent's never is."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from execbus.agent.runc.scratch import PREFIX, ScratchDir, sweep_abandoned

HOLD = """
import sys, time
from execbus.agent.runc.scratch import ScratchDir
scratch = ScratchDir(sys.argv[1])
print(scratch.ensure(), flush=True)
time.sleep(60)
"""


def hold_scratch(base: Path) -> tuple[subprocess.Popen[str], Path]:
    """Another agent life holding a scratch directory under ``base``."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(base)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    return proc, Path(proc.stdout.readline().strip())


def end(proc: subprocess.Popen[str], sig: int = signal.SIGKILL) -> None:
    proc.send_signal(sig)
    proc.wait(10)
    if proc.stdout is not None:
        proc.stdout.close()


def test_a_killed_lifes_directory_is_swept_and_a_live_ones_is_kept(tmp_path: Path) -> None:
    dead, dead_dir = hold_scratch(tmp_path)
    live, live_dir = hold_scratch(tmp_path)
    try:
        (dead_dir / "1").mkdir()  # an exec's files, left when the agent was killed
        end(dead)
        scratch = ScratchDir(str(tmp_path))
        mine = Path(scratch.ensure())
        assert scratch.swept == [str(dead_dir)]
        assert not dead_dir.exists()
        assert live_dir.is_dir() and mine.is_dir()
        assert mine.name.startswith(PREFIX)
        assert sweep_abandoned(str(tmp_path)) == []  # ours and the live one are held
        scratch.close()
        assert not mine.exists()
    finally:
        end(dead)
        end(live)
    assert sweep_abandoned(str(tmp_path)) == [str(live_dir)]


def test_a_directory_without_a_lock_file_is_left_alone(tmp_path: Path) -> None:
    older = tmp_path / f"{PREFIX}older"  # an older agent's, or one being made right now
    older.mkdir()
    other = tmp_path / "unrelated"
    other.mkdir()
    assert sweep_abandoned(str(tmp_path)) == []
    assert older.is_dir() and other.is_dir()
