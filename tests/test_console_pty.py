"""The console as a person uses it: through a pseudo-terminal (spec CLI-032, CLI-033, TOOL-060).

Each test runs ``python -m dhruva -c`` on the child side of a pty, so standard
input is a terminal and the console is interactive (prompts, readline), types
into it and reads what a person would see.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

pty = pytest.importorskip("pty")
pytest.importorskip("readline")

from _dhruva_command import Server  # noqa: E402

from dhruva.connection import Connection  # noqa: E402
from dhruva.file_storage import FileStorage  # noqa: E402

WAIT_S = 30.0
PROMPT = ">>> "


class Terminal:
    """A ``dhruva -c`` child process on a pseudo-terminal."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        env = {
            key: value
            for key, value in os.environ.items()
            if key not in ("PYTHONSTARTUP", "DHRUVA_CONFIG")
        }
        env.update(
            HOME=str(tmp_path),
            TERM="xterm",
            DHRUVA_HISTORY=str(tmp_path / "history"),
            PYTHONPATH=os.pathsep.join(sys.path),
        )
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child
            os.execve(sys.executable, [sys.executable, "-m", "dhruva", "-c", *args], env)
        self.seen = ""

    def read_until(self, text: str) -> str:
        """Read until ``text`` appears in what was shown since the last call; return it."""
        deadline = time.monotonic() + WAIT_S
        while text not in self.seen:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"{text!r} not shown; the terminal shows {self.seen!r}"
            ready, _, _ = select.select([self.fd], [], [], remaining)
            if ready:
                try:
                    chunk = os.read(self.fd, 4096)
                except OSError:  # the child closed the terminal
                    chunk = b""
                assert chunk, f"the console ended before showing {text!r}: {self.seen!r}"
                self.seen += chunk.decode("utf-8", "replace")
        shown, _, self.seen = self.seen.partition(text)
        return shown + text

    def type(self, keys: str) -> None:
        os.write(self.fd, keys.encode())

    def wait(self) -> int:
        """Wait for the child to end (reading what it shows); return its exit status."""
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                os.close(self.fd)
                return os.waitstatus_to_exitcode(status)
            ready, _, _ = select.select([self.fd], [], [], 0.1)
            if ready:
                try:
                    self.seen += os.read(self.fd, 4096).decode("utf-8", "replace")
                except OSError:
                    pass
        os.kill(self.pid, 9)
        os.waitpid(self.pid, 0)
        raise AssertionError(f"the console did not end; it shows {self.seen!r}")


@pytest.mark.req("CLI-032")
def test_ctrl_d_with_uncommitted_changes_warns_first(tmp_path: Path) -> None:
    path = str(tmp_path / "db.dhruva")
    terminal = Terminal(tmp_path, "--file", path)
    terminal.read_until(PROMPT)
    terminal.type("root['x'] = 1\n")
    terminal.read_until(PROMPT)
    terminal.type("\x04")  # Ctrl-D
    assert "uncommitted changes to 1 objects" in terminal.read_until(PROMPT)
    terminal.type("\x04")  # again: leave without the change
    assert terminal.wait() == 0
    with Connection(FileStorage(path)) as connection:
        assert "x" not in connection.get_root()


@pytest.mark.req("CLI-032")
def test_ctrl_d_without_changes_leaves_at_once(tmp_path: Path) -> None:
    terminal = Terminal(tmp_path, "--file", str(tmp_path / "db.dhruva"))
    terminal.read_until(PROMPT)
    terminal.type("root['x'] = 1; connection.commit()\n")
    terminal.read_until(PROMPT)
    terminal.type("\x04")
    assert terminal.wait() == 0
    assert "uncommitted" not in terminal.seen


@pytest.mark.req("CLI-033")
def test_history_is_kept_across_sessions(tmp_path: Path) -> None:
    path = str(tmp_path / "db.dhruva")
    first = Terminal(tmp_path, "--file", path)
    first.read_until(PROMPT)
    first.type("marker = 6 * 7\n")
    first.read_until(PROMPT)
    first.type("\x04")
    assert first.wait() == 0
    assert "marker = 6 * 7" in (tmp_path / "history").read_text()

    second = Terminal(tmp_path, "--file", path)
    second.read_until(PROMPT)
    second.type("\x1b[A\n")  # the up arrow recalls the last session's line
    second.read_until(PROMPT)
    second.type("print('marker is', marker)\n")
    assert "marker is 42" in second.read_until(PROMPT)
    second.type("\x04")
    assert second.wait() == 0


