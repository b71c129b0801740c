"""The exec journal at rest: modes, no env values, exec ids that never become paths."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from execbus.agent.execspec import ExecSpec, valid_exec_id
from execbus.agent.journal import Journal, JournalError, redact_meta


@pytest.mark.parametrize(
    ("exec_id", "ok"),
    [
        ("a", True),
        ("3f2a9c", True),
        ("run_1-b", True),
        ("x" * 128, True),
        ("x" * 129, False),
        ("", False),
        ("-x", False),
        ("_x", False),
        ("../x", False),
        ("a/b", False),
        ("a.b", False),
        ("x\n", False),
        ("é", False),
    ],
)
def test_exec_id_rule(exec_id: str, ok: bool) -> None:
    assert valid_exec_id(exec_id) is ok


def test_meta_keeps_no_env_value() -> None:
    env = [("PASSWORD", "s3cret"), ("EMPTY", "")]
    meta = {
        "cfg": {"env": ["PASSWORD=s3cret", "EMPTY=", "OTHER=s3cret"], "cmd": ["x"]},
        "deep": [["PASSWORD=s3cret"]],
        "n": 1,
    }
    assert redact_meta(meta, env) == {
        "cfg": {"env": ["PASSWORD=<redacted>", "EMPTY=<redacted>", "OTHER=s3cret"], "cmd": ["x"]},
        "deep": [["PASSWORD=<redacted>"]],
        "n": 1,
    }
    assert redact_meta(meta, []) is meta


def test_entries_are_private_and_hold_no_secret(tmp_path: Path) -> None:
    state = tmp_path / "state"
    journal = Journal(str(state))
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    spec = ExecSpec(
        exec_id="e1",
        cmd=["sh", "-c", "echo $TOKEN"],
        env=[("TOKEN", "t0ps3cret")],
        meta={"cfg": {"env": ["TOKEN=t0ps3cret"]}},
    )
    journal.record(spec, 1.0, "/sys/fs/cgroup/execbus/a1-2-3/e1")
    journal.identify("e1", {"cgroup": "/sys/fs/cgroup/execbus/a1-2-3/e1", "groups": [[42, "7"]]})
    entry = state / "e1.exec.json"
    assert stat.S_IMODE(entry.stat().st_mode) == 0o600
    text = entry.read_text()
    assert "t0ps3cret" not in text and "echo" not in text
    doc = json.loads(text)
    assert doc["groups"] == [[42, "7"]] and doc["meta"]["cfg"]["env"] == ["TOKEN=<redacted>"]
    journal.acknowledged("e1")
    assert not entry.exists()
    acked = state / "acked.log"
    assert acked.read_text() == "e1\n" and stat.S_IMODE(acked.stat().st_mode) == 0o600


def test_an_acknowledged_exec_with_processes_left_stays_journaled(tmp_path: Path) -> None:
    journal = Journal(str(tmp_path))
    journal.record(ExecSpec(exec_id="d", cmd=["x"], meta={"k": "v"}), 1.0)
    journal.identify("d", {"cgroup": None, "groups": [[42, "7"]]})
    journal.acknowledged("d", lingering=True)
    doc = json.loads((tmp_path / "d.exec.json").read_text())
    assert doc["acked"] is True and doc["groups"] == [[42, "7"]] and doc["meta"] == {}
    journal.forget("d")
    assert not (tmp_path / "d.exec.json").exists()


def test_leftovers_ignore_what_is_not_an_exec(tmp_path: Path) -> None:
    journal = Journal(str(tmp_path))
    (tmp_path / "ok.exec.json").write_text('{"exec_id": "ok"}')
    (tmp_path / "bad name.exec.json").write_text('{"exec_id": "bad name"}')
    (tmp_path / "other.exec.json").write_text('{"exec_id": "ok"}')  # names another exec
    (tmp_path / "junk.exec.json").write_text("{")
    assert [d["exec_id"] for d in Journal(str(tmp_path)).leftovers()] == ["ok"]
    with pytest.raises(ValueError):
        journal.forget("../x")


def test_an_unsafe_state_dir_is_refused_and_odd_entries_never_read(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(JournalError, match="symbolic link"):
        Journal(str(link))
    # what is not a regular file is never read (nor followed)
    os.mkfifo(real / "fifo.exec.json")
    (real / "planted.exec.json").symlink_to("/etc/passwd")
    (real / "dir.exec.json").mkdir()
    assert Journal(str(real)).leftovers() == []


def test_a_wide_state_dir_is_narrowed(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o755)
    entry = state / "x.exec.json"
    entry.write_text('{"exec_id": "x"}')
    entry.chmod(0o644)
    Journal(str(state))
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE(entry.stat().st_mode) == 0o600
