"""Blob reads at one tid outside snapshots: the feature ``blob-tids`` (spec: wire-protocol.md
"Blobs", WIRE-137 and WIRE-138; server.md SRV-124, SRV-125).

A StorageServer runs in a thread of the test process, over a Unix socket;
raw-frame clients check the server's answers, ClientStorage the client's
rule, and a scripted fake server the client's refusal of bad answers.
"""

from __future__ import annotations

import io
import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pytest
from _running_server import Running

from dhruva import wire
from dhruva.client_storage import ClientStorage, ServerConnectionError
from dhruva.error import DhruvaKeyError, ProtocolError, SnapshotTooOldError
from dhruva.file_storage import FileStorage
from dhruva.server import session as sessions
from dhruva.server.session import ServerLimits
from dhruva.storage import CAP_BLOBS, CAP_PACK, MemoryStorage, Storage
from dhruva.utils import int8_to_str as p64

T = wire.MessageType
E = wire.ErrorCode
CHUNK = wire.MAX_BLOB_CHUNK
ROOT = p64(0)
BLOBS_AND_TIDS = f"{wire.FEATURE_BLOBS} {wire.FEATURE_BLOB_TIDS}"


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Running]]:
    started: list[Running] = []

    def start(storage: Storage | None = None) -> Running:
        path = str(tmp_path / f"s{len(started)}.sock")
        served = storage if storage is not None else MemoryStorage()
        running = Running(served, path, check_oids=False).start()
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()
        running.storage.close()


class Raw:
    """A client speaking raw frames, announcing ``features``."""

    def __init__(self, address: Any, features: str = BLOBS_AND_TIDS) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(address)
        self.decoder = wire.FrameDecoder()
        self.payloads: list[bytes] = []
        hello_ok = self.ask(wire.Hello(features=features).encode())
        assert isinstance(hello_ok, wire.HelloOk)
        self.server_features = hello_ok.features.split()

    def ask(self, data: bytes) -> wire.Message | None:
        self.sock.sendall(data)
        return self.receive()

    def receive(self) -> wire.Message | None:
        """The next message, or None when the server closed the connection."""
        while not self.payloads:
            try:
                received = self.sock.recv(1 << 20)
            except ConnectionResetError:
                return None
            if not received:
                return None
            self.payloads.extend(self.decoder.feed(received))
        return wire.decode_message(self.payloads.pop(0))

    def close(self) -> None:
        self.sock.close()


class BlobsWithoutSnapshots(MemoryStorage):
    """A storage with blobs but no ``last_tid()``: the server cannot offer ``blob-tids``."""

    capabilities = frozenset({CAP_PACK, CAP_BLOBS})


class ForgetfulStorage(MemoryStorage):
    """Keeps no blob version but the latest: an older tid is SNAPSHOT_TOO_OLD."""

    def open_blob(self, oid: bytes, tid: int | None = None) -> BinaryIO:
        if tid is not None and tid < self.last_tid():
            raise SnapshotTooOldError(tid, self.last_tid())
        return super().open_blob(oid, tid)


def commit_blob(storage: Storage, oid: bytes, content: bytes, record: bytes) -> None:
    storage.begin()
    storage.store(oid, record, b"")
    storage.store_blob(oid, io.BytesIO(content))
    storage.end()


def read_blob(oid: bytes, tid: int, offset: int = 0, length: int = CHUNK) -> bytes:
    return wire.ReadBlob(oid, tid, offset, length).encode()


# --- the codec ---------------------------------------------------------------------


@pytest.mark.req("WIRE-137")
def test_blob_data_at_matches_the_spec_examples() -> None:
    examples: dict[wire.Message, str] = {
        wire.Hello(features=BLOBS_AND_TIDS): (
            "00 00 00 1a 01 44 48 52 56 00 01 00 00 00 0f 62 6c 6f 62 73 20 62 6c 6f 62 2d 74"
            " 69 64 73"
        ),
        wire.BlobDataAt(1, b"ab"): "00 00 00 0b 91 00 00 00 00 00 00 00 01 61 62",
        wire.BlobDataAt(1, b""): "00 00 00 09 91 00 00 00 00 00 00 00 01",
    }
    spec = (Path(__file__).parent.parent / "spec" / "wire-protocol.md").read_text()
    flat = " ".join(spec.split())
    for message, text in examples.items():
        encoded = bytes.fromhex(text)
        assert message.encode() == encoded
        assert wire.decode_message(encoded[4:]) == message
        assert text in flat, text
    assert "| 0x91 | BLOB_DATA_AT |" in spec
    assert "| BLOB_DATA_AT | `91` |" in spec


