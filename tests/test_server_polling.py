"""Busy polling before blocking, on both ends (server.md, "Speed"; no timing is asserted)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from dhruva import client_storage
from dhruva.client_storage import ClientStorage
from dhruva.server import storage_server
from dhruva.server.storage_server import StorageServer
from dhruva.storage import MemoryStorage


@pytest.fixture
def single_threaded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend each side is alone in its process, so that both poll."""
    monkeypatch.setattr(client_storage.threading, "active_count", lambda: 1)
    monkeypatch.setattr(storage_server.threading, "active_count", lambda: 1)


@pytest.mark.usefixtures("single_threaded")
@pytest.mark.parametrize("tcp", [True, False])
def test_polling_ends_serve_requests_correctly(tmp_path: Path, tcp: bool) -> None:
    address: storage_server.Address = ("127.0.0.1", 0) if tcp else str(tmp_path / "s.sock")
    server = StorageServer(MemoryStorage(), address, busy_poll_s=0.001)
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    try:
        client = ClientStorage(server.address, busy_poll_s=0.001)
        assert client._busy_poll_s == 0.001
        oid = client.new_oid()
        for number in range(200):
            client.begin()
            client.store(oid, b"state %d" % number, b"")
            client.end()
            assert client.load(oid).data == b"state %d" % number
        client.close()
    finally:
        server.stop()
        thread.join()


@pytest.mark.usefixtures("single_threaded")
def test_client_stops_polling_a_slow_server_for_a_while(tmp_path: Path) -> None:
    server = StorageServer(MemoryStorage(), str(tmp_path / "s.sock"), busy_poll_s=0)
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    try:
        # A window of a nanosecond: every poll misses.
        client = ClientStorage(server.address, busy_poll_s=1e-9)
        client._poll_misses = 0
        client._poll_pause = 0
        for _ in range(client_storage._POLL_MISSES_MAX):
            client._poll_answer()
        assert client._poll_pause == client_storage._POLL_PAUSE_REQUESTS
        client.sync()
        assert client._poll_pause == client_storage._POLL_PAUSE_REQUESTS - 1
        client.close()
    finally:
        server.stop()
        thread.join()


def test_no_polling_when_turned_off(tmp_path: Path) -> None:
    server = StorageServer(MemoryStorage(), str(tmp_path / "s.sock"))
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    try:
        client = ClientStorage(server.address, busy_poll_s=0)
        assert client._busy_poll_s == 0
        client.sync()
        client.close()
    finally:
        server.stop()
        thread.join()
