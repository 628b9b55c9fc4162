"""Blobs through the storage server (spec: wire-protocol.md "Blobs", server.md "Blobs").

A StorageServer runs in a thread of the test process, over a Unix socket;
raw-frame clients check the wire rules, ClientStorage the client's.
"""

from __future__ import annotations

import hashlib
import io
import os
import socket
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from _running_server import Running

from dhruva import wire
from dhruva.blob import Blob
from dhruva.client_storage import ClientStorage
from dhruva.connection import Connection
from dhruva.error import DhruvaError, DhruvaKeyError, ProtocolError
from dhruva.record import Record
from dhruva.server import session as sessions
from dhruva.server.commit import Committer
from dhruva.server.session import ServerLimits
from dhruva.storage import CAP_BLOBS, CAP_PACK, CAP_SNAPSHOTS, MemoryStorage, Storage
from dhruva.tools.config import load_settings
from dhruva.utils import int8_to_str as p64

T = wire.MessageType
E = wire.ErrorCode
CHUNK = wire.MAX_BLOB_CHUNK


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Running]]:
    started: list[Running] = []

    def start(storage: Storage | None = None, **options: Any) -> Running:
        path = str(tmp_path / f"s{len(started)}.sock")
        served = storage if storage is not None else MemoryStorage()
        running = Running(served, path, check_oids=False, **options).start()
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()
        running.storage.close()


class Raw:
    """A client speaking raw frames."""

    def __init__(self, address: Any, features: str = wire.FEATURE_BLOBS) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(address)
        self.decoder = wire.FrameDecoder()
        self.payloads: list[bytes] = []
        self.send(wire.Hello(features=features).encode())
        hello_ok = self.receive()
        assert isinstance(hello_ok, wire.HelloOk)
        self.server_features = hello_ok.features.split()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def receive(self) -> wire.Message | None:
        while not self.payloads:
            try:
                data = self.sock.recv(1 << 20)
            except ConnectionResetError:
                return None
            if not data:
                return None
            self.payloads.extend(self.decoder.feed(data))
        return wire.decode_message(self.payloads.pop(0))

    def ask(self, data: bytes) -> wire.Message | None:
        self.send(data)
        return self.receive()

    def close(self) -> None:
        self.sock.close()


class NoBlobStorage(MemoryStorage):
    """A storage without the capability ``blobs``."""

    capabilities = frozenset({CAP_PACK, CAP_SNAPSHOTS})


OID = p64(1)


def commit_blob(storage: Storage, oid: bytes, content: bytes, record: bytes = b"r") -> None:
    storage.begin()
    storage.store(oid, record, b"")
    storage.store_blob(oid, io.BytesIO(content))
    storage.end()


def read_all(storage: Storage, oid: bytes, tid: int | None = None) -> bytes:
    with storage.open_blob(oid, tid) as file:
        return file.read()


# --- the codec ---------------------------------------------------------------------


@pytest.mark.req("WIRE-131", "WIRE-132", "WIRE-133", "WIRE-134")
def test_the_blob_frames_match_the_spec_examples() -> None:
    examples: dict[wire.Message, str] = {
        wire.Hello(features="blobs"): "00 00 00 10 01 44 48 52 56 00 01 00 00 00 05 62 6c 6f 62 73",
        wire.BlobChunk(OID, b"ab"): "00 00 00 0b 11 00 00 00 00 00 00 00 01 61 62",
        wire.BlobChunk(OID, b""): "00 00 00 09 11 00 00 00 00 00 00 00 01",
        wire.ReadBlob(OID, wire.SESSION_SNAPSHOT, 0, CHUNK): (
            "00 00 00 1d 12 00 00 00 00 00 00 00 01 ff ff ff ff ff ff ff ff"
            " 00 00 00 00 00 00 00 00 00 10 00 00"
        ),
        wire.ReadBlob(OID, 3, 2, 2): (
            "00 00 00 1d 12 00 00 00 00 00 00 00 01 00 00 00 00 00 00 00 03"
            " 00 00 00 00 00 00 00 02 00 00 00 02"
        ),
        wire.BlobData(b"ab"): "00 00 00 03 90 61 62",
        wire.BlobData(b""): "00 00 00 01 90",
    }
    spec = (Path(__file__).parent.parent / "spec" / "wire-protocol.md").read_text()
    flat = " ".join(spec.split())
    for message, text in examples.items():
        encoded = bytes.fromhex(text)
        assert message.encode() == encoded
        assert wire.decode_message(encoded[4:]) == message
        assert text in flat, text


