"""TLS, authentication and per-connection limits of the storage server.

Spec: wire-protocol.md ("Authentication", "TLS") and server.md ("Security",
"Limits").  Servers run in a thread of the test process, on 127.0.0.1 or a
Unix socket; certificates are made at test time (tests/_tls_certs.py).
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from _tls_certs import Certificates, make_certificates

from dhruva import wire
from dhruva.client_storage import ClientStorage, ServerConnectionError
from dhruva.error import AuthenticationError, DhruvaError, ReadOnlyError
from dhruva.server import security
from dhruva.server.storage_server import ServerLimits, StorageServer
from dhruva.storage import MemoryStorage, Storage
from dhruva.utils import ROOT_OID

SECRET = b"correct horse battery staple 0123456789"
E = wire.ErrorCode


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certs"))


class Running:
    def __init__(self, server: StorageServer) -> None:
        self.server = server
        self.thread = threading.Thread(target=server.serve, daemon=True)
        self.thread.start()

    @property
    def address(self) -> Any:
        return self.server.address

    def stop(self) -> None:
        self.server.stop()
        self.thread.join()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Running]]:
    started: list[Running] = []

    def start(storage: Storage | None = None, unix: bool = False, **options: Any) -> Running:
        address: Any = str(tmp_path / f"s{len(started)}.sock") if unix else ("127.0.0.1", 0)
        server = StorageServer(
            storage if storage is not None else MemoryStorage(), address, **options
        )
        running = Running(server)
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


def server_tls(certs: Certificates, require_client_cert: bool = False) -> ssl.SSLContext:
    return security.server_context(
        certs.server_cert, certs.server_key, certs.ca, require_client_cert
    )


def client_tls(certs: Certificates, with_cert: bool = True) -> ssl.SSLContext:
    if with_cert:
        return security.client_context(certs.ca, certs.client_cert, certs.client_key)
    return security.client_context(certs.ca)


def raw_connect(address: Any) -> socket.socket:
    sock = socket.create_connection(address, timeout=10)
    return sock


_pending: dict[int, tuple[wire.FrameDecoder, list[bytes]]] = {}


def receive_frame(sock: socket.socket) -> wire.Message | None:
    """The next frame on ``sock`` (frames read ahead are kept per socket), None at close."""
    decoder, payloads = _pending.setdefault(id(sock), (wire.FrameDecoder(), []))
    while not payloads:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            return None
        if not data:
            return None
        payloads.extend(decoder.feed(data))
    return wire.decode_message(payloads.pop(0))


def round_trip(client: ClientStorage) -> None:
    oid = client.new_oid()
    client.begin()
    client.store(oid, b"state", b"")
    client.end()
    assert client.load(oid).data == b"state"


# --- TLS ---------------------------------------------------------------------------


def test_tls_session_works(serve: Callable[..., Running], certs: Certificates) -> None:
    running = serve(tls=server_tls(certs))
    client = ClientStorage(running.address, tls=client_tls(certs, with_cert=False))
    round_trip(client)
    client.close()


def test_tls_with_client_certificates(serve: Callable[..., Running], certs: Certificates) -> None:
    running = serve(tls=server_tls(certs, require_client_cert=True))
    client = ClientStorage(running.address, tls=client_tls(certs))
    round_trip(client)
    client.close()
    # No certificate, or one from an authority the server does not trust: refused.
    with pytest.raises(AuthenticationError, match="client certificate"):
        ClientStorage(running.address, tls=client_tls(certs, with_cert=False))
    rogue = security.client_context(certs.ca, certs.rogue_client_cert, certs.rogue_client_key)
    with pytest.raises(AuthenticationError):
        ClientStorage(running.address, tls=rogue)


def test_client_refuses_an_untrusted_server_certificate(
    serve: Callable[..., Running], certs: Certificates
) -> None:
    running = serve(tls=server_tls(certs))
    with pytest.raises(AuthenticationError, match="does not verify"):
        ClientStorage(running.address, tls=security.client_context(certs.rogue_ca))


@pytest.mark.req("WIRE-034")
def test_plaintext_client_on_a_tls_server_is_told(
    serve: Callable[..., Running], certs: Certificates
) -> None:
    running = serve(tls=server_tls(certs))
    sock = raw_connect(running.address)
    sock.sendall(wire.Hello().encode())
    answer = receive_frame(sock)
    assert isinstance(answer, wire.Error) and answer.code == E.TLS_REQUIRED
    assert receive_frame(sock) is None
    sock.close()
    with pytest.raises(AuthenticationError, match="requires TLS"):
        ClientStorage(running.address)


def test_tls_client_on_a_plain_server_is_a_clear_error(
    serve: Callable[..., Running], certs: Certificates
) -> None:
    running = serve()
    with pytest.raises(ServerConnectionError, match="TLS"):
        ClientStorage(running.address, tls=client_tls(certs))


@pytest.mark.req("SRV-081", "SRV-002")
def test_idle_tls_client_blocks_nobody(serve: Callable[..., Running], certs: Certificates) -> None:
    """The predecessor froze on one idle TLS connection; this one must not."""
    running = serve(tls=server_tls(certs), secret=SECRET)
    idle = raw_connect(running.address)  # never sends its ClientHello
    half = raw_connect(running.address)
    half.sendall(b"\x16\x03\x01\x00")  # the first bytes of a ClientHello, then silence
    try:
        client = ClientStorage(running.address, tls=client_tls(certs), secret=SECRET)
        round_trip(client)
        # STOP works while both are still connected.
        ClientStorage(running.address, tls=client_tls(certs), secret=SECRET).stop_server()
        running.thread.join()
        assert not running.thread.is_alive()
        client.close()
    finally:
        idle.close()
        half.close()


@pytest.mark.req("SRV-081")
def test_handshake_timeout_closes_stalled_clients(
    serve: Callable[..., Running], certs: Certificates
) -> None:
    limits = ServerLimits(handshake_timeout_s=0.2)
    tls_running = serve(tls=server_tls(certs), limits=limits)
    idle = raw_connect(tls_running.address)
    assert idle.recv(1) == b""  # closed by the server, not by our timeout
    idle.close()
    plain = serve(secret=SECRET, limits=limits)
    sock = raw_connect(plain.address)
    sock.sendall(wire.Hello().encode())
    assert isinstance(receive_frame(sock), wire.AuthChallenge)
    answer = receive_frame(sock)  # no AUTH sent: the deadline passes
    assert isinstance(answer, wire.Error) and answer.code == E.TIMEOUT
    sock.close()


@pytest.mark.req("SRV-081")
def test_idle_timeout(serve: Callable[..., Running]) -> None:
    running = serve(limits=ServerLimits(idle_timeout_s=0.2))
    client = ClientStorage(running.address)
    sock = client._sock
    answer = receive_frame(sock)
    assert isinstance(answer, wire.Error) and answer.code == E.TIMEOUT
    client.close()


# --- authentication ----------------------------------------------------------------


@pytest.mark.req("WIRE-030", "WIRE-031", "WIRE-032")
def test_authenticated_session(serve: Callable[..., Running]) -> None:
    running = serve(secret=SECRET)
    client = ClientStorage(running.address, secret=SECRET)
    round_trip(client)
    client.close()
    # Text secrets are their UTF-8 bytes.
    ClientStorage(running.address, secret=SECRET.decode()).close()


@pytest.mark.req("WIRE-031", "SRV-080")
def test_wrong_or_missing_secret_refused(serve: Callable[..., Running]) -> None:
    running = serve(secret=SECRET)
    with pytest.raises(AuthenticationError, match="refused the shared secret"):
        ClientStorage(running.address, secret=b"wrong")
    with pytest.raises(AuthenticationError, match="requires authentication"):
        ClientStorage(running.address)


@pytest.mark.req("WIRE-035")
def test_client_with_secret_refuses_a_server_without_authentication(
    serve: Callable[..., Running],
) -> None:
    running = serve()
    with pytest.raises(AuthenticationError, match="does not ask for authentication"):
        ClientStorage(running.address, secret=SECRET)


@pytest.mark.req("WIRE-032")
def test_client_refuses_a_server_with_a_wrong_proof(tmp_path: Path) -> None:
    """A fake server that accepts any proof but cannot prove the secret itself."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    path = str(tmp_path / "fake.sock")
    listener.bind(path)
    listener.listen(1)

    def fake() -> None:
        conn, _ = listener.accept()
        with conn:
            decoder = wire.FrameDecoder()
            replies = [
                wire.AuthChallenge(security.AUTH_MECHANISM, b"n" * 32).encode(),
                wire.AuthOk(b"\0" * 32).encode(),
            ]
            while replies:
                data = conn.recv(4096)
                if not data:
                    return
                for _ in decoder.feed(data):
                    conn.sendall(replies.pop(0))

    thread = threading.Thread(target=fake, daemon=True)
    thread.start()
    with pytest.raises(AuthenticationError, match="impostor"):
        ClientStorage(path, secret=SECRET)
    thread.join()
    listener.close()


