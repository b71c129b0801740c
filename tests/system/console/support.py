"""What the console's browser tests share: the console process and the browser bridge.

The browser is Debian's ``chromium`` driven by ``playwright-core`` (pinned in
``package.json`` with a lockfile; ``make console-test-deps`` installs it) through
``browser.mjs``, a small bridge that takes one JSON command per line. Outside
CI without Chromium, Node.js or the package the tests skip with the reason;
under ``CI=true`` that is a failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from execbus.testing.processes import child_env

HERE = Path(__file__).resolve().parent
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


def need_browser() -> str:
    """The ``node`` binary, once Chromium and playwright-core are there (else skip/fail)."""
    node = shutil.which("node")
    missing = None
    if not Path(CHROMIUM).exists():
        missing = f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    elif node is None:
        missing = "node is not installed (apt-get install nodejs npm)"
    elif not (HERE / "node_modules" / "playwright-core").is_dir():
        missing = f"{HERE}/node_modules is missing: run `make console-test-deps` (npm ci)"
    if missing is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the console's browser tests cannot run under CI: {missing}")
        pytest.skip(missing)
    assert node is not None
    return node


class BrowserError(AssertionError):
    pass


class Browser:
    """One headless Chromium page, driven through ``browser.mjs``."""

    def __init__(self, node: str, log_path: Path) -> None:
        self._log = open(log_path, "wb")  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen(
            [node, str(HERE / "browser.mjs")],
            cwd=HERE,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env={**os.environ, "CHROMIUM": CHROMIUM},
            start_new_session=True,
        )
        self._id = 0

    def call(self, op: str, **args: Any) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._id += 1
        self.proc.stdin.write((json.dumps({"id": self._id, "op": op, **args}) + "\n").encode())
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise BrowserError(f"the browser bridge ended (exit {self.proc.poll()})")
        answer = json.loads(line)
        if not answer["ok"]:
            raise BrowserError(f"{op} {args}: {answer['error'][:2000]}")
        return answer["result"]

    def eval(self, expr: str) -> Any:
        return self.call("eval", expr=expr)

    def wait(self, expr: str, timeout: float = 5.0) -> Any:
        """Poll ``expr`` in the page until it is truthy; its value."""
        return self.call("wait", expr=expr, timeout=int(timeout * 1000))

    def goto(self, url: str) -> None:
        self.call("goto", url=url)

    def screenshot(self, path: Path) -> Path:
        self.call("screenshot", path=str(path))
        return path

    def problems(self) -> list[dict[str, str]]:
        """Console errors and warnings, page errors, failed requests and dialogs so far."""
        result: list[dict[str, str]] = self.call("log")
        return result

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.call("close")
        with contextlib.suppress(Exception):
            self.proc.wait(10)
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        self._log.close()


class ConsoleProcess:
    """A real ``execbus console`` subprocess on a port it picks."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "execbus", "console", "--listen", "127.0.0.1:0", *args],
                env=child_env(**env),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.url = self._wait_url()

    def _wait_url(self, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(r"execbus console: (http://\S+/)", self.log())
            if match:
                return match.group(1)
            if self.proc.poll() is not None:
                raise AssertionError(f"the console exited early:\n{self.log()}")
            time.sleep(0.05)
        raise AssertionError(f"the console did not start:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-5000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


def save_for_docs(*shots: Path) -> None:
    """With EXECBUS_CONSOLE_SCREENSHOTS=DIR, copy the screenshots there (docs/console)."""
    target = os.environ.get("EXECBUS_CONSOLE_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        for shot in shots:
            shutil.copy(shot, Path(target) / shot.name)