@pytest.mark.req("WIRE-131")
def test_oversized_chunks_and_bad_lengths_are_malformed() -> None:
    too_big = b"\x00" * (CHUNK + 1)
    with pytest.raises(ProtocolError):
        wire.decode_message(bytes([T.BLOB_CHUNK]) + OID + too_big)
    with pytest.raises(ProtocolError):
        wire.decode_message(bytes([T.BLOB_DATA]) + too_big)
    for length in (0, CHUNK + 1):
        payload = wire.ReadBlob(OID, 1, 0, length).encode()[4:]
        with pytest.raises(ProtocolError):
            wire.decode_message(payload)
    with pytest.raises(ProtocolError):
        wire.decode_message(bytes([T.BLOB_CHUNK]) + OID[:5])
    assert wire.decode_message(bytes([T.BLOB_CHUNK]) + OID + b"\x00" * CHUNK) == wire.BlobChunk(
        OID, b"\x00" * CHUNK
    )


@pytest.mark.req("WIRE-132")
def test_chunk_frames_carry_the_file_from_its_position() -> None:
    data = os.urandom(2 * CHUNK + 5)
    file = io.BytesIO(b"skip" + data)
    file.seek(4)
    frames = list(wire.blob_chunk_frames(OID, file))
    assert len(frames) == 3
    chunks = [wire.decode_message(f[4:]) for f in frames]
    assert all(isinstance(c, wire.BlobChunk) and c.oid == OID for c in chunks)
    assert b"".join(c.data for c in chunks if isinstance(c, wire.BlobChunk)) == data
    assert list(wire.blob_chunk_frames(OID, io.BytesIO())) == [wire.BlobChunk(OID, b"").encode()]


# --- negotiation -------------------------------------------------------------------


@pytest.mark.req("WIRE-130", "SRV-125")
def test_blobs_are_negotiated(
    serve: Callable[..., Running], clients: Callable[..., ClientStorage]
) -> None:
    with_blobs = serve()
    client = clients(with_blobs.address)
    assert CAP_BLOBS in client.capabilities
    assert wire.FEATURE_BLOBS in client.server_features
    without = serve(NoBlobStorage())
    client = clients(without.address)
    assert CAP_BLOBS not in client.capabilities
    assert wire.FEATURE_BLOBS not in client.server_features
    client.begin()
    with pytest.raises(DhruvaError, match="does not store blobs"):
        client.store_blob(OID, io.BytesIO(b"x"))
    client.abort_transaction()
    with pytest.raises(DhruvaError, match="does not store blobs"):
        client.open_blob(OID)


@pytest.mark.req("WIRE-130")
@pytest.mark.parametrize(
    "frame",
    [wire.BlobChunk(OID, b"x").encode(), wire.ReadBlob(OID, 1, 0, 1).encode()],
    ids=["BLOB_CHUNK", "READ_BLOB"],
)
def test_blob_frames_need_the_feature(serve: Callable[..., Running], frame: bytes) -> None:
    raw = Raw(serve().address, features="")
    answer = raw.ask(frame)
    assert isinstance(answer, wire.Error) and answer.code == E.UNKNOWN_MESSAGE
    assert raw.receive() is None  # fatal: closed
    raw.close()
    # And a server whose storage has no blobs offers nothing.
    raw = Raw(serve(NoBlobStorage()).address)
    assert wire.FEATURE_BLOBS not in raw.server_features
    answer = raw.ask(frame)
    assert isinstance(answer, wire.Error) and answer.code == E.UNKNOWN_MESSAGE
    raw.close()


