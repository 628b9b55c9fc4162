"""Wire-protocol transcripts (``vectors/wire/*.json``) replayed against a server.

Spec: ``spec/wire-protocol.md``; the transcript format is described in
``vectors/wire/generate.py``.

By default each transcript runs against a fresh in-process server over a
MemoryStorage.  To check another server (another implementation, another
language), start it on an empty database and give its address:

    pytest --pyargs dhruva_conformance -k wire_transcripts \\
        --dhruva-server-address 127.0.0.1:2972

(or set ``DHRUVA_SERVER_ADDRESS``; a path means a Unix socket).  Against an
external server, transcripts marked ``fresh`` run only with
``--dhruva-server-fresh``, since they expect an empty database and so can
pass only once per server start.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dhruva import wire
from dhruva.server.storage_server import Address, StorageServer
from dhruva.storage import MemoryStorage

VECTORS = Path(__file__).parent / "vectors" / "wire"
TRANSCRIPTS = sorted(VECTORS.glob("*.json"))
_TIMEOUT_S = 10.0


def parse_address(text: str) -> Address:
    """``host:port`` or a Unix socket path."""
    if "/" in text:
        return text
    host, _, port = text.rpartition(":")
    return (host or "127.0.0.1", int(port))


def _option(config: pytest.Config, name: str) -> Any:
    try:
        return config.getoption(name)
    except ValueError:
        return None


@pytest.fixture
def server_address(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Address | None]:
    """The external server's address, or None to start one per transcript."""
    text = _option(request.config, "dhruva_server_address") or os.environ.get(
        "DHRUVA_SERVER_ADDRESS"
    )
    yield parse_address(text) if text else None


class _Peer:
    def __init__(self, address: Address) -> None:
        if isinstance(address, str):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(_TIMEOUT_S)
            self.sock.connect(address)
        else:
            self.sock = socket.create_connection(address, timeout=_TIMEOUT_S)
        self.decoder = wire.FrameDecoder()
        self.payloads: list[bytes] = []

    def receive(self) -> bytes | None:
        """Return the next payload, or None when the server closed the connection."""
        while not self.payloads:
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                return None
            if not data:
                return None
            self.payloads.extend(self.decoder.feed(data))
        return self.payloads.pop(0)


def _matches(expected_frame: bytes, payload: bytes) -> bool:
    expected = wire.decode_message(expected_frame[wire.FRAME_HEADER.size :])
    actual = wire.decode_message(payload)
    if isinstance(expected, wire.Error):
        return (
            isinstance(actual, wire.Error)
            and actual.code == expected.code
            and list(actual.oids) == list(expected.oids)
        )
    if isinstance(expected, wire.AuthOk):
        return (
            isinstance(actual, wire.AuthOk)
            and actual.server_proof == expected.server_proof
            and actual.magic == expected.magic
            and actual.major == expected.major
        )
    if isinstance(expected, wire.HelloOk):
        return (
            isinstance(actual, wire.HelloOk)
            and actual.magic == expected.magic
            and actual.major == expected.major
        )
    return payload == expected_frame[wire.FRAME_HEADER.size :]


def replay(address: Address, transcript: dict[str, Any]) -> None:
    """Run one transcript against the server at ``address``; assert every step."""
    peers: dict[str, _Peer] = {}
    try:
        for index, step in enumerate(transcript["steps"]):
            name = step["client"]
            if name not in peers:
                peers[name] = _Peer(address)
            peer = peers[name]
            where = f"{transcript['name']} step {index} (client {name})"
            if "send" in step:
                peer.sock.sendall(bytes.fromhex(step["send"]))
            elif "expect" in step:
                payload = peer.receive()
                assert payload is not None, f"{where}: connection closed, expected a frame"
                assert _matches(bytes.fromhex(step["expect"]), payload), (
                    f"{where}: expected {step['expect']}, got"
                    f" {wire.FRAME_HEADER.pack(len(payload)).hex()}{payload.hex()}"
                )
            else:
                assert step.get("expect_close"), f"{where}: unknown step {step}"
                payload = peer.receive()
                assert payload is None, f"{where}: expected close, got {payload.hex()}"
    finally:
        for peer in peers.values():
            peer.sock.close()


@pytest.mark.req(
    "WIRE-010",
    "WIRE-012",
    "WIRE-013",
    "WIRE-020",
    "WIRE-021",
    "WIRE-022",
    "WIRE-030",
    "WIRE-031",
    "WIRE-032",
    "SRV-080",
)
@pytest.mark.parametrize("path", TRANSCRIPTS, ids=[p.stem for p in TRANSCRIPTS])
def test_transcript(
    path: Path, server_address: Address | None, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    transcript = json.loads(path.read_text())
    configured = transcript.get("server")
    if server_address is not None and configured:
        pytest.skip("needs a server configured with this transcript's secret and nonces")
    if server_address is not None:
        if transcript["fresh"] and not _option(request.config, "dhruva_server_fresh"):
            pytest.skip("needs an empty database: pass --dhruva-server-fresh to run it")
        replay(server_address, transcript)
        return
    options: dict[str, Any] = {}
    if configured:
        nonces = iter(bytes.fromhex(n) for n in configured["server_nonces"])
        options = {
            "secret": bytes.fromhex(configured["secret"]),
            "nonce_source": lambda: next(nonces),
        }
    server = StorageServer(MemoryStorage(), str(tmp_path / "wire.sock"), **options)
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    try:
        replay(server.address, transcript)
    finally:
        server.stop()
        thread.join()


def test_there_are_transcripts() -> None:
    assert len(TRANSCRIPTS) >= 10
