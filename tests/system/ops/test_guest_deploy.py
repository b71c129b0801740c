"""deploy/guest (docs/guest.md): the systemd unit and the container entrypoint really run.

No systemd or Docker engine is needed: the unit is checked by
``systemd-analyze verify`` where it exists, and both command lines run here
as processes, with the single-file agent and the paths translated to a
temporary directory, under ``/usr/bin/python3 -I`` (no venv, no PYTHONPATH).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from execbus.testing.processes import free_port
from tests.conftest import ROOT

GUEST = ROOT / "deploy" / "guest"
UNIT = GUEST / "execbus-agent.service"
DOCKERFILE = GUEST / "Dockerfile"
DOC = ROOT / "docs" / "guest.md"
PYZ = "/usr/local/lib/execbus/execbus-agent.pyz"
BARE_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}


def fenced(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", DOC.read_text(), re.S)


def test_the_doc_shows_the_shipped_files() -> None:
    assert UNIT.read_text() in fenced("ini")
    assert DOCKERFILE.read_text() in fenced("dockerfile")
    readme = (ROOT / "README.md").read_text()
    assert "docs/guest.md" in readme


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_the_unit_verifies(tmp_path: Path) -> None:
    unit = tmp_path / "execbus-agent.service"
    unit.write_text(UNIT.read_text())
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def unit_settings() -> dict[str, str]:
    settings = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            settings[key] = value
    return settings


def test_the_unit_lets_the_agent_finish_its_execs() -> None:
    unit = unit_settings()
    assert unit["KillMode"] == "mixed", "SIGTERM to the agent alone, not to its execs"
    argv = shlex.split(unit["ExecStart"])
    grace = float(argv[argv.index("--grace") + 1])
    assert float(unit["TimeoutStopSec"]) >= grace + 5
    assert unit["StateDirectoryMode"] == "0700"
    assert argv[:3] == ["/usr/bin/python3", "-I", PYZ]


def dockerfile_instruction(name: str) -> str:
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith(name + " "):
            return line[len(name) + 1 :]
    raise AssertionError(f"no {name} in {DOCKERFILE}")


def test_the_container_entrypoint() -> None:
    entrypoint = json.loads(dockerfile_instruction("ENTRYPOINT"))
    assert entrypoint == ["python3", "-I", PYZ]
    assert f"COPY execbus-agent.pyz {PYZ}" in DOCKERFILE.read_text()
    health = dockerfile_instruction("HEALTHCHECK")
    assert "9181/healthz" in health, "liveness, not readiness"
    assert re.match(r"python:3\.9", dockerfile_instruction("FROM")), "the oldest supported"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from execbus.cli.bundle import build

    return build(tmp_path_factory.mktemp("pyz") / "execbus-agent.pyz").path


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def translate(argv: list[str], paths: dict[str, str]) -> list[str]:
    out = []
    for i, arg in enumerate(argv):
        previous = argv[i - 1] if i else ""
        if previous == "--socket-group":
            arg = str(os.getgid())  # `execbus` / 10001 there; this test's own group here
        elif previous == "--http-host":
            arg = "127.0.0.1"
        for old, new in paths.items():
            arg = arg.replace(old, new)
        out.append(arg)
    return out


def start(
    procs: list[subprocess.Popen[bytes]], argv: list[str], log: Path
) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            argv,
            env=BARE_ENV,
            cwd=log.parent,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    procs.append(proc)
    deadline = time.monotonic() + 15
    while "agent ready" not in log.read_text():
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.02)
    return proc


def stop(proc: subprocess.Popen[bytes], log: Path) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0, log.read_text()
    assert "Traceback" not in log.read_text()


def test_the_unit_command_runs(
    bundle: Path, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    run_dir, state_dir = tmp_path / "run", tmp_path / "state"
    run_dir.mkdir(mode=0o750)  # RuntimeDirectory=, StateDirectory= as systemd makes them
    state_dir.mkdir(mode=0o700)
    argv = shlex.split(unit_settings()["ExecStart"])
    paths = {
        PYZ: str(bundle),
        "/run/execbus": str(run_dir),
        "/var/lib/execbus/agent": str(state_dir),
    }
    argv = translate(argv, paths)
    log = tmp_path / "agent.log"
    proc = start(procs, argv, log)
    sock = run_dir / "agent.sock"
    assert stat.S_IMODE(sock.stat().st_mode) == 0o660
    assert json.loads(log.read_text().splitlines()[-1])["msg"] == "agent ready"  # --log-format json
    stop(proc, log)


def test_the_container_command_runs_and_is_healthy(
    bundle: Path, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    port = str(free_port())
    argv = json.loads(dockerfile_instruction("ENTRYPOINT")) + json.loads(
        dockerfile_instruction("CMD")
    )
    argv = translate(argv, {PYZ: str(bundle), "/run/execbus": str(run_dir), "9181": port})
    argv[0] = "/usr/bin/python3"
    log = tmp_path / "agent.log"
    proc = start(procs, argv, log)
    health = json.loads(dockerfile_instruction("HEALTHCHECK").split(" CMD ", 1)[1])
    health = [a.replace(":9181/", f":{port}/") for a in health]
    health[0] = "/usr/bin/python3"
    assert subprocess.run(health, env=BARE_ENV, timeout=15, check=False).returncode == 0
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
        assert json.loads(response.read())["ready"] is True
    stop(proc, log)


def test_nothing_of_the_venv_is_reachable() -> None:
    """The commands above run with /usr/bin/python3 -I, which cannot import execbus."""
    probe = subprocess.run(
        ["/usr/bin/python3", "-I", "-c", "import execbus"],
        env=BARE_ENV,
        cwd="/",
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert probe.returncode != 0
