"""The ``dhruva`` command (spec: server.md, "The dhruva command")."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from importlib.util import find_spec
from pathlib import Path

import pytest
from _dhruva_command import COMMAND, WAIT_S, Server, one_line_error, run

from dhruva.file_storage import FileStorage
from dhruva.tools.cli import CommandError, _rewrite_flags, build_parser, main

# --- argument structure --------------------------------------------------------------


@pytest.mark.req("CLI-001")
def test_flags_are_subcommand_aliases() -> None:
    assert _rewrite_flags(["-s", "--port", "1"]) == ["server", "--port", "1"]
    assert _rewrite_flags(["--file", "x", "-c"]) == ["console", "--file", "x"]
    assert _rewrite_flags(["pack", "x"]) == ["pack", "x"]
    with pytest.raises(CommandError):
        _rewrite_flags(["-s", "-c"])
    args = build_parser().parse_args(_rewrite_flags(["-s", "--stop", "--port", "7"]))
    assert args.command == "server" and args.stop and args.port == 7


@pytest.mark.req("CLI-001")
def test_help_explains_every_option() -> None:
    server_help = run("-s", "--help")
    assert server_help.returncode == 0
    for option in ("--file", "--host", "--port", "--address", "--gcinterval", "--readonly",
                   "--logfile", "--loglevel", "--stop"):  # fmt: skip
        assert option in server_help.stdout
    assert run("server", "--help").stdout == server_help.stdout
    console_help = run("-c", "--help")
    assert console_help.returncode == 0 and "--file" in console_help.stdout


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "dhruva -s" in capsys.readouterr().err


# --- console -----------------------------------------------------------------------


@pytest.mark.req("CLI-030")
def test_console_on_a_file_with_piped_stdin(tmp_path: Path) -> None:
    path = str(tmp_path / "db.dhruva")
    first = run("-c", "--file", path, stdin='root["a"] = 1\nconnection.commit()\nroot["b"] = 2\n')
    assert first.returncode == 0, first.stderr
    second = run("-c", "--file", path, stdin="print(sorted(root.items()))\n")
    assert second.returncode == 0, second.stderr
    # "b" was never committed: the console does not write on its own.
    assert second.stdout.strip() == "[('a', 1)]"


def test_console_reports_errors_of_the_code_it_runs(tmp_path: Path) -> None:
    result = run("-c", "--file", str(tmp_path / "db.dhruva"), stdin="1/0\nprint('after')\n")
    assert result.returncode == 0
    assert "ZeroDivisionError" in result.stderr
    assert "after" in result.stdout


@pytest.mark.req("CLI-010")
def test_console_on_a_locked_file(tmp_path: Path) -> None:
    path = str(tmp_path / "db.dhruva")
    holder = FileStorage(path)
    try:
        line = one_line_error(run("-c", "--file", path))
        assert "lock" in line
    finally:
        holder.close()


@pytest.mark.req("CLI-010")
def test_console_without_a_server(tmp_path: Path) -> None:
    line = one_line_error(run("-c", "--address", str(tmp_path / "nobody.sock")))
    assert "nobody.sock" in line


# --- server ------------------------------------------------------------------------


@pytest.mark.req("CLI-022", "CLI-020", "CLI-030")
def test_server_console_and_stop(start_server: Callable[..., Server]) -> None:
    server = start_server()
    temp_file = re.search(r"temporary file (\S+)", server.log_text())
    assert temp_file and Path(temp_file.group(1)).exists()
    address = ["--address", server.socket]
    wrote = run("-c", *address, stdin='root["x"] = [1, 2]\nconnection.commit()\nroot["y"] = 0\n')
    assert wrote.returncode == 0, wrote.stderr
    read = run("-c", *address, stdin="print(sorted(root.items()))\n")
    assert read.stdout.strip() == "[('x', [1, 2])]"
    stopped = run("-s", "--stop", *address)
    assert stopped.returncode == 0, stopped.stderr
    assert server.wait() == 0
    assert not Path(temp_file.group(1)).exists()
    assert not Path(server.socket).exists()


@pytest.mark.req("CLI-011", "CLI-010")
def test_stop_without_a_server(tmp_path: Path) -> None:
    line = one_line_error(run("-s", "--stop", "--address", str(tmp_path / "none.sock")))
    assert "no dhruva server is running" in line


@pytest.mark.req("CLI-021", "CLI-020")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signals_stop_cleanly(start_server: Callable[..., Server], signum: int) -> None:
    server = start_server()
    temp_file = re.search(r"temporary file (\S+)", server.log_text())
    assert temp_file
    os.kill(server.process.pid, signum)
    assert server.wait() == 0
    assert not Path(temp_file.group(1)).exists()
    assert not Path(server.socket).exists()
    assert "stopping" in server.log_text()


def test_file_survives_restart(start_server: Callable[..., Server], tmp_path: Path) -> None:
    path = str(tmp_path / "test.dhruva")
    server = start_server("--file", path)
    run("-c", "--address", server.socket, stdin='root["kept"] = True\nconnection.commit()\n')
    run("-s", "--stop", "--address", server.socket)
    assert server.wait() == 0
    assert Path(path).exists()
    server = start_server("--file", path)
    result = run("-c", "--address", server.socket, stdin='print(root["kept"])\n')
    assert result.stdout.strip() == "True"
    run("-s", "--stop", "--address", server.socket)
    assert server.wait() == 0
    # With the server stopped, the file opens directly.
    direct = run("-c", "--file", path, stdin='print(root["kept"])\n')
    assert direct.stdout.strip() == "True"


@pytest.mark.req("CLI-010")
def test_port_in_use() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        line = one_line_error(run("-s", "--port", str(port)))
    assert "cannot listen on 127.0.0.1:" in line


@pytest.mark.req("CLI-010")
def test_server_on_a_locked_file(tmp_path: Path) -> None:
    path = str(tmp_path / "db.dhruva")
    holder = FileStorage(path)
    try:
        line = one_line_error(run("-s", "--file", path, "--address", str(tmp_path / "x.sock")))
        assert "lock" in line
    finally:
        holder.close()


def test_tcp_server_on_a_free_port(start_server: Callable[..., Server], tmp_path: Path) -> None:
    # --address is given by the fixture; a TCP server is checked separately.
    log = tmp_path / "tcp.log"
    process = subprocess.Popen(
        [*COMMAND, "-s", "--port", "0", "--logfile", str(log)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + WAIT_S
        match = None
        while match is None and time.monotonic() < deadline and process.poll() is None:
            match = re.search(
                r"listening on 127\.0\.0\.1:(\d+)", log.read_text() if log.exists() else ""
            )
            time.sleep(0.02)
        assert match, log.read_text()
        port = match.group(1)
        result = run("-c", "--port", port, stdin="print(type(root).__name__)\n")
        assert result.stdout.strip() == "PersistentDict"
        assert run("-s", "--stop", "--port", port).returncode == 0
        assert process.wait(timeout=WAIT_S) == 0
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()


def test_console_serializer_flag_chooses_the_database_serializer(tmp_path: Path) -> None:
    pytest.importorskip("msgspec")
    path = str(tmp_path / "m.dhruva")
    created = run(
        "-c",
        "--file",
        path,
        "--serializer",
        "msgspec",
        stdin='root["x"] = (1, 2)\nconnection.commit()\n',
    )
    assert created.returncode == 0, created.stderr
    query = "print(connection.get_serializer().name, root['x'])\n"
    reopened = run("-c", "--file", path, stdin=query)
    assert reopened.stdout.strip() == "msgspec (1, 2)"


def test_database_tools_are_dhruva_subcommands(tmp_path: Path) -> None:
    path = str(tmp_path / "t.dhruva")
    made = run("-c", "--file", path, stdin='root["a"] = 1\nconnection.commit()\n')
    assert made.returncode == 0, made.stderr
    verified = run("verify", path)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    missing = run("verify", str(tmp_path / "missing.dhruva"))
    assert missing.returncode != 0
    assert "Traceback" not in missing.stderr


def test_pack_history_and_backup_are_dhruva_subcommands(tmp_path: Path) -> None:
    path = str(tmp_path / "t.dhruva")
    made = run("-c", "--file", path, stdin='root["a"] = [1]\nconnection.commit()\n')
    assert made.returncode == 0, made.stderr
    history = run("history", path)
    assert history.returncode == 0, history.stderr
    assert run("pack", "-q", path).returncode == 0
    copy = str(tmp_path / "copy.dhruva")
    assert run("backup", path, copy).returncode == 0
    assert run("-c", "--file", copy, stdin="print(root['a'])\n").stdout.strip() == "[1]"


def test_mcp_is_a_dhruva_subcommand(tmp_path: Path) -> None:
    helped = run("mcp", "--help")
    assert helped.returncode == 0 and "--allow-writes" in helped.stdout
    missing = run("mcp", str(tmp_path / "missing.dhruva"))
    if find_spec("mcp") is None:
        # Without the SDK the command says so first, in one line.
        assert "pip install 'dhruva[mcp]'" in one_line_error(missing)
    else:
        assert one_line_error(missing).startswith("dhruva: cannot open")


def test_backup_of_a_sqlite_database_uses_the_sqlite_backup(tmp_path: Path) -> None:
    from dhruva.connection import Connection
    from dhruva.sqlite_storage import SqliteStorage

    source = str(tmp_path / "s.sqlite")
    with Connection(SqliteStorage(source)) as connection:
        connection.get_root()["a"] = 1
        connection.commit()
    dest = str(tmp_path / "copy.sqlite")
    result = run("backup", source, dest)
    assert result.returncode == 0, result.stderr
    with Connection(SqliteStorage(dest, readonly=True)) as copy:
        assert copy.get_root()["a"] == 1


def test_dump_into_a_closed_pipe_stops_quietly(tmp_path: Path) -> None:
    path = str(tmp_path / "t.dhruva")
    # Far more output than a pipe holds, so the writer meets the closed pipe.
    script = (
        "from dhruva import PersistentDict\n"
        'root["a"] = [PersistentDict() for i in range(3000)]\nconnection.commit()\n'
    )
    made = run("-c", "--file", path, stdin=script)
    assert made.returncode == 0, made.stderr
    with subprocess.Popen(
        [*COMMAND, "dump", "--json", path], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as dump:
        assert dump.stdout is not None and dump.stderr is not None
        dump.stdout.readline()
        dump.stdout.close()
        status = dump.wait(timeout=60)
        errors = dump.stderr.read().decode()
    assert status == 0, errors
    assert "Broken pipe" not in errors and "Traceback" not in errors


@pytest.mark.req("CLI-031")
@pytest.mark.parametrize(
    ("flag", "advice"),
    [
        ("--logginglevel=20", "--loglevel"),
        ("--gcbytes", "--gcinterval"),
        ("--storage-class", "--file"),
        ("--repair", "repair=True"),
        ("--owner", "chown"),
        ("--group", "chgrp"),
        ("--umask", "umask"),
    ],
)
def test_durus_flags_are_refused_with_what_to_use(flag: str, advice: str) -> None:
    for mode in ("-s", "-c"):
        line = one_line_error(run(mode, flag, "x"))
        assert flag.partition("=")[0] in line and advice in line, line


@pytest.mark.req("CLI-031")
def test_durus_cache_size_and_startup_work_in_the_console(tmp_path: Path) -> None:
    startup = tmp_path / "start.py"
    startup.write_text("greeting = 'hello from startup'\n")
    path = str(tmp_path / "db.dhruva")
    result = run(
        "-c",
        "--file",
        path,
        "--cache_size",
        "7",
        "--startup",
        str(startup),
        stdin="print(greeting, connection.get_cache_size())\n",
    )
    assert result.returncode == 0, result.stderr
    assert "hello from startup 7" in result.stdout
    missing = one_line_error(run("-c", "--file", path, "--startup", str(tmp_path / "no.py")))
    assert "startup file" in missing


@pytest.mark.req("CLI-034")
def test_console_takes_a_class_map(tmp_path: Path) -> None:
    from test_mcp_server import _database_with_a_moved_class

    path = tmp_path / "moved.dhruva"
    _database_with_a_moved_class(path)
    script = "print('a is', connection.get(1).a)\n"
    result = run(
        "-c",
        "--file",
        str(path),
        "--map",
        "gone_module.Thing=dhruva.persistent.Persistent",
        stdin=script,
    )
    assert result.returncode == 0, result.stderr
    assert "a is 41" in result.stdout
    bad = one_line_error(run("-c", "--file", str(path), "--map", "nonsense"))
    assert "--map" in bad
