"""Snapshot reads and serializable commits through the storage server.

Spec: ``spec/wire-protocol.md`` ("Snapshots") and ``spec/server.md``
("Snapshots"), on top of ``spec/storage-api.md`` ("Snapshots").
"""

from __future__ import annotations

import random
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from _running_server import Running

from dhruva import wire
from dhruva.client_storage import ClientStorage
from dhruva.connection import Connection
from dhruva.error import (
    DhruvaError,
    DhruvaKeyError,
    ReadConflictError,
    SnapshotTooOldError,
    WriteConflictError,
)
from dhruva.file_storage import FileStorage
from dhruva.persistent_dict import PersistentDict
from dhruva.snapshots import VersionLedger
from dhruva.storage import CAP_PACK, CAP_SNAPSHOTS, MemoryStorage, Record, Storage
from dhruva.utils import int8_to_str as p64

T = wire.MessageType
E = wire.ErrorCode


Serve = Callable[..., Running]


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    started: list[Running] = []

    def start(storage: Storage | None = None, run: bool = True, **options: Any) -> Running:
        path = str(tmp_path / f"s{len(started)}.sock")
        running = Running(storage if storage is not None else MemoryStorage(), path, **options)
        started.append(running)
        return running.start() if run else running

    yield start
    for running in started:
        running.stop()
        running.storage.close()


class SmallLedgerStorage(MemoryStorage):
    """A MemoryStorage whose version ledger keeps at most ``limit_bytes`` (SAPI-094)."""

    def __init__(self, limit_bytes: int) -> None:
        super().__init__()
        # MemoryStorage has no option for its ledger's bound; this test
        # double replaces the ledger before anything is stored.
        self._ledger = VersionLedger(limit_bytes=limit_bytes)


class RecordingStorage(MemoryStorage):
    """A MemoryStorage that records every set_oldest_snapshot call."""

    def __init__(self) -> None:
        super().__init__()
        self.floors: list[int | None] = []

    def set_oldest_snapshot(self, tid: int | None) -> None:
        self.floors.append(tid)
        super().set_oldest_snapshot(tid)


class NoSnapshotStorage(MemoryStorage):
    """A storage without the capability ``snapshots``."""

    capabilities = frozenset({CAP_PACK})


def commit(storage: Storage, records: dict[bytes, bytes], reads: Sequence[bytes] = ()) -> None:
    storage.begin()
    if reads:
        storage.note_reads(reads)
    for oid, data in records.items():
        storage.store(oid, data, b"")
    storage.end()


class Raw:
    """A client speaking raw frames."""

    def __init__(self, address: Any) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(address)
        self.decoder = wire.FrameDecoder()
        self.payloads: list[bytes] = []

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

    def close(self) -> None:
        self.sock.close()


SNAPSHOT_HELLO = wire.Hello(features=wire.FEATURE_SNAPSHOTS).encode()


# --- negotiation -------------------------------------------------------------------


@pytest.mark.req("WIRE-100", "SAPI-097")
def test_snapshots_are_negotiated(serve: Serve, clients: Callable[..., ClientStorage]) -> None:
    running = serve()
    new = clients(running.address)
    assert CAP_SNAPSHOTS in new.capabilities
    assert wire.FEATURE_SNAPSHOTS in new.server_features
    old = clients(running.address, snapshots=False)
    assert CAP_SNAPSHOTS not in old.capabilities
    with pytest.raises(DhruvaError):
        old.last_tid()
    with pytest.raises(DhruvaError):
        old.load_at(p64(0), 0)
    # A storage without snapshots: the server does not offer the feature.
    plain = serve(NoSnapshotStorage())
    client = clients(plain.address)
    assert CAP_SNAPSHOTS not in client.capabilities
    assert wire.FEATURE_SNAPSHOTS not in client.server_features