@pytest.mark.req("WIRE-137")
@pytest.mark.parametrize(
    "payload",
    [
        *(bytes([T.BLOB_DATA_AT]) + bytes(size) for size in range(8)),
        bytes([T.BLOB_DATA_AT]) + b"\xff" * 8 + b"ab",
        bytes([T.BLOB_DATA_AT]) + bytes(7) + b"\x01" + bytes(CHUNK + 1),
    ],
    ids=[*(f"body-{size}-bytes" for size in range(8)), "tid-session-snapshot", "too-much-data"],
)
def test_a_malformed_blob_data_at_is_refused(payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        wire.decode_message(payload)


@pytest.mark.req("WIRE-137")
def test_a_full_chunk_and_an_empty_one_decode() -> None:
    full = bytes([T.BLOB_DATA_AT]) + bytes(7) + b"\x05" + b"x" * CHUNK
    assert wire.decode_message(full) == wire.BlobDataAt(5, b"x" * CHUNK)
    assert wire.decode_message(bytes([T.BLOB_DATA_AT]) + bytes(8)) == wire.BlobDataAt(0, b"")


# --- the server --------------------------------------------------------------------


@pytest.mark.req("WIRE-137")
def test_blob_tids_is_offered_with_blobs_and_snapshots_only(
    serve: Callable[..., Running], clients: Callable[..., ClientStorage]
) -> None:
    raw = Raw(serve().address)
    assert wire.FEATURE_BLOB_TIDS in raw.server_features
    raw.close()
    raw = Raw(serve(BlobsWithoutSnapshots()).address)
    assert wire.FEATURE_BLOBS in raw.server_features
    assert wire.FEATURE_BLOB_TIDS not in raw.server_features
    raw.close()
    # The session: blob-tids counts only in a blob session, both ends announcing it.
    for client_features, server_features, expected in [
        (BLOBS_AND_TIDS, BLOBS_AND_TIDS, True),
        (wire.FEATURE_BLOBS, BLOBS_AND_TIDS, False),
        (BLOBS_AND_TIDS, wire.FEATURE_BLOBS, False),
        (wire.FEATURE_BLOB_TIDS, BLOBS_AND_TIDS, False),
    ]:
        session = sessions.ServerSession(ServerLimits(), features=server_features)
        session.receive_data(wire.Hello(features=client_features).encode())
        while session.next_event() not in (sessions.NEED_DATA, sessions.PAUSED):
            pass
        assert session.blob_tids is expected, (client_features, server_features)


@pytest.mark.req("WIRE-137", "WIRE-133", "SRV-124")
def test_a_session_snapshot_read_outside_snapshots_names_its_tid(
    serve: Callable[..., Running],
) -> None:
    running = serve()
    commit_blob(running.storage, ROOT, b"first", b"v1")
    raw = Raw(running.address)
    assert raw.ask(read_blob(ROOT, wire.SESSION_SNAPSHOT)) == wire.BlobDataAt(1, b"first")
    commit_blob(running.storage, ROOT, b"second", b"v2")
    # A named tid is answered with BLOB_DATA, at that tid: the first version.
    assert raw.ask(read_blob(ROOT, 1, 2)) == wire.BlobData(b"rst")
    assert raw.ask(read_blob(ROOT, wire.SESSION_SNAPSHOT)) == wire.BlobDataAt(2, b"second")
    assert raw.ask(read_blob(ROOT, wire.SESSION_SNAPSHOT, 6)) == wire.BlobDataAt(2, b"")
    missing = raw.ask(read_blob(p64(9), wire.SESSION_SNAPSHOT))
    assert isinstance(missing, wire.Error) and missing.code == E.NO_SUCH_OBJECT
    assert list(missing.oids) == [p64(9)]
    raw.close()
    # A snapshot session reads at its snapshot and names no tid: BLOB_DATA.
    snapshot = Raw(running.address, f"{BLOBS_AND_TIDS} {wire.FEATURE_SNAPSHOTS}")
    assert snapshot.ask(read_blob(ROOT, wire.SESSION_SNAPSHOT)) == wire.BlobData(b"second")
    snapshot.close()


@pytest.mark.req("WIRE-133", "WIRE-137")
def test_an_old_client_still_gets_blob_data(serve: Callable[..., Running]) -> None:
    running = serve()
    commit_blob(running.storage, ROOT, b"content", b"v1")
    old = Raw(running.address, wire.FEATURE_BLOBS)
    assert wire.FEATURE_BLOB_TIDS in old.server_features
    assert old.ask(read_blob(ROOT, wire.SESSION_SNAPSHOT)) == wire.BlobData(b"content")
    assert old.ask(read_blob(ROOT, 1, 3, 2)) == wire.BlobData(b"te")
    old.close()


@pytest.mark.req("WIRE-137", "WIRE-091")
def test_a_blob_data_at_sent_to_the_server_costs_that_session_only(
    serve: Callable[..., Running],
) -> None:
    running = serve()
    commit_blob(running.storage, ROOT, b"content", b"v1")
    bystander = Raw(running.address)
    truncated = Raw(running.address)
    answer = truncated.ask(wire.frame(bytes([T.BLOB_DATA_AT]) + b"\x00\x01\x02"))
    assert isinstance(answer, wire.Error) and answer.code == E.MALFORMED
    assert truncated.receive() is None  # fatal: closed
    truncated.close()
    as_request = Raw(running.address)
    answer = as_request.ask(wire.BlobDataAt(1, b"x").encode())
    assert isinstance(answer, wire.Error) and answer.code == E.UNKNOWN_MESSAGE
    as_request.close()
    # The server goes on serving the others, the open session and a new one.
    assert bystander.ask(read_blob(ROOT, wire.SESSION_SNAPSHOT)) == wire.BlobDataAt(1, b"content")
    bystander.close()
    fresh = Raw(running.address)
    assert fresh.ask(read_blob(ROOT, 1)) == wire.BlobData(b"content")
    fresh.close()


# --- the client --------------------------------------------------------------------


@pytest.mark.req("WIRE-138", "SRV-125", "SRV-124")
@pytest.mark.parametrize("kind", ["memory", "file"])
def test_a_reader_without_snapshots_reads_one_version_while_another_client_commits(
    serve: Callable[..., Running],
    clients: Callable[..., ClientStorage],
    tmp_path: Path,
    kind: str,
) -> None:
    # FileStorage: JournalStorage.open_blob(oid, tid) below last_tid opens the
    # newest blob file at or below tid (BLOB-022), as the reader needs.
    running = serve(MemoryStorage() if kind == "memory" else FileStorage(tmp_path / "db"))
    first = os.urandom(3 * CHUNK)
    second = os.urandom(3 * CHUNK)
    writer = clients(running.address, snapshots=False)
    commit_blob(writer, ROOT, first, b"v1")
    reader_client = clients(running.address, snapshots=False)
    assert wire.FEATURE_BLOB_TIDS in reader_client.server_features
    with reader_client.open_blob(ROOT) as reader:
        head = reader.read(CHUNK)
        commit_blob(writer, ROOT, second, b"v2")
        rest = reader.read()
    assert head + rest == first
    # A new reader sees the new version, the whole of it.
    with reader_client.open_blob(ROOT) as reader:
        assert reader.read() == second


@pytest.mark.req("WIRE-138", "WIRE-134")
@pytest.mark.parametrize("kind", ["memory", "file"])
def test_a_version_packed_away_mid_read_raises_and_returns_no_other_bytes(
    serve: Callable[..., Running],
    clients: Callable[..., ClientStorage],
    tmp_path: Path,
    kind: str,
) -> None:
    running = serve(MemoryStorage() if kind == "memory" else FileStorage(tmp_path / "db"))
    first = os.urandom(3 * CHUNK)
    writer = clients(running.address, snapshots=False)
    commit_blob(writer, ROOT, first, b"v1")
    reader_client = clients(running.address, snapshots=False)
    reader = reader_client.open_blob(ROOT)
    head = reader.read(CHUNK)
    assert head == first[:CHUNK]
    commit_blob(writer, ROOT, os.urandom(3 * CHUNK), b"v2")
    writer.pack()  # nobody holds tid 1: its blob goes
    with pytest.raises(DhruvaKeyError, match="no longer stored"):
        reader.read()
    reader.close()
    # The session goes on: a new reader reads the latest version.
    with reader_client.open_blob(ROOT) as again:
        assert len(again.read()) == 3 * CHUNK


@pytest.mark.req("WIRE-138", "WIRE-134")
def test_a_version_the_server_no_longer_keeps_is_snapshot_too_old(
    serve: Callable[..., Running], clients: Callable[..., ClientStorage]
) -> None:
    running = serve(ForgetfulStorage())
    writer = clients(running.address, snapshots=False)
    commit_blob(writer, ROOT, os.urandom(2 * CHUNK), b"v1")
    reader_client = clients(running.address, snapshots=False)
    reader = reader_client.open_blob(ROOT)
    reader.read(CHUNK)
    commit_blob(writer, ROOT, os.urandom(2 * CHUNK), b"v2")
    with pytest.raises(SnapshotTooOldError):
        reader.read()
    reader.close()


@pytest.mark.req("SRV-125", "WIRE-138")
def test_the_client_reads_from_a_server_without_blob_tids(
    serve: Callable[..., Running], clients: Callable[..., ClientStorage]
) -> None:
    running = serve(BlobsWithoutSnapshots())
    client = clients(running.address)
    assert wire.FEATURE_BLOB_TIDS not in client.server_features
    content = os.urandom(2 * CHUNK + 3)
    commit_blob(client, ROOT, content, b"v1")
    with client.open_blob(ROOT) as reader:
        assert reader.read() == content


class FakeServer:
    """A peer that answers HELLO with the blob features, then READ_BLOB with ``answer``."""

    def __init__(self, path: str, answer: bytes) -> None:
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(1)
        self.address = path
        self.answer = answer
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            decoder = wire.FrameDecoder()
            replies = [
                wire.HelloOk(features=BLOBS_AND_TIDS, storage_capabilities="blobs").encode(),
                self.answer,
            ]
            for reply in replies:
                payloads: list[bytes] = []
                while not payloads:
                    data = conn.recv(4096)
                    if not data:
                        return
                    payloads = decoder.feed(data)
                conn.sendall(reply)
            conn.recv(4096)  # until the client closes

    def close(self) -> None:
        self.listener.close()
        self.thread.join(10)


@pytest.mark.req("WIRE-137", "WIRE-138")
@pytest.mark.parametrize(
    "answer",
    [
        wire.frame(bytes([T.BLOB_DATA_AT]) + b"\x00\x00\x01"),
        wire.frame(bytes([T.BLOB_DATA_AT]) + b"\xff" * 8 + b"ab"),
        wire.BlobData(b"ab").encode(),
    ],
    ids=["truncated-tid", "tid-session-snapshot", "blob-data-without-its-tid"],
)
def test_the_client_refuses_a_bad_answer_to_its_first_read(
    tmp_path: Path, clients: Callable[..., ClientStorage], answer: bytes
) -> None:
    fake = FakeServer(str(tmp_path / "fake.sock"), answer)
    try:
        client = clients(fake.address, snapshots=False, timeout_s=10)
        with pytest.raises(ServerConnectionError):
            client.open_blob(ROOT)
        # Broken for good: no later call trusts that server.
        with pytest.raises(ServerConnectionError):
            client.open_blob(ROOT)
    finally:
        fake.close()


@pytest.mark.req("WIRE-138")
def test_blob_data_at_to_a_read_at_a_named_tid_breaks_the_connection(
    tmp_path: Path, clients: Callable[..., ClientStorage]
) -> None:
    fake = FakeServer(str(tmp_path / "fake.sock"), wire.BlobDataAt(3, b"ab").encode())
    try:
        client = clients(fake.address, snapshots=False, timeout_s=10)
        with pytest.raises(ServerConnectionError):
            client.open_blob(ROOT, 3)
    finally:
        fake.close()