# --- storing and reading -----------------------------------------------------------


@pytest.mark.req("WIRE-132", "WIRE-133", "WIRE-134", "SRV-122", "SRV-125")
def test_interleaved_chunks_of_several_oids_and_partial_reads(
    serve: Callable[..., Running],
) -> None:
    running = serve()
    raw = Raw(running.address)
    two = p64(2)
    raw.send(
        wire.BlobChunk(OID, b"he").encode()
        + wire.BlobChunk(two, b"").encode()
        + wire.BlobChunk(OID, b"llo").encode()
    )
    answer = raw.ask(wire.Commit([Record(OID, b"r1", b""), Record(two, b"r2", b"")]).encode())
    assert isinstance(answer, wire.Committed)
    assert read_all(running.storage, OID) == b"hello"
    assert read_all(running.storage, two) == b""
    asks = [(0, 5, b"hello"), (1, 2, b"el"), (3, 10, b"lo"), (5, 1, b""), (99, 1, b"")]
    for offset, length, expected in asks:
        answer = raw.ask(wire.ReadBlob(OID, wire.SESSION_SNAPSHOT, offset, length).encode())
        assert answer == wire.BlobData(expected)
    answer = raw.ask(wire.ReadBlob(p64(3), wire.SESSION_SNAPSHOT, 0, 1).encode())
    assert isinstance(answer, wire.Error) and answer.code == E.NO_SUCH_OBJECT
    assert list(answer.oids) == [p64(3)]
    # The session goes on after NO_SUCH_OBJECT.
    assert raw.ask(wire.ReadBlob(two, wire.SESSION_SNAPSHOT, 0, 1).encode()) == wire.BlobData(b"")
    raw.close()


@pytest.mark.req("SRV-125", "BLOB-010", "BLOB-014")
def test_client_store_open_abort_and_a_blob_without_its_record(
    serve: Callable[..., Running], clients: Callable[..., ClientStorage], tmp_path: Path
) -> None:
    running = serve()
    client = clients(running.address)
    path = tmp_path / "content"
    path.write_bytes(b"0123456789" * 1000)
    client.begin()
    client.store(OID, b"r", b"")
    with path.open("rb") as file:
        file.seek(10)
        client.store_blob(OID, file)
    # The file is closed and even removed before end(): what was kept streams.
    path.unlink()
    client.end()
    assert read_all(client, OID) == b"0123456789" * 999
    with client.open_blob(OID) as reader:
        assert reader.read(3) == b"012"
        reader.seek(12)
        assert reader.read(4) == b"2345"
    # abort_transaction drops the kept content: nothing reaches the server.
    client.begin()
    client.store(OID, b"r2", b"")
    client.store_blob(OID, io.BytesIO(b"aborted"))
    client.abort_transaction()
    commit_blob(client, p64(2), b"other")
    assert read_all(client, OID) == b"0123456789" * 999
    assert read_all(running.storage, OID) == b"0123456789" * 999
    # [BLOB-010] Refused by the client before anything is sent; the session goes on.
    client.begin()
    client.store(p64(5), b"r", b"")
    client.store_blob(p64(4), io.BytesIO(b"orphan"))
    with pytest.raises(DhruvaError, match="did not store"):
        client.end()
    with pytest.raises(DhruvaKeyError):
        client.open_blob(p64(4))
    assert read_all(client, p64(2)) == b"other"


@pytest.mark.req("WIRE-135")
def test_a_commit_with_a_blob_of_an_unstored_object_is_malformed(
    serve: Callable[..., Running],
) -> None:
    running = serve()
    raw = Raw(running.address)
    raw.send(wire.BlobChunk(p64(7), b"orphan").encode())
    answer = raw.ask(wire.Commit([Record(OID, b"r", b"")]).encode())
    assert isinstance(answer, wire.Error) and answer.code == E.MALFORMED
    assert raw.receive() is None
    raw.close()
    # The next client's request is answered after the server closed that session.
    probe = Raw(running.address)
    assert isinstance(probe.ask(wire.Empty(T.SIZE).encode()), wire.SizeIs)
    probe.close()
    with pytest.raises(DhruvaKeyError):
        running.storage.load(OID)
    assert not running.server._staged_blobs


