"""``execbus run -it`` driven through a real pseudo-terminal, as a person would."""

from __future__ import annotations

import fcntl
import os
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from typing import Any

import pytest

pytestmark = pytest.mark.integration


class Terminal:
    """``execbus`` running on the slave side of a pty; we type and read on the master."""

    def __init__(self, args: list[str], env: dict[str, str], rows: int, cols: int) -> None:
        self.master, slave = os.openpty()
        self.resize(rows, cols)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "execbus", *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            start_new_session=True,
        )
        os.close(slave)
        self.seen = b""

    def resize(self, rows: int, cols: int) -> None:
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def type(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def expect(self, text: bytes, timeout: float = 10.0) -> bytes:
        """Read until ``text`` shows up; what came up to and including it."""
        deadline = time.monotonic() + timeout
        while text not in self.seen:
            ready, _, _ = select.select(
                [self.master], [], [], max(0.0, deadline - time.monotonic())
            )
            if not ready:
                raise AssertionError(f"{text!r} never showed up; got {self.seen!r}")
            try:
                self.seen += os.read(self.master, 4096)
            except OSError as exc:  # EIO: execbus exited and closed the pty
                raise AssertionError(f"{text!r} never showed up; got {self.seen!r}") from exc
        end = self.seen.index(text) + len(text)
        before, self.seen = self.seen[:end], self.seen[end:]
        return before

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        os.close(self.master)


@pytest.fixture
def terminal(cli_env: dict[str, str], local_worker: Any) -> Iterator[Terminal]:
    term = Terminal(["run", "-it", "--agent", "local", "--", "sh"], cli_env, rows=30, cols=100)
    yield term
    term.close()


def test_interactive_shell(terminal: Terminal) -> None:
    terminal.type(b"echo hi-$((40+2))\r")
    terminal.expect(b"hi-42")  # the remote shell's output, not just the echo of our typing

    terminal.type(b"stty size\r")
    terminal.expect(b"30 100")  # the initial window size
    terminal.resize(40, 120)
    terminal.proc.send_signal(signal.SIGWINCH)
    time.sleep(0.5)  # the resize request goes out before what we type next
    terminal.type(b"stty size\r")
    terminal.expect(b"40 120")

    terminal.type(b"sleep 100\r")
    time.sleep(0.5)
    terminal.type(b"\x03")  # Ctrl-C: through the raw local terminal to the remote PTY
    terminal.type(b"echo status-$?\r")
    terminal.expect(b"status-130", timeout=5)

    terminal.type(b"exit 7\r")
    assert terminal.proc.wait(10) == 7
