"""runc's exit statuses and error messages (``agent/runc/errors.py``, ``backend.py``)."""

from __future__ import annotations

import signal

from execbus.agent.runc.backend import runc_exit_status
from execbus.agent.runc.errors import classify_runc_error


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