@pytest.mark.req("WIRE-136", "WIRE-133")
def test_a_read_above_the_snapshot_is_malformed(serve: Callable[..., Running]) -> None:
    running = serve()
    commit_blob(running.storage, OID, b"v1")
    raw = Raw(running.address, features=f"{wire.FEATURE_BLOBS} {wire.FEATURE_SNAPSHOTS}")
    synced = raw.ask(wire.Empty(T.SYNC).encode())
    assert isinstance(synced, wire.Synced)
    # The snapshot's own tid and SESSION_SNAPSHOT read the same.
    assert raw.ask(wire.ReadBlob(OID, synced.tid, 0, 9).encode()) == wire.BlobData(b"v1")
    assert raw.ask(wire.ReadBlob(OID, wire.SESSION_SNAPSHOT, 0, 9).encode()) == wire.BlobData(b"v1")
    answer = raw.ask(wire.ReadBlob(OID, synced.tid + 1, 0, 9).encode())
    assert isinstance(answer, wire.Error) and answer.code == E.MALFORMED
    raw.close()


@pytest.mark.req("SRV-124", "WIRE-133", "BLOB-004")
def test_a_reader_keeps_its_snapshot_while_another_client_commits(
    serve: Callable[..., Running], clients: Callable[..., ClientStorage]
) -> None:
    running = serve()
    old = os.urandom(3 * CHUNK + 17)
    new = os.urandom(2 * CHUNK)
    writer = clients(running.address)
    reader_client = clients(running.address)
    commit_blob(writer, OID, old, b"v1")
    reader_client.sync()
    reader = reader_client.open_blob(OID)
    first = reader.read(CHUNK + 3)
    commit_blob(writer, OID, new, b"v2")
    assert read_all(writer, OID) == new
    # The open reader goes on at its tid; a new open at the same snapshot too.
    assert first + reader.read() == old
    reader.close()
    assert read_all(reader_client, OID) == old
    reader_client.sync()
    assert read_all(reader_client, OID) == new


@pytest.mark.req("SRV-125", "BLOB-002", "BLOB-004")
def test_a_connection_commits_and_reads_a_blob_through_the_server(
    serve: Callable[..., Running], clients: Callable[..., ClientStorage]
) -> None:
    running = serve()
    connection = Connection(clients(running.address))
    blob = Blob(b"first")
    connection.get_root()["blob"] = blob
    connection.commit()
    with blob.open("a") as file:
        file.write(b" and more")
    connection.commit()
    other = Connection(clients(running.address))
    with other.get_root()["blob"].open("r") as file:
        assert file.read() == b"first and more"


# --- limits and failures -----------------------------------------------------------


@pytest.mark.req("SRV-121")
def test_the_staged_blob_limits(
    serve: Callable[..., Running], clients: Callable[..., ClientStorage]
) -> None:
    limits = ServerLimits(max_staged_blob_bytes=CHUNK + 10, max_staged_blobs=2)
    running = serve(limits=limits)
    client = clients(running.address)
    client.begin()
    client.store(OID, b"r", b"")
    client.store_blob(OID, io.BytesIO(b"x" * (CHUNK + 11)))
    with pytest.raises(DhruvaError, match="max_staged_blob_bytes"):
        client.end()
    assert not running.server._staged_blobs
    with pytest.raises(DhruvaKeyError):
        client.load(OID)
    client.begin()
    for number in (1, 2, 3):
        client.store(p64(number), b"r", b"")
        client.store_blob(p64(number), io.BytesIO(b"y"))
    with pytest.raises(DhruvaError, match="max_staged_blobs"):
        client.end()
    # Not fatal: the next transaction, within the limits, commits.
    commit_blob(client, OID, b"x" * (CHUNK + 10))
    assert client.open_blob(OID).read() == b"x" * (CHUNK + 10)


