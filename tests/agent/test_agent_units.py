"""Small pure functions of the agent: addresses, signals, user databases."""

from __future__ import annotations

import os
import signal

import pytest

from execbus.agent.errors import AgentError, StartFailure
from execbus.agent.listeners import VMADDR_CID_ANY, ListenerSpec, parse_listen_url
from execbus.agent.procs import start_time
from execbus.agent.runc.backend import runc_exit_status
from execbus.agent.runc.errors import classify_runc_error
from execbus.agent.runc.state import KnownContainer
from execbus.agent.signames import parse_signal, signal_name
from execbus.agent.users import FileUserDB, resolve_in_root, resolve_user


def test_listen_urls() -> None:
    assert parse_listen_url("unix:///run/x.sock") == ListenerSpec("unix", "/run/x.sock")
    assert parse_listen_url("tcp://127.0.0.1:7000") == ListenerSpec("tcp", "127.0.0.1", 7000)
    assert parse_listen_url("tcp://[::1]:7000").url == "tcp://[::1]:7000"
    assert parse_listen_url("vsock://any:7000") == ListenerSpec("vsock", str(VMADDR_CID_ANY), 7000)
    assert parse_listen_url("vsock://3:7000") == ListenerSpec("vsock", "3", 7000)
    for bad in ("/run/x.sock", "http://x:1", "tcp://host", "vsock://cid:1", "tcp://h:99999"):
        with pytest.raises(ValueError):
            parse_listen_url(bad)


def test_signals() -> None:
    assert parse_signal("SIGTERM") == parse_signal("term") == parse_signal(15) == 15
    assert parse_signal("RTMIN+1") == signal.SIGRTMIN + 1
    assert signal_name(9) == "SIGKILL"
    assert signal_name(signal.SIGRTMIN + 2) == "SIGRTMIN+2"
    for bad in ("SIGNOPE", -1, 0, 1000, 1.5, "RTMAX+5"):
        with pytest.raises(AgentError):
            parse_signal(bad)


def test_runc_status_and_errors() -> None:
    assert runc_exit_status(137 << 8) == (137, 9)  # runc reports signal n as 128+n
    assert runc_exit_status(3 << 8) == (3, None)
    assert runc_exit_status(signal.SIGKILL) == (137, 9)  # runc itself killed
    cases = {
        'exec: "x": executable file not found in $PATH': "command_not_found",
        'exec: "/etc": permission denied': "command_not_executable",
        'chdir to cwd ("/nope") set in config.json failed': "invalid_working_dir",
        "container does not exist": "container_not_found",
        "cannot exec in a stopped container": "container_not_running",
        "something else": "start_failed",
    }
    for message, code in cases.items():
        assert classify_runc_error(message).code == code


def test_container_user_database_stays_inside_the_root(tmp_dir: str) -> None:
    etc = os.path.join(tmp_dir, "etc")
    os.makedirs(os.path.join(tmp_dir, "data"))
    os.makedirs(etc)
    with open(os.path.join(tmp_dir, "data", "passwd"), "w") as f:
        f.write("app:x:1000:1000::/home/app:/bin/sh\n# comment\nbroken-line\n")
    with open(os.path.join(tmp_dir, "data", "group"), "w") as f:
        f.write("app:x:1000:\nwheel:x:10:app,other\n")
    os.symlink("/data/passwd", os.path.join(etc, "passwd"))  # absolute, as inside the root
    os.symlink("../../../../../data/group", os.path.join(etc, "group"))
    assert resolve_in_root(tmp_dir, "etc/passwd") == os.path.join(tmp_dir, "data", "passwd")
    assert resolve_in_root(tmp_dir, "etc/group") == os.path.join(tmp_dir, "data", "group")
    db = FileUserDB(tmp_dir)
    app = resolve_user("app", db)
    assert (app.uid, app.gid, app.groups, app.home) == (1000, 1000, (1000, 10), "/home/app")
    assert resolve_user("app:wheel", db).groups == (10,)
    assert resolve_user("1000:10", db).gid == 10
    with pytest.raises(StartFailure):
        resolve_user("root", db)


def test_a_known_container_lives_as_long_as_its_very_init_process() -> None:
    import subprocess
    import time

    child = subprocess.Popen(["sleep", "30"])
    try:
        known = KnownContainer.of({"pid": child.pid}, "/rootfs", {"args": ["sh"]})
        assert known is not None and known.alive()
        assert KnownContainer.of({"pid": 0}, "/", {}) is None
        assert KnownContainer.of({}, "/", {}) is None
        forged = KnownContainer(child.pid, "1", "/", {})  # same pid, another start time
        assert not forged.alive()
        child.kill()
        deadline = time.monotonic() + 5
        while start_time(child.pid, zombies=False) is not None:  # a zombie counts as gone
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert not known.alive()
    finally:
        child.kill()
        child.wait()
    assert start_time(os.getpid(), zombies=False) is not None