@pytest.mark.req("SRV-080")
@pytest.mark.parametrize(
    "request_frame",
    [
        wire.Load(ROOT_OID).encode(),
        wire.Commit([]).encode(),
        wire.NewOids(1).encode(),
        wire.Empty(wire.MessageType.PACK).encode(),
        wire.Empty(wire.MessageType.STOP).encode(),
        wire.Hello().encode(),
    ],
    ids=["load", "commit", "new-oids", "pack", "stop", "hello-again"],
)
def test_unauthenticated_requests_are_refused(
    serve: Callable[..., Running], request_frame: bytes
) -> None:
    storage = MemoryStorage()
    running = serve(storage, secret=SECRET)
    sock = raw_connect(running.address)
    # HELLO and the request in one write: the server must not run it.
    sock.sendall(wire.Hello().encode() + request_frame)
    assert isinstance(receive_frame(sock), wire.AuthChallenge)
    answer = receive_frame(sock)
    assert isinstance(answer, wire.Error) and answer.code == E.AUTH_REQUIRED
    assert receive_frame(sock) is None
    sock.close()
    # The server still runs and nothing happened to the storage.
    client = ClientStorage(running.address, secret=SECRET)
    assert client.get_size() == 0
    client.close()


@pytest.mark.req("WIRE-036")
def test_secret_never_on_the_wire(tmp_path: Path) -> None:
    """Relay one client's bytes through a socket pair and look for the secret in them."""
    seen = bytearray()
    server = StorageServer(MemoryStorage(), str(tmp_path / "s.sock"), secret=SECRET)
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    relay_path = str(tmp_path / "relay.sock")
    relay = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    relay.bind(relay_path)
    relay.listen(1)

    def pump(src: socket.socket, dst: socket.socket) -> None:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if not data:
                src.close()
                dst.close()
                return
            seen.extend(data)
            dst.sendall(data)

    def accept() -> None:
        conn, _ = relay.accept()
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        upstream.connect(str(server.address))
        threading.Thread(target=pump, args=(upstream, conn), daemon=True).start()
        pump(conn, upstream)

    relay_thread = threading.Thread(target=accept, daemon=True)
    relay_thread.start()
    client = ClientStorage(relay_path, secret=SECRET)
    round_trip(client)
    client.close()
    relay_thread.join(10)
    server.stop()
    thread.join()
    relay.close()
    assert len(seen) > 100
    assert SECRET not in seen
    assert SECRET[:16] not in seen


