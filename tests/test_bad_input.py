"""Bad input everywhere: the ``dhruva`` commands, the storages, Connection, client and server.

dhruva's promise: bad input gets a clear, typed error that says what
happened; no committed data is lost; a server keeps serving its other
clients.  These tests feed every subcommand and the library API the inputs
a user gets wrong -- a missing, empty or foreign file, a truncated dhruva
file, a directory, an existing or unwritable destination, wrong argument
types, a peer that is not a dhruva server -- and check that the answer is
one line (commands) or a typed exception (library), that the input's bytes
are unchanged, and that nothing hangs.

The command tests call :func:`dhruva.tools.cli.main` in this process (a traceback
would fail the test as an exception); the server, which configures logging
and signals, runs as a child process.  Spec: server.md [CLI-010],
tools.md [TOOL-007], file-format.md [RCV-005], [RCV-006].
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import re
import shutil
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest
from _dhruva_command import COMMAND, WAIT_S
from _journal_storages import data_end

from dhruva import wire
from dhruva.client_storage import ClientStorage, ServerConnectionError
from dhruva.connection import Connection
from dhruva.error import CorruptionError, DhruvaError, ProtocolError
from dhruva.file_storage import FileStorage, FileStorage2
from dhruva.history import open_at
from dhruva.persistent_dict import PersistentDict
from dhruva.server.storage_server import StorageServer
from dhruva.sqlite_storage import SqliteStorage
from dhruva.storage import MemoryStorage, Storage
from dhruva.tools.cli import main
from dhruva.utils import ROOT_OID

ONE_LINE = re.compile(r"dhruva( [a-z-]+)?: \S")
"""An error line: ``dhruva: ...``, or ``dhruva pack: ...`` for the admin commands."""

DURUS_FIXTURE = Path(__file__).parent / "fixtures" / "durus" / "shelf.durus"


# --- inputs ------------------------------------------------------------------------


def _write_database(path: Path) -> None:
    storage = FileStorage(str(path))
    connection = Connection(storage)
    root = connection.get_root()
    for number in range(3):
        root[number] = PersistentDict(value="x" * 100)
        connection.commit()
    storage.close()
    for suffix in (".index", ".lock"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The bad inputs, made once; each test works on its own copy (see ``copy_of``)."""
    folder = tmp_path_factory.mktemp("inputs")
    good = folder / "good.dhruva"
    _write_database(good)
    data = good.read_bytes()
    made = {
        "missing": folder / "missing.dhruva",
        "empty": folder / "empty.dhruva",
        "text": folder / "text.dhruva",
        "png": folder / "png.dhruva",
        "sqlite-foreign": folder / "foreign.sqlite",
        "cut-mid-header": folder / "cut-mid-header.dhruva",
        "cut-mid-transaction": folder / "cut-mid-transaction.dhruva",
        "directory": folder / "folder.dhruva",
        "good": good,
    }
    made["empty"].write_bytes(b"")
    made["text"].write_text("name,price\nwidget,3\n")
    made["png"].write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    foreign = sqlite3.connect(made["sqlite-foreign"])
    foreign.execute("CREATE TABLE notes (body TEXT)")
    foreign.execute("INSERT INTO notes VALUES ('not dhruva')")
    foreign.commit()
    foreign.close()
    made["cut-mid-header"].write_bytes(data[:30])
    # The last commit cut 20 bytes short (the free space after it, RCV-060, goes too).
    made["cut-mid-transaction"].write_bytes(data[: data_end(str(good)) - 20])
    made["directory"].mkdir()
    made["good-sqlite"] = folder / "good.sqlite"
    storage = SqliteStorage(str(made["good-sqlite"]))
    storage.begin()
    storage.store(storage.new_oid(), b"root", b"")
    storage.end()
    storage.close()
    return made


@pytest.fixture
def copy_of(inputs: dict[str, Path], tmp_path: Path) -> Callable[[str], Path]:
    """Return a fresh copy of the named input in this test's directory (directories as is)."""

    def copy(name: str) -> Path:
        source = inputs[name]
        if source.is_dir():
            return source
        target = tmp_path / "in" / source.name
        target.parent.mkdir(exist_ok=True)
        if source.exists():
            shutil.copyfile(source, target)
        return target

    return copy


