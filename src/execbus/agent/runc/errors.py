"""runc's failures in the protocol's words: start failure codes from runc's messages.

runc reports why a ``runc exec`` failed only as text (in its JSON log, see
:func:`failure_from_log`); :func:`classify_runc_error` maps the wordings of
a missing or non-executable command, a bad working directory and a missing,
stopped or paused container onto the codes a host exec would get.
"""

from __future__ import annotations

import contextlib
import json

from execbus.agent.errors import (
    CONTAINER_NOT_FOUND,
    CONTAINER_NOT_RUNNING,
    START_FAILED,
    StartFailure,
    bad_working_dir,
    not_executable,
    not_found,
)


def failure_from_log(path: str) -> StartFailure:
    """Classify runc's error message (its JSON log) into a start failure."""
    message = "runc exec failed"
    with contextlib.suppress(OSError), open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            with contextlib.suppress(ValueError, AttributeError):
                entry = json.loads(line)
                if entry.get("level") in ("error", "fatal"):
                    message = str(entry.get("msg", message))
    return classify_runc_error(message)


def classify_runc_error(message: str) -> StartFailure:
    """Map runc's wording onto the protocol's failure codes."""
    lower = message.lower()
    if "executable file not found" in lower or (
        "exec: " in lower and "no such file or directory" in lower
    ):
        return not_found(message)
    if "chdir to cwd" in lower:
        return bad_working_dir(message)
    if "exec: " in lower and ("permission denied" in lower or "exec format error" in lower):
        return not_executable(message)
    if "does not exist" in lower:
        return StartFailure(CONTAINER_NOT_FOUND, message)
    if "stopped" in lower or "paused" in lower or "not running" in lower:
        return StartFailure(CONTAINER_NOT_RUNNING, message)
    return StartFailure(START_FAILED, message)