@pytest.mark.req("SRV-084")
def test_secret_never_in_the_log(
    serve: Callable[..., Running], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="dhruva")
    running = serve(secret=SECRET)
    ClientStorage(running.address, secret=SECRET).close()
    with pytest.raises(AuthenticationError):
        ClientStorage(running.address, secret=b"a wrong secret")
    running.stop()
    text = "\n".join(r.getMessage() + repr(r.__dict__) for r in caplog.records)
    assert "authenticated yes" in text
    assert "authentication failed" in text
    assert SECRET.decode() not in text
    assert "a wrong secret" not in text


# --- limits ------------------------------------------------------------------------


@pytest.mark.req("WIRE-033")
def test_large_frames_refused_before_the_handshake(serve: Callable[..., Running]) -> None:
    running = serve()
    sock = raw_connect(running.address)
    sock.sendall(wire.FRAME_HEADER.pack(wire.HANDSHAKE_MAX_FRAME_SIZE + 1))
    answer = receive_frame(sock)
    assert isinstance(answer, wire.Error) and answer.code == E.FRAME_TOO_LARGE
    sock.close()


def test_configured_max_frame_size(serve: Callable[..., Running]) -> None:
    running = serve(limits=ServerLimits(max_frame_bytes=wire.HANDSHAKE_MAX_FRAME_SIZE))
    client = ClientStorage(running.address)
    client.begin()
    client.store(client.new_oid(), b"x" * (wire.HANDSHAKE_MAX_FRAME_SIZE + 10), b"")
    with pytest.raises(DhruvaError, match="exceeds the maximum"):
        client.end()
    client.close()
    with pytest.raises(ValueError):
        ServerLimits(max_frame_bytes=wire.MAX_FRAME_SIZE + 1)


@pytest.mark.req("SRV-082")
def test_pipelining_client_is_paused_not_buffered(serve: Callable[..., Running]) -> None:
    running = serve(limits=ServerLimits(max_pending_requests=4, max_pending_bytes=1 << 16))
    sock = raw_connect(running.address)
    sock.sendall(wire.Hello().encode())
    assert isinstance(receive_frame(sock), wire.HelloOk)
    # Many requests, none of whose answers we read for now.
    count = 2000
    sock.sendall(wire.Empty(wire.MessageType.SIZE).encode() * count)
    session = next(iter(running.server._sessions))
    assert len(session.queue) <= 4 or session.paused
    # Every request is answered once we read.
    decoder = wire.FrameDecoder()
    answers: list[bytes] = []
    while len(answers) < count:
        data = sock.recv(65536)
        assert data
        answers.extend(decoder.feed(data))
    assert all(wire.decode_message(a) == wire.SizeIs(0) for a in answers)
    other = ClientStorage(running.address)
    assert other.get_size() == 0
    other.close()
    sock.close()


@pytest.mark.req("SRV-083")
def test_unix_socket_is_private(serve: Callable[..., Running]) -> None:
    previous = os.umask(0)
    try:
        running = serve(unix=True)
    finally:
        os.umask(previous)
    mode = stat.S_IMODE(os.stat(running.address).st_mode)
    assert mode == 0o600


@pytest.mark.req("SRV-060")
def test_readonly_with_authentication(serve: Callable[..., Running]) -> None:
    storage = MemoryStorage()
    running = serve(storage, secret=SECRET, readonly=True)
    client = ClientStorage(running.address, secret=SECRET)
    with pytest.raises(ReadOnlyError):
        client.pack()
    client.begin()
    client.store(ROOT_OID, b"x", b"")
    with pytest.raises(ReadOnlyError):
        client.end()
    client.close()