def digest(path: Path) -> str | None:
    """The SHA-256 of a file's bytes; None for a missing file or a directory."""
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def one_error_line(capsys: pytest.CaptureFixture[str], status: int) -> str:
    """Check a failed command's output: non-zero status, one ``dhruva...:`` line."""
    err = capsys.readouterr().err
    assert status != 0, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert ONE_LINE.match(lines[0]), lines[0]
    assert "Traceback" not in err
    return lines[0]


# --- every command on every bad input ------------------------------------------------

READ_COMMANDS: dict[str, Callable[[str, str], list[str]]] = {
    "verify": lambda src, dest: ["verify", "-q", src],
    "dump": lambda src, dest: ["dump", src],
    "stats": lambda src, dest: ["stats", src],
    "history": lambda src, dest: ["history", src],
    "convert": lambda src, dest: ["convert", "-q", src, dest],
    "convert-sqlite": lambda src, dest: ["convert", "-q", "--to", "sqlite", src, dest],
    "import-durus": lambda src, dest: ["import-durus", "-q", src, dest],
    "restore": lambda src, dest: ["restore", "-q", src, "--at", "1", "-o", dest],
    "backup": lambda src, dest: ["backup", "-q", src, dest],
    "console-readonly": lambda src, dest: ["-c", "--readonly", "--file", src],
    "mcp": lambda src, dest: ["mcp", src],
}
"""Commands that only read their input: it must stay byte for byte as it was."""

NOT_A_DATABASE = ["missing", "empty", "text", "png", "sqlite-foreign", "directory"]


NEEDS_MCP = pytest.mark.skipif(
    find_spec("mcp") is None,
    reason="dhruva mcp needs the MCP Python SDK first (pip install 'dhruva[mcp]')",
)
"""``dhruva mcp`` says that the SDK is missing before it looks at its input."""


def _read_cases() -> list[Any]:
    return [
        pytest.param(command, name, marks=NEEDS_MCP) if command == "mcp" else (command, name)
        for command, name in _read_case_names()
    ]


def _read_case_names() -> list[tuple[str, str]]:
    cases = [(command, name) for command in READ_COMMANDS for name in NOT_A_DATABASE]
    # A header cut short is a database whose creation was interrupted
    # [RCV-006]: a reader refuses it.  verify reports it as damage (status
    # 1, report on stdout) and dump and stats show what there is, by design
    # [TOOL-002]; every other reader must refuse it in one line.
    cases += [
        (command, "cut-mid-header")
        for command in READ_COMMANDS
        if command not in ("verify", "dump", "stats")
    ]
    # A dhruva file is not a Durus file.
    cases += [("import-durus", "good"), ("import-durus", "cut-mid-transaction")]
    return cases