@pytest.mark.req("WIRE-100")
def test_an_old_server_is_detected(tmp_path: Path) -> None:
    """A server that passes the storage's capability on but not the feature: no snapshots."""
    path = str(tmp_path / "old.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    received: list[bytes] = []

    def old_server() -> None:
        conn, _ = listener.accept()
        with conn:
            decoder = wire.FrameDecoder()
            payloads: list[bytes] = []
            while not payloads:
                payloads = decoder.feed(conn.recv(4096))
            received.append(payloads[0])
            reply = wire.HelloOk(features="stage prefetch", storage_capabilities="pack snapshots")
            conn.sendall(reply.encode())
            while data := conn.recv(4096):
                received.append(data)

    thread = threading.Thread(target=old_server, daemon=True)
    thread.start()
    client = ClientStorage(path)
    assert CAP_SNAPSHOTS not in client.capabilities
    with pytest.raises(DhruvaError):
        client.last_tid()
    client.close()
    thread.join(5)
    listener.close()
    hello = wire.decode_message(received[0])
    assert isinstance(hello, wire.Hello) and wire.FEATURE_SNAPSHOTS in hello.features.split()
    # No SYNC was sent to a server without the feature: only the QUIT.
    assert received[1:] == [wire.Empty(T.QUIT).encode()]


@pytest.mark.req("WIRE-101")
def test_snapshot_requests_from_an_old_session_are_refused(serve: Serve) -> None:
    running = serve()
    for request in (wire.LoadAt(p64(0), 0), wire.Reads([p64(0)]), wire.Hold(0)):
        raw = Raw(running.address)
        raw.send(wire.Hello().encode() + request.encode())
        assert isinstance(raw.receive(), wire.HelloOk)
        answer = raw.receive()
        assert isinstance(answer, wire.Error) and answer.code == E.UNKNOWN_MESSAGE
        assert raw.receive() is None
        raw.close()


# --- snapshot reads ------------------------------------------------------------------


@pytest.mark.req("SRV-100", "WIRE-105", "SAPI-091")
def test_a_held_snapshot_reads_the_old_version(
    serve: Serve, clients: Callable[..., ClientStorage]
) -> None:
    running = serve()
    a, b = clients(running.address), clients(running.address)
    x, y, z = b.new_oid(), b.new_oid(), b.new_oid()
    commit(b, {x: b"x1", y: b"y1"})
    a.sync()
    assert a.load(x).data == b"x1"
    commit(b, {x: b"x2"})
    commit(b, {x: b"x3", z: b"z new"})
    # No ReadConflictError: the version a's snapshot saw, by LOAD and BULK_LOAD.
    assert a.load(x).data == b"x1"
    assert [r.data for r in a.bulk_load([y, x])] == [b"y1", b"x1"]
    with pytest.raises(DhruvaKeyError):
        a.load(z)  # created after a's snapshot
    assert sorted(a.sync()) == sorted([x, z])
    assert a.load(x).data == b"x3"
    assert a.load(z).data == b"z new"


@pytest.mark.req("WIRE-102", "WIRE-103", "WIRE-104", "SAPI-090")
def test_last_tid_follows_syncs_and_commits(
    serve: Serve, clients: Callable[..., ClientStorage]
) -> None:
    storage = MemoryStorage()
    commit(storage, {p64(0): b"root"})
    running = serve(storage)
    a, b = clients(running.address), clients(running.address)
    assert a.last_tid() == b.last_tid() == storage.last_tid() == 1
    x = a.new_oid()
    commit(a, {x: b"x"})
    assert a.last_tid() == 2
    assert b.last_tid() == 1  # only sync() and end() move it
    assert b.sync() == [x]
    assert b.last_tid() == 2
    commit(b, {})  # an empty commit synchronizes and may keep the tid
    assert b.last_tid() == 2
    commit(a, {x: b"x again"})
    commit(b, {p64(0): b"root 2"})
    assert b.last_tid() == 4 and a.last_tid() == 3
    assert storage.last_tid() == 4


@pytest.mark.req("WIRE-102", "WIRE-104")
def test_sync_and_commit_answers_carry_the_tid(serve: Serve) -> None:
    storage = MemoryStorage()
    commit(storage, {p64(0): b"root"})
    running = serve(storage, check_oids=False)
    raw = Raw(running.address)
    raw.send(SNAPSHOT_HELLO)
    hello_ok = raw.receive()
    assert isinstance(hello_ok, wire.HelloOk)
    assert wire.FEATURE_SNAPSHOTS in hello_ok.features.split()
    raw.send(wire.Empty(T.SYNC).encode())
    assert raw.receive() == wire.Synced(1, [])
    raw.send(wire.Commit([Record(p64(1), b"one", b"")]).encode())
    assert raw.receive() == wire.CommittedAt(2, [])
    raw.send(wire.Commit([]).encode())
    assert raw.receive() == wire.CommittedAt(2, [])
    raw.close()


@pytest.mark.req("WIRE-106", "WIRE-112", "SRV-103", "SAPI-092", "SAPI-093")
def test_load_at_below_the_read_point_with_a_hold(
    serve: Serve, clients: Callable[..., ClientStorage]
) -> None:
    running = serve()
    a = clients(running.address)
    x, y = a.new_oid(), a.new_oid()
    commit(a, {x: b"v1"})
    first = a.last_tid()
    a.set_oldest_snapshot(first)
    commit(a, {x: b"v2", y: b"y"})
    commit(a, {x: b"v3"})
    assert a.load_at(x, first).data == b"v1"
    assert a.load_at(x, first + 1).data == b"v2"
    assert a.load_at(x, a.last_tid()).data == b"v3"
    with pytest.raises(DhruvaKeyError):
        a.load_at(y, first)  # y had no record then
    with pytest.raises(ValueError):
        a.load_at(x, a.last_tid() + 1)
    with pytest.raises(TypeError):
        a.load_at(x, "1")  # type: ignore[arg-type]
    # Released: the next commit keeps no version for the old snapshot.
    a.set_oldest_snapshot(None)
    commit(a, {x: b"v4"})
    with pytest.raises(SnapshotTooOldError) as raised:
        a.load_at(x, first)
    assert raised.value.tid == first and raised.value.oldest > first


@pytest.mark.req("WIRE-107")
def test_load_at_above_the_snapshot_is_malformed(serve: Serve) -> None:
    running = serve()
    raw = Raw(running.address)
    raw.send(SNAPSHOT_HELLO + wire.LoadAt(p64(0), 5).encode())
    assert isinstance(raw.receive(), wire.HelloOk)
    answer = raw.receive()
    assert isinstance(answer, wire.Error) and answer.code == E.MALFORMED
    assert raw.receive() is None
    raw.close()


# --- serializable commits --------------------------------------------------------------


@pytest.mark.req("SRV-104", "WIRE-108", "SAPI-095")
def test_a_commit_whose_reads_changed_is_refused(
    serve: Serve, clients: Callable[..., ClientStorage]
) -> None:
    running = serve()
    a, b = clients(running.address), clients(running.address)
    x, y, mine = b.new_oid(), b.new_oid(), a.new_oid()
    commit(b, {x: b"x1", y: b"y1"})
    a.sync()
    commit(b, {x: b"x2"})
    with pytest.raises(ReadConflictError) as raised:
        commit(a, {mine: b"depends on x"}, reads=[x, y])
    assert raised.value.oids == [x]
    # Nothing of it was written; after a sync the same transaction commits.
    with pytest.raises(DhruvaKeyError):
        b.load(mine)
    a.sync()
    commit(a, {mine: b"depends on x"}, reads=[x, y])
    b.sync()
    assert b.load(mine).data == b"depends on x"


@pytest.mark.req("SRV-104", "SRV-105", "SRV-020")
def test_write_conflicts_take_precedence_and_name_every_oid(
    serve: Serve, clients: Callable[..., ClientStorage]
) -> None:
    running = serve()
    a, b = clients(running.address), clients(running.address)
    x, y, z = b.new_oid(), b.new_oid(), b.new_oid()
    commit(b, {x: b"x1", y: b"y1", z: b"z1"})
    a.sync()
    commit(b, {x: b"x2", y: b"y2", z: b"z2"})
    with pytest.raises(WriteConflictError) as written:
        commit(a, {y: b"mine", z: b"mine"}, reads=[x])
    assert written.value.oids == sorted([y, z])
    with pytest.raises(ReadConflictError) as read:
        commit(a, {}, reads=[x, y, z])
    assert read.value.oids == sorted([x, y, z])


@pytest.mark.req("WIRE-108")
def test_reads_travel_in_the_commits_write_and_only_when_needed(
    serve: Serve, clients: Callable[..., ClientStorage], monkeypatch: pytest.MonkeyPatch
) -> None:
    running = serve()
    a = clients(running.address)
    x, y = a.new_oid(), a.new_oid()
    writes: list[bytes] = []
    real_send = a._send

    def recording_send(data: bytes) -> None:
        writes.append(data)
        real_send(data)

    monkeypatch.setattr(a, "_send", recording_send)
    commit(a, {x: b"x"})
    commit(a, {y: b"y"}, reads=[x, y])
    assert len(writes) == 2

    def types(data: bytes) -> list[int]:
        return [payload[0] for payload in wire.FrameDecoder().feed(data)]

    # No read: no READS frame.  Reads that are also written are not sent.
    assert types(writes[0]) == [T.COMMIT]
    assert types(writes[1]) == [T.READS, T.COMMIT]
    reads = wire.decode_message(wire.FrameDecoder().feed(writes[1])[0])
    assert reads == wire.Reads([x])


@pytest.mark.req("SRV-104", "SRV-030")
def test_a_group_commit_checks_reads_against_earlier_commits_of_the_group(
    serve: Serve,
) -> None:
    storage = MemoryStorage()
    commit(storage, {p64(1): b"one", p64(2): b"two", p64(3): b"three"})
    running = serve(storage, run=False, check_oids=False)
    # Both clients send everything before the loop first runs: their commits
    # are one group.  The second read what the first writes.
    first, second, third = Raw(running.address), Raw(running.address), Raw(running.address)
    first.send(SNAPSHOT_HELLO + wire.Commit([Record(p64(1), b"first", b"")]).encode())
    second.send(
        SNAPSHOT_HELLO
        + wire.Reads([p64(1)]).encode()
        + wire.Commit([Record(p64(2), b"second", b"")]).encode()
    )
    third.send(
        SNAPSHOT_HELLO
        + wire.Reads([p64(2)]).encode()
        + wire.Commit([Record(p64(3), b"third", b"")]).encode()
    )
    running.start()
    answers = []
    for raw in (first, second, third):
        assert isinstance(raw.receive(), wire.HelloOk)
        answers.append(raw.receive())
    # One group, one tid: each learns what the other accepted commit stored.
    assert answers[0] == wire.CommittedAt(2, [p64(3)])
    assert isinstance(answers[1], wire.Error) and answers[1].code == E.READ_CONFLICT
    assert list(answers[1].oids) == [p64(1)]
    # The third read what the refused second would have written: no conflict.
    assert answers[2] == wire.CommittedAt(2, [p64(1)])
    assert storage.load(p64(2)).data == b"two"
    assert storage.load(p64(3)).data == b"third"
    for raw in (first, second, third):
        raw.close()


# --- old clients ------------------------------------------------------------------------


@pytest.mark.req("WIRE-115", "SRV-107")
def test_an_old_client_keeps_read_conflicts(
    serve: Serve, clients: Callable[..., ClientStorage]
) -> None:
    running = serve()
    new, old = clients(running.address), clients(running.address, snapshots=False)
    x = new.new_oid()
    commit(new, {x: b"v1"})
    old.sync()
    assert old.load(x).data == b"v1"
    commit(new, {x: b"v2"})
    with pytest.raises(ReadConflictError):
        old.load(x)
    raw = Raw(running.address)
    raw.send(wire.Hello().encode() + wire.Empty(T.SYNC).encode())
    assert isinstance(raw.receive(), wire.HelloOk)
    assert raw.receive() == wire.Oids([])  # OIDS, not SYNCED
    raw.close()
    assert old.sync() == [x]
    assert old.load(x).data == b"v2"


# --- bounds ----------------------------------------------------------------------------


@pytest.mark.req("SRV-102", "WIRE-114", "SAPI-094")
def test_a_snapshot_held_too_long_gets_snapshot_too_old(
    serve: Serve, clients: Callable[..., ClientStorage]
) -> None:
    running = serve(SmallLedgerStorage(limit_bytes=1000))
    holder, writer, reader = (clients(running.address) for _ in range(3))
    x, y = writer.new_oid(), writer.new_oid()
    commit(writer, {x: b"x0" * 100, y: b"y0"})
    holder.sync()
    held = holder.last_tid()
    assert holder.load(y).data == b"y0"
    for round_ in range(1, 20):
        commit(writer, {x: b"x%d" % round_ * 100})
    # The versions the holder needs were dropped past the bound: a clear error.
    with pytest.raises(SnapshotTooOldError) as raised:
        holder.load(x)
    assert raised.value.tid == held and raised.value.oldest > held
    # The others are served meanwhile, and so is the holder's unchanged oid.
    reader.sync()
    assert reader.load(x).data == b"x19" * 100
    commit(writer, {y: b"y1"})
    # Getting out: synchronize (what abort() does), then read again.
    holder.sync()
    assert holder.load(x).data == b"x19" * 100
    assert holder.load(y).data == b"y1"


@pytest.mark.req("WIRE-114")
def test_snapshot_too_old_frame_layout() -> None:
    error = wire.snapshot_too_old(7, 9, "too old")
    payload = error.encode()[4:]
    assert wire.decode_message(payload) == error
    assert wire.snapshot_bounds(error) == (7, 9)
    assert error.encode().hex() == (
        "00000020ff001900000002000000000000000700000000000000090007746f6f206f6c64"
    )


# --- the oldest snapshot ------------------------------------------------------------------


@pytest.mark.req("SRV-101")
def test_the_server_tells_the_storage_the_oldest_snapshot(
    serve: Serve, clients: Callable[..., ClientStorage]
) -> None:
    storage = RecordingStorage()
    running = serve(storage)
    a = clients(running.address)
    x = a.new_oid()
    # A lone client: it moves with every commit of its own, nothing is kept.
    commit(a, {x: b"1"})
    commit(a, {x: b"2"})
    assert storage.floors == []
    b = clients(running.address)
    behind = b.last_tid()
    # b does not move with a's commit: its snapshot is kept, before and after.
    commit(a, {x: b"3"})
    assert storage.floors == [behind]
    assert b.load(x).data == b"2"
    # Once b caught up nobody is behind: nothing is kept.
    b.sync()
    assert storage.floors == [behind, None]
    commit(a, {x: b"4"})
    assert storage.floors[-1] == behind + 1
    # A session that ends holds nothing.
    b.close()
    running.server.stop()
    running.thread.join()
    assert storage.floors[-1] is None


class PackedAwayStorage(MemoryStorage):
    """The state a pack leaves (SAPI-096): no current record, a version at older snapshots."""

    def __init__(self) -> None:
        super().__init__()
        self.packed: dict[bytes, tuple[int, Record]] = {}

    def pack_away(self, oid: bytes) -> None:
        self.packed[oid] = (self.last_tid(), self.load(oid))

    def load(self, oid: bytes) -> Record:
        if oid in self.packed:
            raise DhruvaKeyError(oid)
        return super().load(oid)

    def load_at(self, oid: bytes, tid: int) -> Record:
        if oid in self.packed:
            packed_at, record = self.packed[oid]
            if tid <= packed_at:
                return record
            raise DhruvaKeyError(oid)
        return super().load_at(oid, tid)


@pytest.mark.req("SRV-106")
def test_a_load_that_misses_is_retried_at_the_snapshot(
    serve: Serve, clients: Callable[..., ClientStorage]
) -> None:
    storage = PackedAwayStorage()
    running = serve(storage)
    a, old = clients(running.address), clients(running.address, snapshots=False)
    x, y = a.new_oid(), a.new_oid()
    commit(a, {x: b"x", y: b"y"})
    old.sync()
    storage.pack_away(x)
    storage.pack_away(y)
    assert a.load(x).data == b"x"
    assert [r.data for r in a.bulk_load([y])] == [b"y"]
    with pytest.raises(DhruvaKeyError):
        old.load(x)  # no snapshot to read it at


@pytest.mark.req("SRV-100", "SRV-104")
def test_connections_through_the_server_read_a_snapshot_and_commit_serializably(
    serve: Serve, clients: Callable[..., ClientStorage]
) -> None:
    running = serve()
    writer = Connection(clients(running.address))
    root = writer.get_root()
    root["x"], root["y"] = PersistentDict(n=1), PersistentDict(n=1)
    writer.commit()
    reader = Connection(clients(running.address))
    reader_root = reader.get_root()
    assert reader_root["x"]["n"] == 1
    root["x"]["n"] = root["y"]["n"] = 2
    writer.commit()
    # The reader's transaction sees its snapshot, whatever the writer did:
    # y was never loaded by it, and still reads as the snapshot had it.
    assert reader_root["y"]["n"] == 1
    assert reader_root["x"]["n"] == 1
    # Writing something that depends on what it read is refused: x changed.
    reader_root["sum"] = reader_root["x"]["n"] + reader_root["y"]["n"]
    with pytest.raises(ReadConflictError):
        reader.commit()
    reader.abort()
    reader_root = reader.get_root()
    reader_root["sum"] = reader_root["x"]["n"] + reader_root["y"]["n"]
    reader.commit()
    writer.abort()
    assert writer.get_root()["sum"] == 4


@pytest.mark.req("SAPI-095", "SAPI-006")
def test_note_reads_outside_a_transaction_or_with_a_bad_oid_is_refused(
    serve: Serve, clients: Callable[..., ClientStorage]
) -> None:
    running = serve()
    a = clients(running.address)
    with pytest.raises(DhruvaError):
        a.note_reads([p64(1)])
    a.begin()
    with pytest.raises((TypeError, ValueError)):
        a.note_reads([b"short"])
    a.abort_transaction()
    commit(a, {}, reads=[p64(1)])  # the connection is still usable


@pytest.mark.req("SRV-100", "SRV-104", "SRV-105", "WIRE-102", "WIRE-104", "WIRE-105")
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("kind", ["memory", "file"])
def test_random_sessions_match_a_serial_model(
    serve: Serve, clients: Callable[..., ClientStorage], seed: int, kind: str, tmp_path: Path
) -> None:
    """Random loads, syncs and commits of three clients against a model of the tids.

    The model keeps the database after every tid; each client must read the
    state at its last_tid(), and a commit must be refused exactly when an oid
    it wrote (WRITE_CONFLICT first) or read was committed by another client
    after its snapshot.
    """
    rng = random.Random(seed)
    storage: Storage = MemoryStorage() if kind == "memory" else FileStorage(tmp_path / "db")
    if CAP_SNAPSHOTS not in storage.capabilities:
        storage.close()
        pytest.skip(f"{type(storage).__name__} lacks the capability 'snapshots'")
    running = serve(storage, check_oids=False)
    sessions = [clients(running.address) for _ in range(3)]
    oids = [p64(n) for n in range(1, 9)]
    states: list[dict[bytes, bytes]] = [{}]  # states[tid]: every oid's data after tid
    changes: list[set[bytes]] = [set()]  # changes[tid]: the oids tid stored
    snapshot = [0, 0, 0]
    pending: list[set[bytes]] = [set(), set(), set()]  # invalidations not yet synced
    seen = {"old version": 0, "write conflict": 0, "read conflict": 0}
    for step in range(250):
        index = rng.randrange(3)
        client = sessions[index]
        assert client.last_tid() == snapshot[index]
        action = rng.random()
        if action < 0.45:
            oid = rng.choice(oids)
            expected = states[snapshot[index]].get(oid)
            if expected != states[-1].get(oid):
                seen["old version"] += 1
            if expected is None:
                with pytest.raises(DhruvaKeyError):
                    client.load(oid)
            else:
                assert client.load(oid).data == expected
        elif action < 0.6:
            assert set(client.sync()) == pending[index]
            pending[index] = set()
            snapshot[index] = len(states) - 1
        else:
            writes = set(rng.sample(oids, rng.randrange(0, 3)))
            reads = set(rng.sample(oids, rng.randrange(0, 4)))
            changed = set().union(*changes[snapshot[index] + 1 :])
            client.begin()
            client.note_reads(sorted(reads))
            for oid in sorted(writes):
                client.store(oid, b"%d:%d" % (step, index), b"")
            if writes & changed:
                with pytest.raises(WriteConflictError) as raised:
                    client.end()
                assert raised.value.oids == sorted(writes & changed)
                seen["write conflict"] += 1
            elif (reads - writes) & changed:
                with pytest.raises(ReadConflictError) as read:
                    client.end()
                assert read.value.oids == sorted((reads - writes) & changed)
                seen["read conflict"] += 1
            else:
                client.end()
                if writes:
                    state = dict(states[-1])
                    state.update({oid: b"%d:%d" % (step, index) for oid in writes})
                    states.append(state)
                    changes.append(writes)
                    for other in range(3):
                        if other != index:
                            pending[other] |= writes
                snapshot[index] = len(states) - 1
                assert set(client.sync()) == pending[index]
                pending[index] = set()
    # The run exercised what it checks.
    assert all(seen.values()), seen
