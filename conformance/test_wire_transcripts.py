"""Wire-protocol transcripts (``vectors/wire/*.json``) replayed against a server.

Spec: ``spec/wire-protocol.md``; every field of a transcript, what this
replayer compares and what it ignores, is in ``vectors/README.md``.

By default each transcript runs against a fresh in-process server over a
MemoryStorage.  To check another server (another implementation, another
language), start it on an empty database and give its address:

    pytest --pyargs dhruva_conformance -k wire_transcripts \\
        --dhruva-server-address 127.0.0.1:2972

(or set ``DHRUVA_SERVER_ADDRESS``; a path means a Unix socket).  Against an
external server, transcripts marked ``fresh`` run only with
``--dhruva-server-fresh``, since they expect an empty database and so can
pass only once per server start.  The transcripts with a ``server`` object
(authentication) run against an external server only with
``--dhruva-server-auth``, given when that server was started with the
transcripts' secret; the others are then skipped.  The server's nonces are
fresh (WIRE-030), so the replayer recomputes the proofs that depend on them:
an AUTH whose proof is right for the recorded nonce is sent with the proof
for the nonce received, and AUTH_OK is expected with the matching server
proof.  The in-process servers draw their nonces at random, as a real one
does, so the same rule is exercised on every run.
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
from dhruva.server import security
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


class _Auth:
    """What the replayer knows of one client's authentication (README, "Authentication")."""

    def __init__(self, server: dict[str, Any] | None) -> None:
        self.secret = bytes.fromhex(server["secret"]) if server else b""
        self.recorded = [bytes.fromhex(n) for n in server["server_nonces"]] if server else []
        self.recorded_nonce = b""
        self.live_nonce = b""
        self.client_nonce = b""

    def outgoing(self, data: bytes) -> bytes:
        """Re-prove an AUTH that was right for the recorded nonce with the live one."""
        if not self.secret or len(data) <= wire.FRAME_HEADER.size:
            return data
        payload = data[wire.FRAME_HEADER.size :]
        if payload[0] != wire.MessageType.AUTH:
            return data
        message = wire.decode_message(payload)
        assert isinstance(message, wire.Auth)
        self.client_nonce = message.client_nonce
        right = security.client_proof(self.secret, self.recorded_nonce, message.client_nonce)
        if message.proof != right:
            return data  # a wrong proof stays wrong
        proof = security.client_proof(self.secret, self.live_nonce, message.client_nonce)
        return wire.Auth(message.mechanism, message.client_nonce, proof).encode()


def _matches(expected_frame: bytes, payload: bytes, auth: _Auth) -> bool:
    expected = wire.decode_message(expected_frame[wire.FRAME_HEADER.size :])
    actual = wire.decode_message(payload)
    if isinstance(expected, wire.Error):
        return (
            isinstance(actual, wire.Error)
            and actual.code == expected.code
            and list(actual.oids) == list(expected.oids)
        )
    if isinstance(expected, wire.AuthChallenge):
        # [WIRE-030] The nonce is the server's own, 32 bytes; the replayer keeps it.
        if not isinstance(actual, wire.AuthChallenge) or len(actual.server_nonce) != 32:
            return False
        auth.recorded_nonce = expected.server_nonce
        auth.live_nonce = actual.server_nonce
        return actual.mechanism == expected.mechanism
    if isinstance(expected, wire.AuthOk):
        server_proof = expected.server_proof
        if auth.live_nonce:
            server_proof = security.server_proof(auth.secret, auth.live_nonce, auth.client_nonce)
        return (
            isinstance(actual, wire.AuthOk)
            and actual.server_proof == server_proof
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
    auths: dict[str, _Auth] = {}
    try:
        for index, step in enumerate(transcript["steps"]):
            name = step["client"]
            if name not in peers:
                peers[name] = _Peer(address)
                auths[name] = _Auth(transcript.get("server"))
            peer, auth = peers[name], auths[name]
            where = f"{transcript['name']} step {index} (client {name})"
            if "send" in step:
                peer.sock.sendall(auth.outgoing(bytes.fromhex(step["send"])))
            elif "expect" in step:
                payload = peer.receive()
                assert payload is not None, f"{where}: connection closed, expected a frame"
                assert _matches(bytes.fromhex(step["expect"]), payload, auth), (
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


# The union of the transcripts' requirement IDs, for tests/test_requirements.py,
# which reads markers from the source; each case carries its own IDs as well.
@pytest.mark.req(
    "SRV-020", "SRV-022", "SRV-023", "SRV-080", "SRV-100", "SRV-102", "SRV-104", "SRV-107",
    "WIRE-010", "WIRE-011", "WIRE-012", "WIRE-013", "WIRE-014", "WIRE-020", "WIRE-021",
    "WIRE-022", "WIRE-030", "WIRE-031", "WIRE-033", "WIRE-040", "WIRE-050", "WIRE-051",
    "WIRE-055", "WIRE-056", "WIRE-060", "WIRE-070", "WIRE-071", "WIRE-072", "WIRE-080",
    "WIRE-085", "WIRE-091", "WIRE-100", "WIRE-101", "WIRE-102", "WIRE-104", "WIRE-105",
    "WIRE-106", "WIRE-107", "WIRE-108", "WIRE-109", "WIRE-112", "WIRE-114",
    "SRV-120", "SRV-122", "SRV-124", "WIRE-130", "WIRE-131", "WIRE-132", "WIRE-133",
    "WIRE-134", "WIRE-135", "WIRE-136", "WIRE-137",
)  # fmt: skip
@pytest.mark.parametrize(
    "path",
    [
        pytest.param(
            p, marks=pytest.mark.req(*json.loads(p.read_text())["requirements"]), id=p.stem
        )
        for p in TRANSCRIPTS
    ],
)
def test_transcript(
    path: Path, server_address: Address | None, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    transcript = json.loads(path.read_text())
    configured = transcript.get("server")
    if server_address is not None:
        if bool(configured) != bool(_option(request.config, "dhruva_server_auth")):
            pytest.skip(
                "an authentication transcript: needs --dhruva-server-auth"
                if configured
                else "runs against a server without a secret (not --dhruva-server-auth)"
            )
        if transcript["fresh"] and not _option(request.config, "dhruva_server_fresh"):
            pytest.skip("needs an empty database: pass --dhruva-server-fresh to run it")
        replay(server_address, transcript)
        return
    options: dict[str, Any] = {}
    if configured:
        options = {"secret": bytes.fromhex(configured["secret"])}
    server = StorageServer(MemoryStorage(), str(tmp_path / "wire.sock"), **options)
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    try:
        replay(server.address, transcript)
    finally:
        server.stop()
        thread.join()


def test_transcripts_cite_what_the_marker_lists() -> None:
    """The static marker above is exactly the union of the transcripts' IDs."""
    marker = next(m for m in test_transcript.pytestmark if m.name == "req")  # type: ignore[attr-defined]
    cited = {i for p in TRANSCRIPTS for i in json.loads(p.read_text())["requirements"]}
    assert set(marker.args) == cited


def test_there_are_transcripts() -> None:
    assert len(TRANSCRIPTS) >= 10