@pytest.mark.req("CLI-010", "TOOL-007", "TOOL-001")
@pytest.mark.parametrize(("command", "name"), _read_cases())
def test_read_command_refuses_bad_input_in_one_line(
    command: str,
    name: str,
    copy_of: Callable[[str], Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    source = copy_of(name)
    before = digest(source)
    dest = tmp_path / "out" / "new.dhruva"
    dest.parent.mkdir()
    status = main(READ_COMMANDS[command](str(source), str(dest)))
    line = one_error_line(capsys, status)
    assert digest(source) == before
    assert source.exists() == (name != "missing")
    # Nothing half-written is left where the new database was to go.
    assert sorted(p.name for p in dest.parent.iterdir()) == []
    assert source.name in line


@pytest.mark.req("TOOL-001", "HIST-001")
@pytest.mark.parametrize("command", ["verify", "dump", "stats", "history", "convert", "restore",
                                     "backup", "console-readonly"])  # fmt: skip
def test_read_command_leaves_a_torn_tail_alone(
    command: str,
    copy_of: Callable[[str], Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A file cut mid-transaction is a database with a torn tail: read, not changed."""
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    source = copy_of("cut-mid-transaction")
    before = digest(source)
    status = main(READ_COMMANDS[command](str(source), str(tmp_path / "new.dhruva")))
    err = capsys.readouterr().err
    assert status == 0, err
    assert "Traceback" not in err
    assert digest(source) == before
    assert sorted(p.name for p in source.parent.iterdir()) == [source.name]


@pytest.mark.req("RCV-005", "RCV-006")
@pytest.mark.parametrize("name", ["empty", "cut-mid-header", "cut-mid-transaction"])
@pytest.mark.parametrize("command", ["pack", "console"])
def test_writable_open_sets_bytes_aside(
    command: str,
    name: str,
    copy_of: Callable[[str], Path],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A writable open may change a torn file, but keeps every byte it cuts in PATH.tr0."""
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    source = copy_of(name)
    original = source.read_bytes()
    args = ["pack", "-q", str(source)] if command == "pack" else ["-c", "--file", str(source)]
    assert main(args) == 0, capsys.readouterr().err
    aside = Path(f"{source}.tr0")
    if original:
        kept = source.read_bytes()
        # What stays plus what was set aside is the original file.
        if name == "cut-mid-transaction" and command == "console":
            assert kept + aside.read_bytes() == original
        else:
            assert original.endswith(aside.read_bytes())
    else:
        assert not aside.exists()


@pytest.mark.req("CLI-010", "TOOL-007")
@pytest.mark.parametrize("name", ["text", "png", "sqlite-foreign", "directory"])
@pytest.mark.parametrize("command", ["pack", "console"])
def test_writable_command_refuses_a_foreign_file(
    command: str,
    name: str,
    copy_of: Callable[[str], Path],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    source = copy_of(name)
    before = digest(source)
    args = ["pack", "-q", str(source)] if command == "pack" else ["-c", "--file", str(source)]
    line = one_error_line(capsys, main(args))
    assert source.name in line
    assert digest(source) == before


@pytest.mark.req("CLI-010")
@pytest.mark.parametrize("name", ["text", "png", "sqlite-foreign", "directory"])
def test_server_refuses_a_foreign_file(
    name: str, copy_of: Callable[[str], Path], tmp_path: Path
) -> None:
    source = copy_of(name)
    before = digest(source)
    result = subprocess.run(
        [*COMMAND, "-s", "--file", str(source), "--address", str(tmp_path / "s.sock")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dhruva: "), result.stderr
    assert digest(source) == before


# --- destinations ----------------------------------------------------------------------

WRITE_COMMANDS: dict[str, Callable[[str, str], list[str]]] = {
    "convert": lambda src, dest: ["convert", "-q", src, dest],
    "convert-sqlite": lambda src, dest: ["convert", "-q", "--to", "sqlite", src, dest],
    "import-durus": lambda src, dest: ["import-durus", "-q", str(DURUS_FIXTURE), dest],
    "restore": lambda src, dest: ["restore", "-q", src, "--at", "1", "-o", dest],
    "backup": lambda src, dest: ["backup", "-q", src, dest],
    "backup-from-sqlite": lambda src, dest: ["backup", "-q", src, dest],
    "convert-from-sqlite": lambda src, dest: ["convert", "-q", src, dest],
}


@pytest.mark.req("TOOL-040", "HIST-026", "HIST-045", "SQL-070")
@pytest.mark.parametrize("where", ["exists", "directory", "under-a-file", "no-such-folder"])
@pytest.mark.parametrize("command", list(WRITE_COMMANDS))
def test_bad_destination_in_one_line(
    command: str,
    where: str,
    copy_of: Callable[[str], Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    source = copy_of("good-sqlite" if command.endswith("-from-sqlite") else "good")
    before = digest(source)
    occupied = tmp_path / "occupied.txt"
    occupied.write_text("keep me\n")
    folder = tmp_path / "folder"
    folder.mkdir()
    dest = {
        "exists": occupied,
        "directory": folder,
        "under-a-file": occupied / "new.dhruva",
        "no-such-folder": tmp_path / "nowhere" / "new.dhruva",
    }[where]
    line = one_error_line(capsys, main(WRITE_COMMANDS[command](str(source), str(dest))))
    assert str(dest) in line or str(dest.parent) in line
    assert digest(source) == before
    assert occupied.read_text() == "keep me\n"
    assert list(folder.iterdir()) == []
    leftovers = {p.name for p in tmp_path.iterdir()} - {"in", "occupied.txt", "folder"}
    assert leftovers == set()


# --- configuration files and option values -----------------------------------------------


@pytest.mark.req("CLI-010", "CFG-003")
@pytest.mark.parametrize("name", ["missing", "png", "sqlite-foreign", "good", "directory", "text"])
@pytest.mark.parametrize("command", ["config", "console", "pack", "server"])
def test_bad_config_file_in_one_line(
    command: str,
    name: str,
    copy_of: Callable[[str], Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--config naming a binary file (a database, an image) is an error, not a traceback."""
    config = copy_of(name)
    before = digest(config)
    args = {
        "config": ["config"],
        "console": ["-c"],
        "pack": ["pack"],
        "server": ["-s", "--stop"],
    }[command]
    line = one_error_line(capsys, main([*args, "--config", str(config)]))
    assert "config file" in line and str(config) in line
    assert digest(config) == before


@pytest.mark.req("CLI-010")
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["-c", "--cache-size", "-1"], "cache size"),
        (["history", "{good}", "--last", "-1"], "--last"),
        pytest.param(
            ["mcp", "{good}", "--transport", "http", "--http-port", "99999"],
            "0 to 65535",
            marks=NEEDS_MCP,
        ),
        (["-c", "--readonly", "--file", "{empty-db}"], "no root object"),
    ],
)
def test_bad_option_values_in_one_line(
    args: list[str],
    expected: str,
    copy_of: Callable[[str], Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    good = copy_of("good")
    empty_db = tmp_path / "no-root.dhruva"
    FileStorage(str(empty_db)).close()
    values = {"{good}": str(good), "{empty-db}": str(empty_db)}
    argv = [values.get(arg, arg) for arg in args]
    if argv[0] == "-c" and "--file" not in argv:
        argv += ["--file", str(tmp_path / "new.dhruva")]
    before = digest(good)
    line = one_error_line(capsys, main(argv))
    assert expected in line
    assert digest(good) == before
    # Nothing was left open or locked: the database opens again.
    FileStorage(str(good)).close()


# --- the storages on bad files -------------------------------------------------------------

STORAGE_CLASSES = [FileStorage, FileStorage2, SqliteStorage]


def _open_expecting(
    cls: type[Storage], path: Path, readonly: bool, expected: type[BaseException]
) -> BaseException:
    with pytest.raises(expected) as caught:
        cls(str(path), readonly=readonly).close()
    return caught.value


def _foreign_file_cases() -> list[tuple[type[Storage], str, bool]]:
    cases = []
    for cls in STORAGE_CLASSES:
        for readonly in (False, True):
            for name in ("empty", "text", "png", "sqlite-foreign", "cut-mid-header", "good"):
                if name == "good" and cls is not SqliteStorage:
                    continue  # a dhruva data file is what the file storages read
                initialised = cls is not SqliteStorage or name == "empty"
                if name in ("empty", "cut-mid-header") and not readonly and initialised:
                    # A writable open initialises it: RCV-006 for a data file
                    # (tested above), SQL-010 for an empty SQLite file.
                    continue
                cases.append((cls, name, readonly))
    return cases


@pytest.mark.req("FMT-002", "SQL-040", "SQL-041", "SQL-043", "RCV-006")
@pytest.mark.parametrize(
    ("cls", "name", "readonly"),
    _foreign_file_cases(),
    ids=lambda v: v.__name__ if isinstance(v, type) else str(v),
)
def test_storage_refuses_a_foreign_file(
    cls: type[Storage], name: str, readonly: bool, copy_of: Callable[[str], Path]
) -> None:
    """A file that is not this back-end's database: FormatError/CorruptionError, unchanged."""
    path = copy_of(name)
    before = digest(path)
    error = _open_expecting(cls, path, readonly, CorruptionError)
    assert isinstance(error, DhruvaError)
    assert error.path == str(path)  # type: ignore[attr-defined]
    assert digest(path) == before
    # The failed open released everything: the same error again, not a lock.
    _open_expecting(cls, path, readonly, CorruptionError)


@pytest.mark.parametrize("readonly", [False, True], ids=["writable", "readonly"])
@pytest.mark.parametrize("cls", STORAGE_CLASSES, ids=lambda c: c.__name__)
def test_storage_on_a_directory_names_it(
    cls: type[Storage], readonly: bool, copy_of: Callable[[str], Path]
) -> None:
    folder = copy_of("directory")
    error = _open_expecting(cls, folder, readonly, IsADirectoryError)
    assert str(folder) in str(error)
    assert list(folder.iterdir()) == []


@pytest.mark.req("SQL-031")
@pytest.mark.parametrize("cls", STORAGE_CLASSES, ids=lambda c: c.__name__)
def test_readonly_storage_on_a_missing_file(cls: type[Storage], tmp_path: Path) -> None:
    path = tmp_path / "missing.dhruva"
    error = _open_expecting(cls, path, True, FileNotFoundError)
    assert str(path) in str(error)
    assert list(tmp_path.iterdir()) == []


# --- Connection arguments -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "expected", "message"),
    [
        ({"cache_size": "x"}, ValueError, "cache size"),
        ({"cache_size": -1}, ValueError, "cache size"),
        ({"cache_bytes": "x"}, ValueError, "cache bytes"),
        ({"serializer": "nope"}, ValueError, "unknown serializer 'nope'"),
        ({"serializer": 42}, ValueError, "unknown serializer 42"),
        ({"allowed_classes": 42}, TypeError, "allowed_classes must be a list"),
        ({"allowed_classes": [42]}, TypeError, "an allow-list entry is a class"),
        ({"class_map": {1: 2}}, TypeError, "class_map maps an old import path"),
        ({"class_map": {"old.Name": 42}}, TypeError, "class_map maps an old import path"),
        ({"class_map": 42}, TypeError, "class_map must be a dict"),
        ({"class_map": [("old.Name", "new.Name")]}, TypeError, "class_map must be a dict"),
        ({"class_map": {"old.Name": ""}}, ValueError, "is not an import path"),
    ],
)
def test_connection_arguments_of_the_wrong_type(
    options: dict[str, object],
    expected: type[Exception],
    message: str,
    copy_of: Callable[[str], Path],
) -> None:
    """A wrong argument: TypeError/ValueError saying which, and no storage left locked."""
    path = copy_of("good")
    before = digest(path)
    with pytest.raises(expected, match=re.escape(message)):
        Connection(str(path), **options)  # type: ignore[arg-type]
    FileStorage(str(path)).close()  # not locked
    storage = FileStorage(str(path))
    with pytest.raises(expected, match=re.escape(message)):
        Connection(storage, **options)  # type: ignore[arg-type]
    # The caller's storage is untouched and still usable.
    assert Connection(storage).get_root()[0]["value"] == "x" * 100
    storage.close()
    Path(f"{path}.index").unlink()
    assert digest(path) == before


# --- Storage.store ----------------------------------------------------------------------


@pytest.mark.req("SAPI-004")
@pytest.mark.parametrize(
    ("oid", "data", "refs", "expected"),
    [
        (b"\0" * 7, b"x", b"", ValueError),
        (b"\0" * 9, b"x", b"", ValueError),
        ("0" * 8, b"x", b"", ValueError),
        (0, b"x", b"", ValueError),
        (ROOT_OID, "text", b"", TypeError),
        (ROOT_OID, None, b"", TypeError),
        (ROOT_OID, 5, b"", TypeError),
        (ROOT_OID, b"x", b"\0" * 7, ValueError),
        (ROOT_OID, b"x", [ROOT_OID], ValueError),
    ],
)
@pytest.mark.parametrize("cls", STORAGE_CLASSES, ids=lambda c: c.__name__)
def test_rejected_store_keeps_the_transaction(
    cls: type[Storage], oid: object, data: object, refs: object, expected: type[Exception],
    tmp_path: Path,
) -> None:  # fmt: skip
    """A store of the wrong types is refused at once and does not spoil the transaction."""
    path = str(tmp_path / "db")
    storage = cls(path)
    first = storage.new_oid()
    storage.begin()
    storage.store(first, b"kept", b"")
    with pytest.raises(expected):
        storage.store(oid, data, refs)  # type: ignore[arg-type]
    storage.store(first, b"kept too", b"")
    storage.end()
    storage.close()
    reopened = cls(path, readonly=True)
    assert reopened.load(first).data == b"kept too"
    assert list(reopened.iter_oids()) == [first]
    reopened.close()


# --- ClientStorage to something that is not a dhruva server --------------------------------


class FakePeer:
    """A TCP listener on 127.0.0.1 that treats each connection with ``behave``.

    ``release`` lets behaviours that hold the connection open return; the
    fixture sets it and closes everything at the end of the test.
    """

    def __init__(self, behave: Callable[[socket.socket, threading.Event], None]) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = self.listener.getsockname()[:2]
        self.release = threading.Event()
        self.connections: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, args=(behave,), daemon=True)
        self.thread.start()

    def _serve(self, behave: Callable[[socket.socket, threading.Event], None]) -> None:
        try:
            connection, _ = self.listener.accept()
        except OSError:
            return
        self.connections.append(connection)
        try:
            behave(connection, self.release)
        except OSError:
            pass

    def close(self) -> None:
        self.release.set()
        if self.thread.is_alive() and not self.connections:
            # accept() does not return when the listener is closed: connect.
            with contextlib.suppress(OSError):
                socket.create_connection(self.address, timeout=5).close()
        self.thread.join(timeout=30)
        self.listener.close()
        for connection in self.connections:
            connection.close()


@pytest.fixture
def fake_peer() -> Iterator[Callable[[Callable[[socket.socket, threading.Event], None]], FakePeer]]:
    peers: list[FakePeer] = []

    def start(behave: Callable[[socket.socket, threading.Event], None]) -> FakePeer:
        peers.append(FakePeer(behave))
        return peers[-1]

    yield start
    for peer in peers:
        peer.close()


def _greets_with(data: bytes, read_first: bool) -> Callable[[socket.socket, threading.Event], None]:
    def behave(connection: socket.socket, release: threading.Event) -> None:
        if read_first:
            connection.recv(4096)
        connection.sendall(data)
        release.wait()

    return behave


@pytest.mark.req("WIRE-023")
@pytest.mark.parametrize(
    ("data", "read_first"),
    [
        pytest.param(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n", True, id="http"),
        pytest.param(b"SSH-2.0-OpenSSH_9.6\r\n", False, id="ssh"),
        pytest.param(b"220 mail.example.com ESMTP\r\n", False, id="smtp"),
        pytest.param(bytes(range(256)) * 4, False, id="garbage"),
        pytest.param(b"\xff\xff\xff\xff" + bytes(16), True, id="huge-length"),
        pytest.param(b"\x00\x10\x00\x00\x81" + bytes(16), True, id="long-hello-ok"),
        pytest.param(b"\x00\x00\x00\x05\x7e\x01\x02\x03\x04", True, id="unknown-message"),
        pytest.param(b"\x00\x00\x00\x00", True, id="zero-length"),
    ],
)
def test_client_to_a_peer_that_is_not_a_dhruva_server(
    data: bytes,
    read_first: bool,
    fake_peer: Callable[[Callable[[socket.socket, threading.Event], None]], FakePeer],
) -> None:
    """ProtocolError naming the address and what came back, without waiting for more."""
    peer = fake_peer(_greets_with(data, read_first))
    with pytest.raises(ProtocolError) as caught:
        ClientStorage(peer.address)
    message = str(caught.value)
    assert f"127.0.0.1:{peer.address[1]}" in message
    assert "not a dhruva storage server" in message
    assert repr(data[:16]) in message


@pytest.mark.req("SRV-071")
def test_client_to_a_closed_port() -> None:
    # A bound socket that does not listen: connections to its port are refused.
    with socket.socket() as reserved:
        reserved.bind(("127.0.0.1", 0))
        address = reserved.getsockname()[:2]
        with pytest.raises(ServerConnectionError, match="cannot connect"):
            ClientStorage(address)


@pytest.mark.parametrize(
    "behave",
    [
        lambda connection, release: None,  # closes at once
        lambda connection, release: (connection.recv(64), connection.sendall(b"\0\0\0\x20\x81")),
    ],
    ids=["closes-at-once", "half-a-frame-then-close"],
)
def test_client_to_a_peer_that_hangs_up(
    behave: Callable[[socket.socket, threading.Event], None],
    fake_peer: Callable[[Callable[[socket.socket, threading.Event], None]], FakePeer],
) -> None:
    def hang_up(connection: socket.socket, release: threading.Event) -> None:
        behave(connection, release)
        connection.close()

    peer = fake_peer(hang_up)
    with pytest.raises(ServerConnectionError, match=f"127.0.0.1:{peer.address[1]}"):
        ClientStorage(peer.address)


def test_client_to_a_silent_peer_gives_up(
    fake_peer: Callable[[Callable[[socket.socket, threading.Event], None]], FakePeer],
) -> None:
    """A peer that accepts and never answers: the client's timeout ends the wait."""
    peer = fake_peer(lambda connection, release: release.wait())
    with pytest.raises(ServerConnectionError, match="timed out"):
        ClientStorage(peer.address, timeout_s=0.2)


# --- the server keeps serving ----------------------------------------------------------------
#
# tests/test_server.py and tests/test_security.py cover malformed frames,
# unknown messages, oversized frames, handshake failures and timeouts,
# clients vanishing mid-frame and pipelining clients.  Here: other protocols
# spoken at the server, half frames held open, many idle connections, and
# running out of file descriptors.


def _raw_unix(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(address)  # blocking: a full backlog waits instead of failing
    sock.settimeout(30)
    return sock


def _still_serving(address: str, client: ClientStorage, oid: bytes, value: bytes) -> None:
    """``client`` commits ``value``; a client that connects now reads it."""
    client.begin()
    client.store(oid, value, b"")
    client.end()
    newcomer = ClientStorage(address, timeout_s=30)
    assert newcomer.load(oid).data == value
    newcomer.close()


def _read_until_closed(sock: socket.socket) -> bytes:
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


@pytest.mark.req("SRV-040", "WIRE-033")
@pytest.mark.parametrize(
    "first_bytes",
    [
        pytest.param(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n", id="http-get"),
        pytest.param(b"POST /api HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", id="http-post"),
        pytest.param(b"SSH-2.0-OpenSSH_9.6\r\n", id="ssh"),
        pytest.param(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(32), id="tls-hello"),
        pytest.param(b"\xff" * 100_000, id="0xff-flood"),
    ],
)
def test_server_answers_another_protocol_and_keeps_serving(
    first_bytes: bytes, serve: Callable[..., StorageServer]
) -> None:
    """Another protocol's first bytes: one ERROR frame, the connection closed, others served."""
    server = serve()
    address = str(server.address)
    good = ClientStorage(address)
    oid = good.new_oid()
    _still_serving(address, good, oid, b"before")
    stranger = _raw_unix(address)
    with contextlib.suppress(OSError):  # the server may close before we finish sending
        stranger.sendall(first_bytes)
    answer = _read_until_closed(stranger)
    stranger.close()
    payloads = wire.FrameDecoder().feed(answer)
    assert len(payloads) == 1
    error = wire.decode_message(payloads[0])
    assert isinstance(error, wire.Error)
    assert error.code in (wire.ErrorCode.FRAME_TOO_LARGE, wire.ErrorCode.HANDSHAKE_REQUIRED)
    _still_serving(address, good, oid, b"after")
    good.close()


@pytest.mark.req("SRV-041", "SRV-081")
def test_half_frames_held_open_or_dropped(serve: Callable[..., StorageServer]) -> None:
    """Clients that stop mid-frame, before or after HELLO, stall nobody."""
    server = serve()
    address = str(server.address)
    good = ClientStorage(address)
    oid = good.new_oid()
    hello = wire.Hello().encode()
    held = []
    for cut in (1, 3, 4, 5, len(hello) - 1):
        dropped = _raw_unix(address)
        dropped.sendall(hello[:cut])
        dropped.close()
        kept = _raw_unix(address)
        kept.sendall(hello[:cut])
        held.append(kept)
    greeted = _raw_unix(address)
    greeted.sendall(hello)
    commit = wire.Load(oid).encode()
    greeted.sendall(commit[:-1])  # a ready client's request, cut one byte short
    _still_serving(address, good, oid, b"while half frames wait")
    for sock in [*held, greeted]:
        sock.close()
    _still_serving(address, good, oid, b"after they left")
    good.close()


def test_many_idle_connections(serve: Callable[..., StorageServer]) -> None:
    """Hundreds of silent or non-reading connections: the others are served as before."""
    server = serve()
    address = str(server.address)
    good = ClientStorage(address)
    oid = good.new_oid()
    silent = [_raw_unix(address) for _ in range(300)]
    greeted = []
    for _ in range(100):
        sock = _raw_unix(address)
        sock.sendall(wire.Hello().encode())
        # Requests whose answers it never reads.
        sock.sendall(wire.Empty(wire.MessageType.SIZE).encode() * 20)
        greeted.append(sock)
    _still_serving(address, good, oid, b"among idle connections")
    for sock in silent + greeted:
        sock.close()
    _still_serving(address, good, oid, b"after they left")
    good.close()


_LIMITED_SERVER = """\
import resource, runpy, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), int(sys.argv[1])))
sys.argv = ["dhruva", *sys.argv[2:]]
runpy.run_module("dhruva", run_name="__main__")
"""


@pytest.mark.req("SRV-086")
def test_server_out_of_file_descriptors(tmp_path: Path) -> None:
    """Out of descriptors: connected clients are served, the log is not flooded, accept resumes."""
    address = str(tmp_path / "s.sock")
    log = tmp_path / "server.log"
    server = subprocess.Popen(
        [*COMMAND[:1], "-c", _LIMITED_SERVER, "48", "-s", "--file", str(tmp_path / "db"),
         "--address", address, "--logfile", str(log)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    idle: list[socket.socket] = []

    def wait_for_log(text: str) -> None:
        deadline = time.monotonic() + WAIT_S
        while text not in (log.read_text() if log.exists() else ""):
            assert server.poll() is None and time.monotonic() < deadline, f"no {text!r} logged"
            time.sleep(0.01)

    try:
        wait_for_log("listening on")
        good = ClientStorage(address, timeout_s=30)
        oid = good.new_oid()
        # More connections than descriptors left: the rest wait in the backlog.
        idle = [_raw_unix(address) for _ in range(80)]
        wait_for_log("accept failed")
        for number in range(50):
            good.begin()
            good.store(oid, b"%d" % number, b"")
            good.end()
            assert good.sync() == []
        failures = log.read_text().count("accept failed")
        # One warning per pause; a loop that retried at once wrote one per pass.
        assert failures <= 5, failures
        for sock in idle:
            sock.close()
        idle = []
        newcomer = ClientStorage(address, timeout_s=30)
        assert newcomer.load(oid).data == b"49"
        newcomer.close()
        good.close()
    finally:
        for sock in idle:
            sock.close()
        server.kill()
        server.wait()


@pytest.mark.req("CLI-010")
def test_side_file_in_the_way_is_named(
    copy_of: Callable[[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """A directory where PATH.index belongs: the error names PATH.index, not PATH."""
    source = copy_of("good")
    before = digest(source)
    index = Path(f"{source}.index")
    index.mkdir()
    line = one_error_line(capsys, main(["-c", "--file", str(source)]))
    assert f"{index}: " in line
    assert digest(source) == before


# --- load with an oid that is not one ----------------------------------------------------

BAD_OIDS = [b"short", b"\0" * 9, None, 123, "abcdefgh"]


def _memory_with_root() -> MemoryStorage:
    memory = MemoryStorage()
    memory.begin()
    memory.store(ROOT_OID, b"root", b"")
    memory.end()
    return memory


def _loaders(tmp_path: Path, serve: Callable[..., StorageServer]) -> Iterator[Storage]:
    """One storage of each kind holding the root record, each closed by the caller."""
    for cls in STORAGE_CLASSES:
        storage = cls(str(tmp_path / cls.__name__))
        storage.begin()
        storage.store(ROOT_OID, b"root", b"")
        storage.end()
        yield storage
    yield _memory_with_root()
    # The serve fixture closes the served storage.
    yield ClientStorage(str(serve(_memory_with_root()).address))
    yield open_at(str(tmp_path / "FileStorage"), 1)


@pytest.mark.req("SAPI-006")
def test_load_refuses_a_malformed_oid(tmp_path: Path, serve: Callable[..., StorageServer]) -> None:
    """ValueError, never another oid's record, and the storage keeps working."""
    for storage in _loaders(tmp_path, serve):
        for oid in BAD_OIDS:
            with pytest.raises(ValueError, match="an oid is 8 bytes"):
                storage.load(oid)  # type: ignore[arg-type]
            with pytest.raises(ValueError, match="an oid is 8 bytes"):
                list(storage.bulk_load([ROOT_OID, oid]))  # type: ignore[list-item]
        with pytest.raises((ValueError, TypeError)):  # unhashable: TypeError is allowed
            storage.load(bytearray(ROOT_OID))  # type: ignore[arg-type]
        assert storage.load(ROOT_OID).data == b"root", storage
        assert [r.data for r in storage.bulk_load([ROOT_OID])] == [b"root"]
        storage.close()
