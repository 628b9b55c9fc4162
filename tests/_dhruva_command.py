"""Running the ``dhruva`` command in tests: ``run`` it, or start a ``dhruva -s`` :class:`Server`.

Used by tests/test_cli.py and tests/test_cli_security.py; the
``start_server`` fixture (tests/conftest.py) kills every server it started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

COMMAND = [sys.executable, "-m", "dhruva"]
WAIT_S = 30.0


def run(*args: str, stdin: str = "", cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COMMAND, *args], input=stdin, capture_output=True, text=True, timeout=60, cwd=cwd
    )


class Server:
    """A ``dhruva -s`` child process on a Unix socket; killed by pid at the end."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.socket = str(tmp_path / "server.sock")
        # A log of its own: a restarted server must not be taken as ready
        # because the previous one's "listening on" line is in the file.
        count = len(list(tmp_path.glob("server*.log")))
        self.log = tmp_path / f"server{count}.log"
        self.process = subprocess.Popen(
            [*COMMAND, "-s", "--address", self.socket, "--logfile", str(self.log), *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + WAIT_S
        while "listening on" not in self.log_text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"server did not start: {self.log_text()}")
            time.sleep(0.02)

    def log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def wait(self) -> int:
        return self.process.wait(timeout=WAIT_S)

    def kill(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()
        if self.process.stderr:
            self.process.stderr.close()


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("dhruva: ")
    assert "Traceback" not in result.stderr
    return lines[0]
