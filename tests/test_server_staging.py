"""The per-client cap on bytes staged before COMMIT (spec: server.md, SRV-085)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from dhruva import wire
from dhruva.client_storage import ClientStorage
from dhruva.error import DhruvaError, DhruvaKeyError
from dhruva.server.session import ServerLimits
from dhruva.server.storage_server import StorageServer
from dhruva.storage import MemoryStorage, Record
from dhruva.tools.config import load_settings
from dhruva.utils import int8_to_str

CAP = 1000


@pytest.fixture
def server(tmp_path: Path) -> Iterator[StorageServer]:
    running = StorageServer(
        MemoryStorage(),
        str(tmp_path / "s.sock"),
        check_oids=False,
        limits=ServerLimits(max_staged_bytes=CAP),
    )
    thread = threading.Thread(target=running.serve, daemon=True)
    thread.start()
    yield running
    running.stop()
    thread.join()


class Raw:
    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(address)
        self.decoder = wire.FrameDecoder()
        self.payloads: list[bytes] = []
        assert isinstance(self.ask(wire.Hello()), wire.HelloOk)

    def ask(self, message: wire.Message, *before: bytes) -> wire.Message:
        self.sock.sendall(b"".join(before) + message.encode())
        while not self.payloads:
            data = self.sock.recv(65536)
            assert data, "the server closed the connection"
            self.payloads.extend(self.decoder.feed(data))
        return wire.decode_message(self.payloads.pop(0))


def record(number: int, size: int) -> Record:
    return Record(int8_to_str(number), b"x" * (size - 16), b"")


@pytest.mark.req("SRV-085")
def test_too_much_staged_is_refused_at_commit_and_the_session_goes_on(
    server: StorageServer,
) -> None:
    assert isinstance(server.address, str)
    raw = Raw(server.address)
    stage = wire.Stage([record(1, 600)]).encode() + wire.Stage([record(2, 600)]).encode()
    reply = raw.ask(wire.Commit([record(3, 20)]), stage)
    assert isinstance(reply, wire.Error) and reply.code == wire.ErrorCode.TOO_LARGE
    assert "max_staged_bytes" in reply.message
    # Not fatal: the connection is open and nothing of the transaction exists.
    assert isinstance(raw.ask(wire.Empty(wire.MessageType.SYNC)), wire.Oids)
    for number in (1, 2, 3):
        missing = raw.ask(wire.Load(int8_to_str(number)))
        assert isinstance(missing, wire.Error)
        assert missing.code == wire.ErrorCode.NO_SUCH_OBJECT
    # The next transaction starts empty: at the cap exactly, it commits.
    reply = raw.ask(wire.Commit([record(5, 500)]), wire.Stage([record(4, 500)]).encode())
    assert isinstance(reply, wire.Committed)
    loaded = raw.ask(wire.Load(int8_to_str(4)))
    assert isinstance(loaded, wire.RecordMessage)
    raw.sock.close()


@pytest.mark.req("SRV-085")
def test_commit_alone_over_the_cap_is_refused(server: StorageServer) -> None:
    assert isinstance(server.address, str)
    raw = Raw(server.address)
    reply = raw.ask(wire.Commit([record(1, 700), record(2, 700)]))
    assert isinstance(reply, wire.Error) and reply.code == wire.ErrorCode.TOO_LARGE
    assert isinstance(raw.ask(wire.Commit([record(1, 700)])), wire.Committed)
    raw.sock.close()


@pytest.mark.req("SRV-085")
def test_client_storage_reports_a_clear_error(server: StorageServer) -> None:
    assert isinstance(server.address, str)
    client = ClientStorage(server.address)
    oid = client.new_oid()
    client.begin()
    client.store(oid, b"y" * 5000, b"")
    with pytest.raises(DhruvaError, match="max_staged_bytes"):
        client.end()
    with pytest.raises(DhruvaKeyError):
        client.load(oid)
    client.begin()
    client.store(oid, b"small", b"")
    client.end()
    assert client.load(oid).data == b"small"
    client.close()


def test_max_staged_bytes_is_a_setting() -> None:
    settings = load_settings({"max_staged_bytes": 4096}, environ={})
    assert settings.limits().max_staged_bytes == 4096
    with pytest.raises(ValueError):
        ServerLimits(max_staged_bytes=0)
