"""The storage server and ClientStorage (spec: server.md, wire-protocol.md)."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from _running_server import Running

from dhruva import wire
from dhruva.client_storage import ClientStorage, ServerConnectionError
from dhruva.connection import Connection
from dhruva.error import (
    DhruvaError,
    DhruvaKeyError,
    ReadConflictError,
    ReadOnlyError,
    UnallocatedOidError,
    WriteConflictError,
)
from dhruva.file_storage import FileStorage
from dhruva.server.storage_server import StorageServer
from dhruva.storage import MemoryStorage, Record, Storage
from dhruva.utils import ROOT_OID
from dhruva.utils import int8_to_str as p64

T = wire.MessageType
E = wire.ErrorCode


class CountingStorage(MemoryStorage):
    """A MemoryStorage that counts transactions and packs, and can fail end()."""

    def __init__(self) -> None:
        super().__init__()
        self.ends = 0
        self.packs = 0
        self.fail_end = False
        self.stored: list[bytes] = []

    def store(self, oid: bytes, data: bytes, refs: bytes = b"") -> None:
        self.stored.append(bytes(data))
        super().store(oid, data, refs)

    def end(self) -> None:
        if self.fail_end:
            raise DhruvaError("disk full (simulated)")
        self.ends += 1
        super().end()

    def pack(self) -> None:
        self.packs += 1
        super().pack()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Running]]:
    started: list[Running] = []

    def start(storage: Storage | None = None, run: bool = True, **options: Any) -> Running:
        path = str(tmp_path / f"s{len(started)}.sock")
        running = Running(storage if storage is not None else MemoryStorage(), path, **options)
        started.append(running)
        return running.start() if run else running

    yield start
    for running in started:
        running.stop()


class Raw:
    """A client speaking raw frames."""

    def __init__(self, address: Any, greet: bool = True) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(address)
        self.decoder = wire.FrameDecoder()
        self.payloads: list[bytes] = []
        if greet:
            self.send(wire.Hello().encode())
            assert isinstance(self.receive(), wire.HelloOk)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def receive(self) -> wire.Message | None:
        while not self.payloads:
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                return None
            if not data:
                return None
            self.payloads.extend(self.decoder.feed(data))
        return wire.decode_message(self.payloads.pop(0))

    def ask(self, message: wire.Message) -> wire.Message | None:
        self.send(message.encode())
        return self.receive()

    def close(self) -> None:
        self.sock.close()


def error_code(message: wire.Message | None) -> int:
    assert isinstance(message, wire.Error), message
    return message.code


def commit(storage: Storage, records: dict[bytes, bytes]) -> None:
    storage.begin()
    for oid, data in records.items():
        storage.store(oid, data, b"")
    storage.end()


# --- basics ------------------------------------------------------------------------


@pytest.mark.req("SRV-001", "WIRE-040", "WIRE-051")
def test_records_pass_through_opaque(serve: Callable[..., Running]) -> None:
    running = serve()
    client = ClientStorage(running.address)
    a, b = client.new_oid(), client.new_oid()
    assert a != b
    garbage = bytes(range(256)) * 3  # not a pickle: the server must not care
    client.begin()
    client.store(a, garbage, b)
    client.store(b, b"", b"")
    client.end()
    assert client.load(a) == Record(a, garbage, b)
    assert running.storage.load(a).data == garbage
    assert list(client.bulk_load([b, a])) == [Record(b, b"", b""), Record(a, garbage, b)]
    assert client.get_size() == 2
    assert sorted(client.iter_oids()) == sorted([a, b])
    client.close()


@pytest.mark.req("WIRE-050")
def test_load_missing_raises_key_error(serve: Callable[..., Running]) -> None:
    client = ClientStorage(serve().address)
    with pytest.raises(DhruvaKeyError):
        client.load(p64(99))
    with pytest.raises(KeyError):
        list(client.bulk_load([p64(98)]))
    client.close()


@pytest.mark.req("WIRE-070", "WIRE-071", "SRV-070")
def test_large_transaction_is_staged(serve: Callable[..., Running], monkeypatch: Any) -> None:
    running = serve(CountingStorage())
    client = ClientStorage(running.address)
    oids = [client.new_oid() for _ in range(20)]
    real_split = wire.split_commit
    monkeypatch.setattr(wire, "split_commit", lambda records: real_split(records, 300))
    commit(client, {oid: bytes([i]) * 100 for i, oid in enumerate(oids)})
    assert running.storage.ends == 1
    assert [client.load(oid).data for oid in oids] == [bytes([i]) * 100 for i in range(20)]
    client.close()


@pytest.mark.req("WIRE-071", "SRV-041")
def test_staged_records_dropped_when_client_vanishes(serve: Callable[..., Running]) -> None:
    running = serve()
    raw = Raw(running.address)
    oids = raw.ask(wire.NewOids(1))
    assert isinstance(oids, wire.Oids)
    raw.send(wire.Stage([Record(oids.oids[0], b"staged", b"")]).encode())
    raw.send(wire.Commit([]).encode()[:3])  # half a frame, then gone
    raw.close()
    client = ClientStorage(running.address)
    with pytest.raises(DhruvaKeyError):
        client.load(oids.oids[0])
    assert client.get_size() == 0
    client.close()


@pytest.mark.req("SAPI-006")
def test_a_load_that_fails_says_why_and_the_next_one_works(serve: Callable[..., Running]) -> None:
    running = serve()
    client = ClientStorage(running.address)
    (oid,) = [client.new_oid()]
    commit(client, {oid: b"here"})
    with pytest.raises(DhruvaKeyError):
        client.load(p64(999))
    for bad in (b"short", "x" * 8, bytearray(8), None):
        with pytest.raises(ValueError, match="an oid is 8 bytes"):
            client.load(bad)  # type: ignore[arg-type]
    assert client.load(oid).data == b"here"  # the connection is still whole
    client.close()
    with pytest.raises(DhruvaError, match="is closed") as closed:
        client.load(oid)
    assert not isinstance(closed.value, ServerConnectionError)
    other = ClientStorage(running.address)
    running.stop()
    for _ in range(2):  # the loss, then the same error for every later request
        with pytest.raises(ServerConnectionError):
            other.load(oid)


# --- consistency -------------------------------------------------------------------


@pytest.mark.req("SRV-020", "SRV-023", "WIRE-060", "WIRE-072")
def test_write_conflict_then_sync_then_retry(serve: Callable[..., Running]) -> None:
    running = serve()
    a = ClientStorage(running.address)
    b = ClientStorage(running.address)
    oid = a.new_oid()
    commit(a, {oid: b"a1"})
    assert b.sync() == [oid]
    assert b.sync() == []
    commit(a, {oid: b"a2"})
    with pytest.raises(WriteConflictError) as info:
        commit(b, {oid: b"b1"})
    assert info.value.oids == [oid]
    assert running.storage.load(oid).data == b"a2"
    assert b.sync() == [oid]
    commit(b, {oid: b"b1"})
    # a's first sync is answered from its last COMMITTED frame (the sync a
    # Connection makes right after commit); the next one asks the server.
    assert a.sync() == []
    assert a.sync() == [oid]
    assert a.load(oid).data == b"b1"
    a.close()
    b.close()


@pytest.mark.req("WIRE-072")
def test_commit_answer_synchronizes(serve: Callable[..., Running]) -> None:
    running = serve()
    a = ClientStorage(running.address)
    b = ClientStorage(running.address)
    x, y = a.new_oid(), a.new_oid()
    commit(a, {x: b"x"})
    commit(b, {})  # an empty commit syncs: b learns of x
    assert b.sync() == [x]  # answered from the COMMITTED frame, no round trip
    commit(a, {y: b"y"})
    assert b.sync() == [y]
    a.close()
    b.close()


@pytest.mark.req("SRV-107")
def test_read_conflict(serve: Callable[..., Running]) -> None:
    # A client without the snapshots feature keeps the Durus model.
    running = serve()
    a = ClientStorage(running.address)
    b = ClientStorage(running.address, snapshots=False)
    oid = a.new_oid()
    commit(a, {oid: b"v1"})
    b.sync()
    assert b.load(oid).data == b"v1"
    commit(a, {oid: b"v2"})
    with pytest.raises(ReadConflictError):
        b.load(oid)
    with pytest.raises(ReadConflictError):
        list(b.bulk_load([oid]))
    b.sync()
    assert b.load(oid).data == b"v2"
    a.close()
    b.close()


@pytest.mark.req("SRV-022", "SAPI-013")
def test_unallocated_oid_refused(serve: Callable[..., Running]) -> None:
    running = serve()
    client = ClientStorage(running.address)
    with pytest.raises(UnallocatedOidError):
        commit(client, {p64(12345): b"invented"})
    # The root oid and oids given to this client are accepted.
    mine = client.new_oid()
    commit(client, {ROOT_OID: b"root", mine: b"mine"})
    assert client.load(mine).data == b"mine"
    client.close()


def test_connection_through_the_server(serve: Callable[..., Running]) -> None:
    running = serve()
    c1 = Connection(ClientStorage(running.address))
    c2 = Connection(ClientStorage(running.address))
    c1.get_root()["n"] = 1
    c1.commit()
    c2.abort()
    assert c2.get_root()["n"] == 1
    c2.get_root()["n"] = 2
    c2.commit()
    c1.get_root()["n"] = 3
    with pytest.raises(WriteConflictError):
        c1.commit()
    c1.abort()
    assert c1.get_root()["n"] == 2
    c1.close()
    c2.close()


# --- group commit and durability ----------------------------------------------------


@pytest.mark.req("SRV-030")
def test_ready_commits_share_one_storage_transaction(serve: Callable[..., Running]) -> None:
    storage = CountingStorage()
    commit(storage, {p64(1): b"one", p64(2): b"two"})
    running = serve(storage, run=False)
    # The clients connect and send everything before the loop first runs, so
    # their commits are ready in the same pass.
    raws = [Raw(running.address, greet=False) for _ in range(3)]
    for i, raw in enumerate(raws):
        oid = p64([1, 2, 1][i])  # the third clashes with the first
        raw.send(wire.Hello().encode() + wire.Commit([Record(oid, b"c%d" % i, b"")]).encode())
    running.start()
    answers = []
    for raw in raws:
        assert isinstance(raw.receive(), wire.HelloOk)
        answers.append(raw.receive())
    assert running.storage.ends == 2  # the seeding commit, then one for the group
    assert isinstance(answers[0], wire.Committed) and isinstance(answers[1], wire.Committed)
    assert error_code(answers[2]) == E.WRITE_CONFLICT
    assert running.storage.load(p64(1)).data == b"c0"
    assert running.storage.load(p64(2)).data == b"c1"
    for raw in raws:
        raw.close()


@pytest.mark.req("SRV-031")
def test_failed_end_answers_storage_failure(serve: Callable[..., Running]) -> None:
    running = serve(CountingStorage())
    client = ClientStorage(running.address)
    oid = client.new_oid()
    running.storage.fail_end = True
    with pytest.raises(DhruvaError, match="disk full"):
        commit(client, {oid: b"lost"})
    running.storage.fail_end = False
    with pytest.raises(DhruvaKeyError):
        client.load(oid)
    commit(client, {oid: b"kept"})
    assert client.load(oid).data == b"kept"
    client.close()


@pytest.mark.req("SRV-031")
def test_acknowledged_commit_is_in_the_file(serve: Callable[..., Running], tmp_path: Path) -> None:
    path = str(tmp_path / "db.dhruva")
    storage = FileStorage(path)
    running = serve(storage)
    client = ClientStorage(running.address)
    oid = client.new_oid()
    commit(client, {oid: b"durable"})
    # The bytes are in the file (not in a buffer of the server) once the commit
    # is acknowledged: a copy taken now, as a crash would leave it, holds it.
    copy = tmp_path / "copy.dhruva"
    copy.write_bytes(Path(path).read_bytes())
    reader = FileStorage(str(copy), readonly=True)
    try:
        assert reader.load(oid).data == b"durable"
    finally:
        reader.close()
    client.close()


# --- robustness --------------------------------------------------------------------


@pytest.mark.req("SRV-040", "WIRE-091", "WIRE-013")
@pytest.mark.parametrize(
    ("data", "code"),
    [
        (wire.frame(b"\x7e"), E.UNKNOWN_MESSAGE),
        (wire.frame(b"\x03\x00"), E.MALFORMED),
        (wire.FRAME_HEADER.pack(wire.MAX_FRAME_SIZE + 1), E.FRAME_TOO_LARGE),
        (wire.Oids([]).encode(), E.UNKNOWN_MESSAGE),
        (wire.Hello().encode(), E.UNKNOWN_MESSAGE),
    ],
)
def test_bad_client_is_closed_alone(serve: Callable[..., Running], data: bytes, code: int) -> None:
    running = serve()
    good = ClientStorage(running.address)
    oid = good.new_oid()
    commit(good, {oid: b"safe"})
    bad = Raw(running.address)
    bad.send(data)
    assert error_code(bad.receive()) == code
    assert bad.receive() is None  # closed
    bad.close()
    assert good.load(oid).data == b"safe"
    commit(good, {oid: b"still serving"})
    good.close()


@pytest.mark.req("WIRE-020", "WIRE-021", "WIRE-022")
def test_handshake_failures(serve: Callable[..., Running]) -> None:
    running = serve()
    for first, code in [
        (wire.Hello(major=9).encode(), E.VERSION_MISMATCH),
        (wire.Hello(magic=b"ZEO!").encode(), E.MALFORMED),
        (wire.Empty(T.SYNC).encode(), E.HANDSHAKE_REQUIRED),
    ]:
        raw = Raw(running.address, greet=False)
        raw.send(first)
        assert error_code(raw.receive()) == code
        assert raw.receive() is None
        raw.close()


@pytest.mark.req("SRV-041")
def test_clients_vanishing_mid_frame(serve: Callable[..., Running]) -> None:
    running = serve()
    for cut in (1, 4, 7):
        raw = Raw(running.address)
        raw.send(wire.Load(p64(0)).encode()[:cut])
        raw.close()
    client = ClientStorage(running.address)
    assert client.sync() == []
    client.close()


@pytest.mark.req("WIRE-080", "WIRE-090")
def test_quit_closes_without_answer(serve: Callable[..., Running]) -> None:
    raw = Raw(serve().address)
    raw.send(wire.Empty(T.QUIT).encode())
    assert raw.receive() is None
    raw.close()


@pytest.mark.req("SRV-071")
def test_lost_connection_is_a_clear_error(serve: Callable[..., Running]) -> None:
    running = serve()
    client = ClientStorage(running.address)
    running.stop()
    with pytest.raises(ServerConnectionError, match="lost connection to the storage server at"):
        client.load(p64(0))
    with pytest.raises(ServerConnectionError):
        client.sync()
    client.close()
    with pytest.raises(ServerConnectionError, match="cannot connect"):
        ClientStorage(running.address)


@pytest.mark.req("WIRE-081")
def test_stop_request_stops_the_server(serve: Callable[..., Running]) -> None:
    running = serve()
    other = ClientStorage(running.address)
    ClientStorage(running.address).stop_server()
    running.thread.join()
    assert not Path(running.address).exists()
    with pytest.raises(ServerConnectionError):
        other.sync()


# --- read-only, pack, capabilities -------------------------------------------------


@pytest.mark.req("SRV-060", "SRV-061")
def test_readonly_server(serve: Callable[..., Running]) -> None:
    storage = MemoryStorage()
    commit(storage, {ROOT_OID: b"root"})
    running = serve(storage, readonly=True)
    client = ClientStorage(running.address)
    assert "pack" not in client.capabilities
    assert client.load(ROOT_OID).data == b"root"
    with pytest.raises(ReadOnlyError):
        client.new_oid()
    with pytest.raises(ReadOnlyError):
        commit(client, {ROOT_OID: b"changed"})
    with pytest.raises(ReadOnlyError):
        client.pack()
    commit(client, {})  # an empty commit is only a sync
    client.close()


@pytest.mark.req("SRV-061")
def test_capabilities_hide_raw_file(serve: Callable[..., Running], tmp_path: Path) -> None:
    running = serve(FileStorage(str(tmp_path / "f.dhruva")))
    client = ClientStorage(running.address)
    assert "durable" in client.capabilities
    assert "raw-file" not in client.capabilities
    client.close()


def test_pack_through_server(serve: Callable[..., Running]) -> None:
    running = serve(CountingStorage())
    client = ClientStorage(running.address)
    a, b = client.new_oid(), client.new_oid()
    client.begin()
    client.store(ROOT_OID, b"root", a)
    client.store(a, b"a", b"")
    client.store(b, b"garbage", b"")
    client.end()
    client.pack()
    assert running.storage.packs == 1
    with pytest.raises(DhruvaKeyError):
        client.load(b)
    # An oid stored through this server may be stored again after pack.
    commit(client, {b: b"back"})
    client.close()


@pytest.mark.req("SRV-050")
def test_gcinterval_packs_periodically(serve: Callable[..., Running]) -> None:
    running = serve(CountingStorage(), gcinterval=0.01)
    deadline = time.monotonic() + 30
    while running.storage.packs < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert running.storage.packs >= 2


def test_address_in_use(serve: Callable[..., Running]) -> None:
    running = serve()
    with pytest.raises(OSError):
        StorageServer(MemoryStorage(), running.address)


def test_tcp_port_zero() -> None:
    running = Running(MemoryStorage(), ("127.0.0.1", 0)).start()
    try:
        host, port = running.address
        assert host == "127.0.0.1" and port > 0
        client = ClientStorage((host, port))
        assert client.sync() == []
        client.close()
    finally:
        running.stop()


def test_many_clients(serve: Callable[..., Running]) -> None:
    running = serve()
    clients = [ClientStorage(running.address) for _ in range(20)]
    oid = clients[0].new_oid()
    commit(clients[0], {oid: b"x"})
    for client in clients[1:]:
        assert client.sync() == [oid]
        assert client.load(oid).data == b"x"
    for client in clients:
        client.close()


@pytest.mark.req("SRV-040", "SRV-041", "WIRE-025")
def test_a_commit_followed_by_garbage_in_one_write_is_not_answered(
    serve: Callable[..., Running],
) -> None:
    running = serve(check_oids=False)
    raw = Raw(running.address)
    commit = wire.Commit([Record(p64(5), b"lost", b"")]).encode()
    # A zero-length frame is refused by the framing, before any request runs.
    raw.send(commit + b"\0\0\0\0")
    error = raw.receive()
    assert isinstance(error, wire.Error) and error.code == wire.ErrorCode.MALFORMED
    # The session closed before its commit's group ran: it never hears
    # COMMITTED, the commit is dropped with the session, and the server goes on.
    assert raw.sock.recv(1) == b""
    raw.close()
    other = ClientStorage(running.address)
    with pytest.raises(DhruvaKeyError):
        other.load(p64(5))
    other.close()