@pytest.mark.req("SRV-121")
def test_the_blob_limits_are_settings() -> None:
    settings = load_settings({"max_staged_blob_bytes": 4096, "max_staged_blobs": 3}, environ={})
    limits = settings.limits()
    assert (limits.max_staged_blob_bytes, limits.max_staged_blobs) == (4096, 3)
    assert ServerLimits().max_staged_blob_bytes == 4 << 30
    with pytest.raises(ValueError):
        ServerLimits(max_staged_blobs=0)


@pytest.mark.req("SRV-123", "SRV-120", "WIRE-132")
def test_a_session_that_dies_mid_blob_leaves_nothing(serve: Callable[..., Running]) -> None:
    running = serve()
    server = running.server
    raw = Raw(running.address)
    raw.send(wire.BlobChunk(OID, b"a" * CHUNK).encode())
    # A request after the chunk proves the server handled it.
    assert isinstance(raw.ask(wire.Empty(T.SIZE).encode()), wire.SizeIs)
    (staged,) = server._staged_blobs.values()
    assert staged.oids() == [OID] and staged.size_bytes == CHUNK
    ((_, file),) = staged.files()
    # [SRV-120] An unlinked temporary file: nothing of it on any directory.
    assert os.fstat(file.fileno()).st_nlink == 0
    raw.close()
    # The next client's request is answered after the server saw the close.
    probe = Raw(running.address)
    assert isinstance(probe.ask(wire.Empty(T.SIZE).encode()), wire.SizeIs)
    probe.close()
    assert not server._staged_blobs
    assert file.closed
    with pytest.raises(DhruvaKeyError):
        running.storage.open_blob(OID)


@pytest.mark.req("SRV-123")
def test_a_stopping_server_deletes_the_staged_blobs(serve: Callable[..., Running]) -> None:
    running = serve()
    raw = Raw(running.address)
    raw.send(wire.BlobChunk(OID, b"staged").encode())
    assert isinstance(raw.ask(wire.Empty(T.SIZE).encode()), wire.SizeIs)
    (staged,) = running.server._staged_blobs.values()
    ((_, file),) = staged.files()
    running.stop()
    assert file.closed
    assert not running.server._staged_blobs
    raw.close()


@pytest.mark.req("SRV-122", "SRV-123")
def test_a_group_stores_the_blobs_of_its_accepted_commits_only() -> None:
    storage = MemoryStorage()
    committer: Committer[str] = Committer(storage, check_oids=False)
    first = io.BytesIO(b"first's")
    second = io.BytesIO(b"second's")
    committer.queue("a", [Record(OID, b"a", b"")], (), [(OID, first)])
    committer.queue("b", [Record(OID, b"b", b"")], (), [(OID, second)])
    committer.queue("c", [Record(p64(2), b"c", b"")], (), [(p64(2), io.BytesIO(b"c's"))])
    outcomes = committer.run_group(committer.take_group())
    assert [o.refusal is None for o in outcomes] == [True, False, True]
    assert outcomes[1].refusal is not None and outcomes[1].refusal.code == E.WRITE_CONFLICT
    assert read_all(storage, OID) == b"first's"
    assert read_all(storage, p64(2)) == b"c's"
    assert storage.load(OID).data == b"a"
    storage.close()


class FailingEndStorage(MemoryStorage):
    """A MemoryStorage whose end() fails after the records and blobs were stored."""

    def end(self) -> None:
        raise DhruvaError("disk full")


@pytest.mark.req("SRV-122")
def test_a_failing_commit_stores_neither_records_nor_blobs(
    serve: Callable[..., Running], clients: Callable[..., ClientStorage]
) -> None:
    running = serve(FailingEndStorage())
    client = clients(running.address)
    client.begin()
    client.store(OID, b"r", b"")
    client.store_blob(OID, io.BytesIO(b"lost"))
    with pytest.raises(DhruvaError, match="disk full"):
        client.end()
    assert not running.server._staged_blobs
    with pytest.raises(DhruvaKeyError):
        running.storage.open_blob(OID)