def stop(server: Server) -> None:
    """Stop a ``dhruva -s`` child by its pid, as an operator restarting it would."""
    os.kill(server.process.pid, signal.SIGTERM)
    assert server.wait() == 0


@pytest.mark.req("TOOL-060")
def test_console_reconnects_after_the_server_restarts(
    tmp_path: Path, start_server: Callable[..., Server]
) -> None:
    path = str(tmp_path / "db.dhruva")
    server = start_server("--file", path)
    terminal = Terminal(tmp_path, "--address", server.socket)
    terminal.read_until(PROMPT)
    terminal.type("root['kept'] = 1; connection.commit()\n")
    terminal.read_until(PROMPT)
    terminal.type("root['dropped'] = 2\n")
    terminal.read_until(PROMPT)

    stop(server)
    server = start_server("--file", path)  # the same socket path
    terminal.type("connection.commit()\n")
    shown = terminal.read_until(PROMPT)
    assert "lost the connection to the server at" in shown
    assert "reconnected to the server at" in shown
    assert "1 uncommitted changes were dropped" in shown
    assert "Traceback" not in shown
    # One line for the loss and one for the reconnect, nothing else.
    said = [line for line in shown.splitlines()[1:] if line.strip() and line != PROMPT]
    assert len(said) == 2, shown

    terminal.type("print(sorted(root.items()))\n")
    assert "[('kept', 1)]" in terminal.read_until(PROMPT)
    terminal.type("root['after'] = 3; connection.commit()\n")
    terminal.read_until(PROMPT)
    terminal.type("\x04")
    assert terminal.wait() == 0
    assert "Traceback" not in terminal.seen
    stop(server)
    with Connection(FileStorage(path)) as connection:
        assert dict(connection.get_root()) == {"kept": 1, "after": 3}


@pytest.mark.req("TOOL-061")
def test_reconnect_when_the_server_is_back_later(
    tmp_path: Path, start_server: Callable[..., Server]
) -> None:
    path = str(tmp_path / "db.dhruva")
    server = start_server("--file", path)
    terminal = Terminal(tmp_path, "--address", server.socket)
    terminal.read_until(PROMPT)
    stop(server)
    terminal.type("connection.abort()\n")
    shown = terminal.read_until(PROMPT)
    assert "cannot reconnect" in shown and "reconnect()" in shown
    assert "Traceback" not in shown

    server = start_server("--file", path)
    terminal.type("reconnect()\n")
    shown = terminal.read_until(PROMPT)
    assert "reconnected to the server at" in shown and "0 uncommitted changes" in shown
    terminal.type("root['x'] = 1; connection.commit(); print('committed')\n")
    assert "committed" in terminal.read_until(PROMPT)
    terminal.type("\x04")
    assert terminal.wait() == 0
    stop(server)
    with Connection(FileStorage(path)) as connection:
        assert connection.get_root()["x"] == 1


@pytest.mark.req("TOOL-062")
def test_only_the_consoles_own_connection_reconnects(
    tmp_path: Path, start_server: Callable[..., Server]
) -> None:
    path = str(tmp_path / "db.dhruva")
    server = start_server("--file", path)
    terminal = Terminal(tmp_path, "--address", server.socket)
    terminal.read_until(PROMPT)
    terminal.type("old = connection; from dhruva.client_storage import ClientStorage\n")
    terminal.read_until(PROMPT)
    terminal.type(f"mine = ClientStorage({server.socket!r})\n")
    terminal.read_until(PROMPT)
    stop(server)
    server = start_server("--file", path)
    terminal.type("connection.abort()\n")
    assert "reconnected" in terminal.read_until(PROMPT)
    terminal.type("root['new'] = 1\n")
    terminal.read_until(PROMPT)

    terminal.type("old.abort()\n")  # the old connection was closed at the reconnect
    shown = terminal.read_until(PROMPT)
    assert "this connection is closed" in shown and "reconnect" not in shown
    terminal.type("mine.get_size()\n")  # the user's own storage: theirs to handle
    shown = terminal.read_until(PROMPT)
    assert "ServerConnectionError" in shown and "reconnect" not in shown
    terminal.type("print('changed:', len(connection.changed))\n")
    assert "changed: 1" in terminal.read_until(PROMPT)  # the new connection's change is kept
    terminal.type("\x04")
    terminal.read_until(PROMPT)  # the uncommitted-changes warning
    terminal.type("\x04")
    assert terminal.wait() == 0
    stop(server)