# --- memory ------------------------------------------------------------------------


@pytest.mark.req("BLOB-015", "SRV-120", "SRV-124", "SRV-125")
def test_a_64_mib_blob_goes_through_in_bounded_memory(
    serve: Callable[..., Running], clients: Callable[..., ClientStorage], tmp_path: Path
) -> None:
    size = 64 << 20
    source = tmp_path / "big"
    digest = hashlib.sha256()
    with source.open("wb") as out:
        block = os.urandom(CHUNK)
        for index in range(size // CHUNK):
            piece = block[index:] + block[:index]
            digest.update(piece)
            out.write(piece)
    # The server runs in this process too: tracemalloc counts both ends.
    # The pending-bytes limit keeps the server from queueing many chunks.
    running = serve(limits=ServerLimits(max_pending_bytes=4 * CHUNK))
    client = clients(running.address)
    tracemalloc.start()
    try:
        client.begin()
        client.store(OID, b"big", b"")
        with source.open("rb") as file:
            client.store_blob(OID, file)
        client.end()
        _, write_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        read_digest = hashlib.sha256()
        with client.open_blob(OID) as reader:
            while piece := reader.read(256 << 10):
                read_digest.update(piece)
        _, read_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert read_digest.hexdigest() == digest.hexdigest()
    assert write_peak < 16 * CHUNK, write_peak
    assert read_peak < 16 * CHUNK, read_peak


# --- the sans-IO session -----------------------------------------------------------


def _session_events(session: sessions.ServerSession) -> list[Any]:
    found: list[Any] = []
    while True:
        event = session.next_event()
        if event is sessions.NEED_DATA or event is sessions.PAUSED:
            return found
        found.append(event)


def _session_output(session: sessions.ServerSession) -> list[wire.Message]:
    decoder = wire.FrameDecoder()
    payloads = decoder.feed(bytes(session.data_to_send()))
    session.bytes_sent(len(session.data_to_send()))
    return [wire.decode_message(p) for p in payloads]


@pytest.mark.req("SRV-121", "SRV-120", "WIRE-132")
def test_the_session_passes_chunks_on_and_refuses_past_the_limit() -> None:
    session = sessions.ServerSession(
        ServerLimits(max_staged_blob_bytes=5),
        features=f"{sessions.FEATURES} {wire.FEATURE_BLOBS}",
    )
    session.receive_data(wire.Hello(features=wire.FEATURE_BLOBS).encode())
    assert _session_events(session) == [sessions.Ready(False)]
    assert session.blobs
    _session_output(session)
    record = Record(OID, b"r", b"")
    session.receive_data(
        wire.BlobChunk(OID, b"abc").encode()
        + wire.BlobChunk(OID, b"de").encode()
        + wire.Commit([record]).encode()
    )
    # The chunks come out, in order, before the COMMIT they belong to.
    assert _session_events(session) == [
        sessions.BlobChunk(OID, b"abc"),
        sessions.BlobChunk(OID, b"de"),
        sessions.Commit([record], []),
    ]
    session.send(wire.Committed([]))
    _session_output(session)
    session.receive_data(
        wire.BlobChunk(OID, b"abcd").encode()
        + wire.BlobChunk(OID, b"ef").encode()
        + wire.BlobChunk(OID, b"never passed on").encode()
        + wire.Commit([record]).encode()
    )
    assert _session_events(session) == [
        sessions.BlobChunk(OID, b"abcd"),
        sessions.BlobsRefused(6, 1),
    ]
    (answer,) = _session_output(session)
    assert isinstance(answer, wire.Error) and answer.code == E.TOO_LARGE
    assert not session.closed and not session.mid_request
    # The next transaction starts empty.
    session.receive_data(wire.BlobChunk(OID, b"ok").encode() + wire.Commit([record]).encode())
    assert _session_events(session) == [
        sessions.BlobChunk(OID, b"ok"),
        sessions.Commit([record], []),
    ]
