"""ClientStorage: the Storage interface, served by a dhruva storage server.

Spec: ``spec/wire-protocol.md`` (messages) and ``spec/server.md`` (consistency).

Theory of operation.  One blocking socket, one request at a time: send a
frame, read frames until the answer is complete.  ``begin``/``store`` only
collect records locally; ``end`` sends them as STAGE frames and one COMMIT
frame in a single write and waits for one answer, so a commit costs one round
trip (wire protocol, WIRE-070).  A successful COMMIT answer
carries the invalidations the server had for us (the commit synchronized us),
so the ``sync()`` a Connection makes right after a commit is answered from
them without a round trip.  ``new_oid`` takes oids from a batch the server
allocated ahead of time.

Handshake.  With ``tls`` the socket is wrapped in TLS before the first frame.
HELLO is answered by HELLO_OK, or, when the server requires authentication,
by AUTH_CHALLENGE: the client answers with AUTH (its proof of the shared
secret) and checks the server's proof in AUTH_OK before it trusts anything
the server says (spec: "Authentication").  A client given a secret refuses a
server that does not ask for it, since such a server proved nothing.

Snapshots (wire protocol, "Snapshots").  When both ends announce the
feature ``snapshots`` (and the served storage has them) the client declares
the capability ``snapshots``: the server answers every load as of the
session's snapshot, and SYNC and COMMIT answers carry the tid they move it
to, which :meth:`ClientStorage.last_tid` returns (a SYNC right after the
handshake learns the first one).  ``note_reads`` collects the transaction's
read set; ``end`` sends it as READS frames in the same write as STAGE and
COMMIT (none when nothing was read), and the server refuses the commit
with READ_CONFLICT when another client committed one of those oids after
the snapshot.  ``set_oldest_snapshot`` travels as HOLD with the next
request.  Against a server without the feature nothing of this is sent and
the capability is not declared.

Blobs (wire protocol, "Blobs").  When both ends announce the feature
``blobs`` the client declares the capability ``blobs``.  ``store_blob``
keeps a handle on the file's content (a duplicate descriptor of a regular
file, or else a streamed copy in a temporary file); ``end`` streams each as
BLOB_CHUNK frames of at most 1 MiB, read from the file as they are sent,
before the STAGE and COMMIT frames, so a blob is never whole in memory
[BLOB-015].  ``open_blob`` returns a buffered reader over
:class:`_BlobReader`, which asks READ_BLOB for 1 MiB at a time, at the
tid the blob was opened at: the snapshot's, or, without snapshots, the one
the server's first answer (BLOB_DATA_AT, feature ``blob-tids``) names, so
that the pieces are of one version whatever other clients commit.

Errors: an ERROR frame becomes the matching typed exception
(WriteConflictError, ReadConflictError, DhruvaKeyError, ReadOnlyError, ...);
a broken connection becomes :class:`ServerConnectionError`, and every later
call raises it again: a new ClientStorage is needed once the server is back.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import ssl
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import BinaryIO

from dhruva import wire
from dhruva.error import (
    AuthenticationError,
    DhruvaError,
    DhruvaKeyError,
    ProtocolError,
    ReadConflictError,
    ReadOnlyError,
    SnapshotTooOldError,
    UnallocatedOidError,
    WriteConflictError,
)
from dhruva.server import security
from dhruva.server.address import DEFAULT_ADDRESS, Address, format_address
from dhruva.storage import (
    CAP_BLOBS,
    CAP_SNAPSHOTS,
    Record,
    Storage,
    check_oid,
    check_record,
    check_snapshot_tid,
)
from dhruva.utils import OID_SIZE, int8_to_str, str_to_int8

_RECV_SIZE = 1 << 18
_LOAD_FRAME_HEAD = wire.LOAD_FRAME_HEAD
_LIST_PAGE = 4096
_BULK_PAGE = 2048
_PREFETCH_CACHE_MAX = 16384
"""The most prefetched records a ClientStorage keeps between two syncs."""
_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)
DEFAULT_BUSY_POLL_S = 0.0005
"""How long ``_receive`` polls for an answer before it blocks (covers an fsync)."""
_POLL_MISSES_MAX = 4
"""Polls in a row that found no answer before the client stops polling for a while."""
_POLL_PAUSE_REQUESTS = 64
"""How many requests the client then blocks at once for, before it polls again."""
_HANDSHAKE_TIMEOUT_S = 30.0
"""How long the handshake may take when the caller set no timeout of its own."""
_HEAD_SIZE = 16
"""How many of the peer's first bytes are kept to show in a not-a-dhruva-server error."""
_TYPE_OFFSET = wire.FRAME_HEADER.size
"""The offset of the first frame's type byte in those bytes."""
_FIRST_ANSWERS = frozenset(
    {wire.MessageType.HELLO_OK, wire.MessageType.AUTH_CHALLENGE, wire.MessageType.ERROR}
)
"""The message types that may open a server's side of a session (answers to HELLO)."""


class ServerConnectionError(DhruvaError):
    """The storage server cannot be reached, or the connection to it was lost."""


class ClientStorage(Storage):
    """A Storage whose records live in a dhruva storage server.

    ``address`` is ``(host, port)`` or the path of a Unix socket.  Raises
    ServerConnectionError when no server answers there, ProtocolError when
    the peer is not a dhruva server of a compatible version.

    ``tls`` is a client-side :class:`ssl.SSLContext` (see
    :func:`dhruva.server.security.client_context`), or True for one that trusts the
    system's authorities; ``server_hostname`` is the name the server's
    certificate must carry (default: the host; required with a Unix socket
    when the context checks host names).  ``secret`` is the shared secret of
    a server that requires authentication.  Raises AuthenticationError when
    the server refuses the secret, asks for one that was not given, does not
    ask for one that was given, or requires TLS.

    ``prefetch`` (default True) announces the ``prefetch`` feature: a server
    that offers it sends, with a loaded record, the records it references,
    and :meth:`load` answers later loads of those from memory until the next
    synchronization (wire protocol, "Prefetch").

    ``busy_poll_s`` (default 0.5 ms): how long to poll for an answer before
    blocking on it, which halves a round trip on an idle machine; 0 turns it
    off, and it is off with TLS.

    ``snapshots`` (default True) announces the ``snapshots`` feature: with a
    server that offers it the storage has the capability ``snapshots``
    (storage API, "Snapshots"); False keeps the Durus model, in which a load
    of an object changed since the last sync raises ReadConflictError.
    """

    def __init__(
        self,
        address: Address = DEFAULT_ADDRESS,
        oid_batch_size: int = 128,
        timeout_s: float | None = None,
        tls: ssl.SSLContext | bool | None = None,
        secret: bytes | str | None = None,
        server_hostname: str | None = None,
        prefetch: bool = True,
        busy_poll_s: float = DEFAULT_BUSY_POLL_S,
        snapshots: bool = True,
        *,
        host: str | None = None,
        port: int | None = None,
    ) -> None:
        # [SRV-088] Durus's ClientStorage(host=, port=): either completes the default.
        if host is not None or port is not None:
            if address != DEFAULT_ADDRESS:
                raise TypeError("give either address= or host=/port=, not both")
            address = (host or DEFAULT_ADDRESS[0], DEFAULT_ADDRESS[1] if port is None else port)
        # Polling needs MSG_DONTWAIT, and a plain socket (SSL sockets take no flags).
        self._busy_poll_s = busy_poll_s if _DONTWAIT and not tls else 0.0
        self._poll_misses = 0
        self._poll_pause = 0
        if isinstance(address, list):
            address = (str(address[0]), int(address[1]))
        self.address: Address = address
        self.oid_batch_size = max(1, min(oid_batch_size, wire.MAX_OIDS_PER_REQUEST))
        self._where = format_address(address)
        self._decoder = wire.FrameDecoder()
        self._payloads: list[bytes] = []
        self._oid_pool: list[bytes] = []
        # Records the server sent along with a LOAD answer; valid until the
        # next synchronization [WIRE-057].
        self._prefetched: dict[bytes, Record] = {}
        features = [wire.FEATURE_PACK_PROGRESS]
        if prefetch:
            features.append(wire.FEATURE_PREFETCH)
        if snapshots:
            features.append(wire.FEATURE_SNAPSHOTS)
        features.append(wire.FEATURE_BLOBS)
        features.append(wire.FEATURE_BLOB_TIDS)
        self._features = " ".join(features)
        self._snapshots = False
        self._last_tid = 0
        # The read set of the open transaction [WIRE-108], and frames (HOLD)
        # that go out with the next request.
        self._reads: set[bytes] = set()
        self._pending_out = b""
        self._transaction: dict[bytes, Record] | None = None
        self._blobs: dict[bytes, BinaryIO] = {}
        self._after_commit: list[bytes] | None = None
        self._broken: ServerConnectionError | None = None
        self._lost_reason = ""
        self._lost_to_garbage = False
        """The connection was lost because the peer sent bytes outside the protocol."""
        # The first bytes the peer sent, to show in the error when it turns
        # out not to be a dhruva server (an HTTP or SSH server, say).
        self._received_head = b""
        self._closed = False
        self._secret = security.secret_bytes(secret) if secret is not None else None
        self._sock = self._connect(timeout_s)
        if tls:
            context = tls if isinstance(tls, ssl.SSLContext) else security.client_context()
            self._sock = self._start_tls(context, server_hostname, timeout_s)
        try:
            self._sock.settimeout(timeout_s if timeout_s is not None else _HANDSHAKE_TIMEOUT_S)
            # [WIRE-023] Answers to HELLO and AUTH are small, as the server
            # requires of the client before the handshake [WIRE-033].
            self._decoder.max_frame_size = wire.HANDSHAKE_MAX_FRAME_SIZE
            reply = self._handshake(bool(tls))
            self._decoder.max_frame_size = wire.MAX_FRAME_SIZE
            self._sock.settimeout(timeout_s)
        except BaseException:
            self._closed = True
            self._sock.close()
            raise
        self.server_features = frozenset(reply.features.split())
        capabilities = frozenset(reply.storage_capabilities.split())
        # [WIRE-100] Snapshots only when both ends announced the feature: an
        # older server passes a storage's capability on without serving it.
        self._snapshots = snapshots and wire.FEATURE_SNAPSHOTS in self.server_features
        if not self._snapshots:
            capabilities -= {CAP_SNAPSHOTS}
        # [SRV-125] Blobs only when both ends announced the feature: an older
        # server passes a storage's capability on without carrying blobs.
        self._blobs_served = wire.FEATURE_BLOBS in self.server_features
        if not self._blobs_served:
            capabilities -= {CAP_BLOBS}
        # [WIRE-137] An older server does not say which commit a read at
        # SESSION_SNAPSHOT was at; this one answers it with BLOB_DATA_AT.
        self._blob_tids = self._blobs_served and wire.FEATURE_BLOB_TIDS in self.server_features
        self.capabilities = capabilities
        if self._snapshots:
            # [WIRE-103] The session's first snapshot: nothing was read yet,
            # so the invalidations of this SYNC concern nobody.
            try:
                self._synchronize()
            except BaseException:
                self.close()
                raise

    def _start_tls(
        self, context: ssl.SSLContext, server_hostname: str | None, timeout_s: float | None
    ) -> socket.socket:
        if server_hostname is None and not isinstance(self.address, str):
            server_hostname = self.address[0]
        if server_hostname is None and context.check_hostname:
            self._sock.close()
            raise DhruvaError(
                f"TLS to the Unix socket {self._where} needs server_hostname= (the name in"
                " the server's certificate), or a context that does not check host names"
            )
        sock = self._sock
        try:
            sock.settimeout(timeout_s if timeout_s is not None else _HANDSHAKE_TIMEOUT_S)
            return context.wrap_socket(sock, server_hostname=server_hostname)
        except ssl.SSLCertVerificationError as error:
            sock.close()
            raise AuthenticationError(
                f"the storage server at {self._where} presented a certificate that does not"
                f" verify: {error.verify_message or error}; check the CA bundle (tls_ca)"
            ) from None
        except (OSError, ValueError) as error:
            sock.close()
            raise ServerConnectionError(
                f"TLS handshake with the storage server at {self._where} failed: {error};"
                " is the server running with TLS (--tls-cert)?"
            ) from None

    def _handshake(self, tls: bool) -> wire.HelloOk | wire.AuthOk:
        """Send HELLO, authenticate when asked; return the server's HELLO_OK or AUTH_OK."""
        try:
            reply = self._request(wire.Hello(features=self._features))
            if isinstance(reply, wire.AuthChallenge):
                return self._authenticate(reply)
        except ServerConnectionError:
            if self._lost_to_garbage:
                # [WIRE-023] Something answered, but not in the protocol.
                raise ProtocolError(
                    f"the peer at {self._where} is not a dhruva storage server: it answered"
                    f" HELLO with {self._received_head!r} ({self._lost_reason})"
                ) from None
            if tls:
                # A TLS 1.3 server refuses a missing client certificate only
                # after the client's handshake returned: it shows up here.
                raise AuthenticationError(
                    f"the storage server at {self._where} ended the TLS session during the"
                    f" handshake ({self._lost_reason}); does it require a client certificate"
                    " (tls_client_cert) signed by an authority it trusts?"
                ) from None
            raise
        if not isinstance(reply, wire.HelloOk) or reply.magic != wire.MAGIC:
            raise ProtocolError(f"the peer at {self._where} is not a dhruva storage server")
        if self._secret is not None:
            # [WIRE-035] A server that does not authenticate proved nothing.
            raise AuthenticationError(
                f"the storage server at {self._where} does not ask for authentication, but a"
                " secret was given; refusing a server that cannot prove it knows the secret"
            )
        return reply

    def _authenticate(self, challenge: wire.AuthChallenge) -> wire.AuthOk:
        if self._secret is None:
            raise AuthenticationError(
                f"the storage server at {self._where} requires authentication; give the"
                " shared secret (ClientStorage(secret=...), --secret-file or DHRUVA_SECRET)"
            )
        if challenge.mechanism != security.AUTH_MECHANISM:
            raise AuthenticationError(
                f"the storage server at {self._where} asks for authentication by"
                f" {challenge.mechanism!r}; this client knows {security.AUTH_MECHANISM}"
            )
        client_nonce = security.new_nonce()
        proof = security.client_proof(self._secret, challenge.server_nonce, client_nonce)
        reply = self._request(wire.Auth(security.AUTH_MECHANISM, client_nonce, proof))
        if not isinstance(reply, wire.AuthOk) or reply.magic != wire.MAGIC:
            raise ProtocolError(f"the peer at {self._where} is not a dhruva storage server")
        expected = security.server_proof(self._secret, challenge.server_nonce, client_nonce)
        # [WIRE-032] The server proves the secret too, in constant time.
        if not security.proofs_equal(expected, reply.server_proof):
            raise AuthenticationError(
                f"the storage server at {self._where} could not prove it knows the shared"
                " secret; it may be an impostor"
            )
        return reply

    def _connect(self, timeout_s: float | None) -> socket.socket:
        try:
            if isinstance(self.address, str):
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    sock.settimeout(timeout_s)
                    sock.connect(self.address)
                except OSError:
                    sock.close()
                    raise
            else:
                sock = socket.create_connection(self.address, timeout=timeout_s)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as error:
            raise ServerConnectionError(
                f"cannot connect to a dhruva storage server at {self._where}: "
                f"{error.strerror or error}; is the server running (dhruva -s)?"
            ) from None
        return sock

    # --- request/response -------------------------------------------------------

    def _note_first_bytes(self, data: bytes) -> None:
        """Keep the peer's first bytes; refuse a first frame that cannot answer HELLO.

        [WIRE-023] The first frame a server sends answers HELLO; any other
        type byte shows at once that the peer speaks another protocol, so the
        client need not wait for the body its length announces.
        """
        had = len(self._received_head)
        self._received_head += data[: _HEAD_SIZE - had]
        head = self._received_head
        if had <= _TYPE_OFFSET < len(head) and head[_TYPE_OFFSET] not in _FIRST_ANSWERS:
            raise self._lost(
                f"bad frame from the server: its first frame, of type {head[_TYPE_OFFSET]:#04x},"
                " answers no HELLO",
                garbage=True,
            )

    def _lost(self, reason: str, garbage: bool = False) -> ServerConnectionError:
        """Mark the connection broken; ``garbage``: the peer sent bytes outside the protocol."""
        self._lost_reason = reason
        self._lost_to_garbage = garbage
        self._broken = ServerConnectionError(
            f"lost connection to the storage server at {self._where} ({reason});"
            " open a new ClientStorage once the server is back"
        )
        try:
            self._sock.close()
        except OSError:
            pass
        return self._broken

    def _check_usable(self) -> None:
        if self._broken is not None:
            raise self._broken
        if self._closed:
            raise DhruvaError(f"this ClientStorage for {self._where} is closed")

    def _send(self, data: bytes) -> None:
        # Any request after a commit, answered or failed, ends the moment at
        # which the commit's invalidations answer sync() [WIRE-072].
        self._after_commit = None
        if self._pending_out:
            # [WIRE-112] HOLD goes out with the next request, in its write.
            data, self._pending_out = self._pending_out + data, b""
        try:
            self._sock.sendall(data)
        except OSError as error:
            raise self._lost(error.strerror or str(error)) from None

    def _poll_answer(self) -> None:
        """Poll for the answer for up to ``busy_poll_s`` before blocking on it.

        An answer usually comes within tens of microseconds (a load) or a
        few hundred (a durable commit); sleeping in ``recv`` lets the CPU
        fall asleep, and waking it takes longer than that (see the server's
        ``_poll``).  Polling stops by itself when answers keep coming later
        than the window (a slow or busy server): after a few misses the
        client blocks at once for the next requests, then tries again.
        """
        if self._poll_pause:
            self._poll_pause -= 1
            return
        if threading.active_count() > 1:
            # Another thread (the server's, or another client's) would wait
            # for the GIL while this one polls.
            return
        deadline = time.perf_counter() + self._busy_poll_s
        sock = self._sock
        while True:
            try:
                data = sock.recv(_RECV_SIZE, _DONTWAIT)
            except (BlockingIOError, InterruptedError):
                if time.perf_counter() < deadline:
                    continue
                self._poll_misses += 1
                if self._poll_misses >= _POLL_MISSES_MAX:
                    self._poll_misses = 0
                    self._poll_pause = _POLL_PAUSE_REQUESTS
                return
            except OSError:
                return  # the blocking recv that follows reports it
            self._poll_misses = 0
            if not data:
                raise self._lost("the server closed the connection")
            if len(self._received_head) < _HEAD_SIZE:
                self._note_first_bytes(data)
            try:
                self._payloads.extend(self._decoder.feed(data))
            except ProtocolError as error:
                raise self._lost(f"bad frame from the server: {error}", garbage=True) from None
            return

    def _receive(self) -> wire.Message:
        if not self._payloads and self._busy_poll_s:
            self._poll_answer()
        while not self._payloads:
            try:
                data = self._sock.recv(_RECV_SIZE)
            except OSError as error:
                raise self._lost(error.strerror or str(error)) from None
            if not data:
                raise self._lost("the server closed the connection")
            if len(self._received_head) < _HEAD_SIZE:
                self._note_first_bytes(data)
            try:
                self._payloads.extend(self._decoder.feed(data))
            except ProtocolError as error:
                raise self._lost(f"bad frame from the server: {error}", garbage=True) from None
        try:
            return wire.decode_message(self._payloads.pop(0))
        except ProtocolError as error:
            raise self._lost(f"bad message from the server: {error}", garbage=True) from None

    def _request(self, message: wire.Message, *more: bytes) -> wire.Message:
        """Send ``message`` (after the frames in ``more``) and return the answer."""
        self._check_usable()
        self._send(b"".join((*more, message.encode())))
        reply = self._receive()
        if isinstance(reply, wire.Error):
            raise self._error(reply)
        return reply

    def _error(self, error: wire.Error) -> DhruvaError:
        code = error.code
        oids = list(error.oids)
        if code == wire.ErrorCode.WRITE_CONFLICT:
            return WriteConflictError(oids)
        if code == wire.ErrorCode.READ_CONFLICT:
            return ReadConflictError(oids)
        if code == wire.ErrorCode.NO_SUCH_OBJECT:
            return DhruvaKeyError(oids[0] if oids else None)
        if code == wire.ErrorCode.READ_ONLY:
            return ReadOnlyError(f"the storage server at {self._where} is read-only")
        if code == wire.ErrorCode.SNAPSHOT_TOO_OLD:
            # [WIRE-114] The bounds travel in the oid list, by code, not in the text.
            try:
                tid, oldest = wire.snapshot_bounds(error)
            except ProtocolError:
                return self._lost("a SNAPSHOT_TOO_OLD error without its bounds", garbage=True)
            return SnapshotTooOldError(tid, oldest)
        text = f"storage server at {self._where}: {error.message}"
        if code in (
            wire.ErrorCode.AUTH_FAILED,
            wire.ErrorCode.AUTH_REQUIRED,
            wire.ErrorCode.TLS_REQUIRED,
        ):
            self._lost(error.message)
            if code == wire.ErrorCode.AUTH_FAILED:
                return AuthenticationError(
                    f"the storage server at {self._where} refused the shared secret"
                    f" ({error.message}); check the secret file"
                )
            if code == wire.ErrorCode.TLS_REQUIRED:
                return AuthenticationError(
                    f"the storage server at {self._where} requires TLS; connect with TLS"
                    " (ClientStorage(tls=...), --tls)"
                )
            return AuthenticationError(text)
        if code < 16:
            # Fatal codes: the server closes the connection after sending them.
            self._lost(error.message)
            return ProtocolError(text)
        if code == wire.ErrorCode.UNALLOCATED_OID:
            nums = ", ".join(str(str_to_int8(oid)) for oid in oids[:8])
            return UnallocatedOidError(f"{text} (oids {nums})")
        return DhruvaError(text)

    def _expect(self, reply: wire.Message, kind: type[wire.Message]) -> None:
        if not isinstance(reply, kind):
            raise self._lost(f"unexpected {reply.type.name} answer")

    # --- Storage interface ------------------------------------------------------

    def new_oid(self) -> bytes:
        self._check_usable()
        if not self._oid_pool:
            reply = self._request(wire.NewOids(self.oid_batch_size))
            self._expect(reply, wire.Oids)
            assert isinstance(reply, wire.Oids)
            self._oid_pool = list(reversed(reply.oids))
        self._after_commit = None
        return self._oid_pool.pop()

    def load(self, oid: bytes) -> Record:
        """Return ``oid``'s record: from the prefetched records, else with one LOAD.

        A prefetched record is the state as of the last synchronization,
        exactly what the server would answer now [WIRE-056].
        """
        # [SAPI-006] A bad oid would make a malformed LOAD, which costs the
        # connection (and an unhashable one a TypeError from the dict below).
        if type(oid) is not bytes or len(oid) != OID_SIZE:
            check_oid(oid)
        record = self._prefetched.get(oid)
        if record is not None:
            self._after_commit = None
            return record
        # _request(wire.Load(oid)), inline: the frame is its head and the oid.
        if self._broken is not None or self._closed:
            self._check_usable()
        self._send(_LOAD_FRAME_HEAD + oid)
        reply = self._receive()
        if isinstance(reply, wire.Error):
            raise self._error(reply)
        self._after_commit = None
        if type(reply) is wire.RecordMessage:
            return reply.record
        if isinstance(reply, wire.RecordPrefetch):
            self._keep_prefetched(reply.prefetched)
            return reply.record
        self._expect(reply, wire.RecordMessage)
        assert isinstance(reply, wire.RecordMessage)
        return reply.record

    def _keep_prefetched(self, records: Iterable[Record]) -> None:
        cache = self._prefetched
        for record in records:
            if len(cache) >= _PREFETCH_CACHE_MAX:
                # Oldest first: a tree walk uses what came last soonest.
                del cache[next(iter(cache))]
            cache[record.oid] = record

    def _forget_prefetched(self) -> None:
        # [WIRE-057] A synchronization moves the client's view forward; a
        # record prefetched before it may be stale after it.
        if self._prefetched:
            self._prefetched.clear()

    def bulk_load(self, oids: Iterable[bytes]) -> Iterator[Record]:
        batch: list[bytes] = []
        for oid in oids:
            check_oid(oid)  # [SAPI-006] as in load()
            batch.append(oid)
            if len(batch) >= _BULK_PAGE:
                yield from self._bulk(batch)
                batch = []
        if batch:
            yield from self._bulk(batch)

    def _bulk(self, oids: list[bytes]) -> list[Record]:
        reply = self._request(wire.BulkLoad(oids))
        self._expect(reply, wire.Records)
        assert isinstance(reply, wire.Records)
        self._after_commit = None
        return list(reply.records)

    def load_at(self, oid: bytes, tid: int) -> Record:
        """Return ``oid``'s record as the committed transaction ``tid`` left it (SAPI-092).

        At the read point this is :meth:`load`; below it, one LOAD_AT
        [WIRE-106], which the server answers while it keeps that version
        (set_oldest_snapshot), else raises SnapshotTooOldError.
        """
        if not self._snapshots:
            raise DhruvaError(
                f"the storage server at {self._where} does not serve snapshots (SAPI-097)"
            )
        check_snapshot_tid(tid, self._last_tid)
        check_oid(oid)
        if tid == self._last_tid:
            return self.load(oid)
        reply = self._request(wire.LoadAt(oid, tid))
        self._expect(reply, wire.RecordMessage)
        assert isinstance(reply, wire.RecordMessage)
        return reply.record

    def last_tid(self) -> int:
        """The tid of the snapshot this client reads (SAPI-090): its last sync or commit."""
        if not self._snapshots:
            raise DhruvaError(
                f"the storage server at {self._where} does not serve snapshots (SAPI-097)"
            )
        self._check_usable()
        return self._last_tid

    def set_oldest_snapshot(self, tid: int | None) -> None:
        """Tell the server the oldest snapshot this client still reads at (SAPI-093).

        It travels as HOLD with the next request [WIRE-112]; until then the
        session's own snapshot keeps what it reads.
        """
        if not self._snapshots:
            return
        if tid is not None:
            if type(tid) is not int:
                raise TypeError(f"a tid is an int, not {type(tid).__name__}")
            if tid < 0:
                raise ValueError(f"a tid is not negative, not {tid}")
        held = wire.NO_HOLD if tid is None else min(tid, wire.NO_HOLD)
        # A later HOLD replaces an earlier one (WIRE-112): only the last goes out.
        self._pending_out = wire.Hold(held).encode()

    def note_reads(self, oids: Iterable[bytes]) -> None:
        """Declare oids the open transaction read; ``end()`` has the server check them.

        (SAPI-095, WIRE-108.)  Raises DhruvaError outside a transaction.
        """
        if self._transaction is None:
            raise DhruvaError("note_reads() outside a transaction; call begin() first")
        if self._snapshots:
            oids = list(oids)
            # [SAPI-006] A bad oid would make a malformed READS, which costs the
            # connection: one length check for the lot, each oid only on a miss.
            if len(b"".join(oids)) != OID_SIZE * len(oids):
                for oid in oids:
                    check_oid(oid)
            self._reads.update(oids)

    def begin(self) -> None:
        self._check_usable()
        if self._transaction is not None:
            raise DhruvaError("a transaction is already open")
        self._transaction = {}
        self._reads = set()
        self._drop_blobs()

    def _drop_blobs(self) -> None:
        blobs, self._blobs = self._blobs, {}
        for file in blobs.values():
            file.close()

    def store_blob(self, oid: bytes, file: BinaryIO) -> None:
        """Make ``file``'s content (from its position on) ``oid``'s blob in this transaction.

        (BLOB-010.)  Nothing is sent yet: the content streams to the server
        at :meth:`end`, in BLOB_CHUNK frames [WIRE-132].  Keeps a duplicate
        descriptor of a regular file (positioned where ``file`` is), or else
        a copy made in 1 MiB pieces, so that ``file`` may be closed at once.
        """
        if self._transaction is None:
            raise DhruvaError("store_blob() outside a transaction; call begin() first")
        if not self._blobs_served:
            raise DhruvaError(f"the storage server at {self._where} does not store blobs")
        check_oid(oid)
        kept = _keep_content(file)
        previous = self._blobs.pop(oid, None)
        if previous is not None:
            previous.close()
        self._blobs[oid] = kept

    def open_blob(self, oid: bytes, tid: int | None = None) -> BinaryIO:
        """Return a buffered reader of ``oid``'s blob as of the read point or ``tid`` (BLOB-011).

        The first READ_BLOB goes now, so that a missing blob raises
        DhruvaKeyError here; later ones as the reader is read, each at the
        same tid (the session's snapshot when the blob was opened, so that a
        later sync does not change what the reader returns).  Without
        snapshots the first names SESSION_SNAPSHOT and the server's
        BLOB_DATA_AT says which commit it read at; the later ones name that
        commit, so that a blob another client commits meanwhile is not mixed
        in [WIRE-138].  (A server without ``blob-tids`` cannot say: there the
        reader may return pieces of two versions, as WIRE-138 describes.)
        """
        self._check_usable()
        if not self._blobs_served:
            raise DhruvaError(f"the storage server at {self._where} does not store blobs")
        check_oid(oid)
        if tid is None:
            tid = self._last_tid if self._snapshots else wire.SESSION_SNAPSHOT
        else:
            if self._snapshots:
                check_snapshot_tid(tid, self._last_tid)
            elif type(tid) is not int or tid < 0:
                raise ValueError(f"a tid is a non-negative int, not {tid!r}")
        raw = _BlobReader(self, oid, tid)
        return io.BufferedReader(raw, wire.MAX_BLOB_CHUNK)

    def _read_blob(self, oid: bytes, tid: int, offset: int, length: int) -> tuple[int, bytes]:
        """One READ_BLOB round trip [WIRE-133]: at most ``length`` bytes at ``offset``.

        Returns the tid read at and the bytes: ``tid`` itself, or, for
        SESSION_SNAPSHOT outside snapshots with ``blob-tids``, the tid of the
        server's BLOB_DATA_AT [WIRE-137] (SESSION_SNAPSHOT again from a
        server without the feature).  Any other answer loses the connection.
        """
        reply = self._request(wire.ReadBlob(oid, tid, offset, length))
        if tid == wire.SESSION_SNAPSHOT and self._blob_tids and not self._snapshots:
            self._expect(reply, wire.BlobDataAt)
            assert isinstance(reply, wire.BlobDataAt)
            return reply.tid, reply.data
        self._expect(reply, wire.BlobData)
        assert isinstance(reply, wire.BlobData)
        return tid, reply.data

    def store(self, oid: bytes, data: bytes, refs: bytes = b"") -> None:
        if self._transaction is None:
            raise DhruvaError("store() outside a transaction; call begin() first")
        check_record(oid, data, refs)
        self._transaction[oid] = Record(oid, bytes(data), refs)

    def end(self) -> None:
        """Commit the transaction in one round trip; raise WriteConflictError on conflict."""
        if self._transaction is None:
            raise DhruvaError("end() without begin()")
        transaction, self._transaction = self._transaction, None
        records = list(transaction.values())
        reads, self._reads = self._reads, set()
        blobs, self._blobs = self._blobs, {}
        try:
            self._send_blobs(blobs, transaction)
        finally:
            for file in blobs.values():
                file.close()
        self._forget_prefetched()
        # [WIRE-070] Stage frames (no answer) then one COMMIT, in a single write,
        # after the read set [WIRE-108]: none when nothing was read (or only
        # what is written, which the write check covers).
        frames = wire.split_commit(records)
        if reads:
            read_only = [oid for oid in reads if oid not in transaction]
            if read_only:
                frames[:0] = wire.reads_frames(read_only)
        self._check_usable()
        self._send(b"".join(frames))
        reply = self._receive()
        if isinstance(reply, wire.Error):
            raise self._error(reply)
        if self._snapshots:
            self._expect(reply, wire.CommittedAt)
            assert isinstance(reply, wire.CommittedAt)
            # [SAPI-090] The read point moves to this transaction's tid.
            self._last_tid = reply.tid
        else:
            self._expect(reply, wire.Committed)
            assert isinstance(reply, wire.Committed)
        self._after_commit = list(reply.invalidations)

    def _send_blobs(self, blobs: dict[bytes, BinaryIO], transaction: dict[bytes, Record]) -> None:
        """Stream the transaction's blobs to the server, one chunk in memory at a time."""
        if not blobs:
            return
        missing = [oid for oid in blobs if oid not in transaction]
        if missing:
            # [BLOB-010] Checked here, before a byte goes out: the server
            # would close the connection on such a COMMIT [WIRE-135].
            raise DhruvaError(
                f"a transaction stored blobs of {len(missing)} objects whose records it did"
                f" not store (oid {str_to_int8(missing[0])}); nothing was committed"
            )
        self._check_usable()
        for oid, file in blobs.items():
            for chunk_frame in wire.blob_chunk_frames(oid, file):
                self._send(chunk_frame)

    def abort_transaction(self) -> None:
        self._transaction = None
        self._reads = set()
        # [BLOB-014] Nothing was sent yet: dropping the handles drops the blobs.
        self._drop_blobs()

    def sync(self) -> list[bytes]:
        self._forget_prefetched()
        if self._after_commit is not None:
            # The commit just answered synchronized us; see the module docstring.
            oids, self._after_commit = self._after_commit, None
            return oids
        return self._synchronize()

    def _synchronize(self) -> list[bytes]:
        reply = self._request(wire.Empty(wire.MessageType.SYNC))
        if self._snapshots:
            self._expect(reply, wire.Synced)
            assert isinstance(reply, wire.Synced)
            # [WIRE-102] The new snapshot.
            self._last_tid = reply.tid
            return list(reply.invalidations)
        self._expect(reply, wire.Oids)
        assert isinstance(reply, wire.Oids)
        return list(reply.oids)

    def pack(self, progress: Callable[[int, int], object] | None = None) -> None:
        """Pack the server's storage; return when the pack is done.

        ``progress(records_copied, objects)`` is called for each PACK_PROGRESS
        frame the server sends while it packs (``objects`` is an upper bound
        of the records to copy, 0 when unknown) [WIRE-085].
        """
        self._forget_prefetched()
        reply = self._request(wire.Empty(wire.MessageType.PACK))
        while isinstance(reply, wire.PackProgress):
            if progress is not None:
                progress(reply.records_copied, reply.objects)
            reply = self._receive()
            if isinstance(reply, wire.Error):
                raise self._error(reply)
        self._expect(reply, wire.Empty)
        self._after_commit = None

    def get_size(self) -> int:
        reply = self._request(wire.Empty(wire.MessageType.SIZE))
        self._expect(reply, wire.SizeIs)
        assert isinstance(reply, wire.SizeIs)
        return reply.count

    def iter_oids(self) -> Iterator[bytes]:
        start = 0
        while True:
            reply = self._request(wire.ListOids(int8_to_str(start), _LIST_PAGE))
            self._expect(reply, wire.Oids)
            assert isinstance(reply, wire.Oids)
            yield from reply.oids
            if len(reply.oids) < _LIST_PAGE:
                return
            start = str_to_int8(reply.oids[-1]) + 1

    def stop_server(self) -> None:
        """Ask the server to stop (what ``dhruva -s --stop`` does); closes this storage."""
        reply = self._request(wire.Empty(wire.MessageType.STOP))
        self._expect(reply, wire.Empty)
        self.close()

    def close(self) -> None:
        self._drop_blobs()
        if self._closed:
            return
        self._closed = True
        if self._broken is None:
            try:
                self._sock.sendall(wire.Empty(wire.MessageType.QUIT).encode())
            except OSError:
                pass
        self._sock.close()

    def __repr__(self) -> str:
        return f"ClientStorage({self._where!r})"


class _BlobReader(io.RawIOBase):
    """A blob on the server, read with READ_BLOB requests (at most 1 MiB each).

    The first chunk is asked for at construction, so that a missing blob
    raises DhruvaKeyError at ``open_blob``; every later request names the
    tid the first was read at (for SESSION_SNAPSHOT, the one the server's
    BLOB_DATA_AT named [WIRE-138]).  Seekable: a seek only moves the offset
    of the next request.
    """

    def __init__(self, client: ClientStorage, oid: bytes, tid: int) -> None:
        super().__init__()
        self._client = client
        self._oid = oid
        self._offset = 0
        self._tid, self._ahead = client._read_blob(oid, tid, 0, wire.MAX_BLOB_CHUNK)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._offset

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            offset += self._offset
        elif whence == io.SEEK_END:
            raise io.UnsupportedOperation("a served blob cannot seek from its end")
        if offset < 0:
            raise ValueError(f"negative seek position {offset}")
        if offset != self._offset:
            self._ahead = b""
        self._offset = offset
        return offset

    def readall(self) -> bytes:
        # RawIOBase's would ask for 8 KiB at a time: one round trip each.
        parts: list[bytes] = []
        while True:
            part = self.read(wire.MAX_BLOB_CHUNK)
            if not part:
                return b"".join(parts)
            parts.append(part)

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        if not len(view):
            return 0
        if self._ahead:
            data, self._ahead = self._ahead[: len(view)], self._ahead[len(view) :]
        else:
            length = min(len(view), wire.MAX_BLOB_CHUNK)
            data = self._read(length)
        view[: len(data)] = data
        self._offset += len(data)
        return len(data)

    def _read(self, length: int) -> bytes:
        """A later READ_BLOB, at the reader's tid; typed errors when that version is gone."""
        try:
            tid, data = self._client._read_blob(self._oid, self._tid, self._offset, length)
        except DhruvaKeyError:
            # [WIRE-138] The version read so far is gone (a pack removed it):
            # an error, never bytes of another version.
            at = "" if self._tid == wire.SESSION_SNAPSHOT else f" as of tid {self._tid}"
            raise DhruvaKeyError(
                self._oid,
                f"the blob of oid {str_to_int8(self._oid)}{at} is no longer stored (a pack"
                " removed it while it was read); open it again",
            ) from None
        assert tid == self._tid
        return data


def _keep_content(file: BinaryIO) -> BinaryIO:
    """A handle on ``file``'s content from its position on, valid after ``file`` is closed.

    A regular file: a duplicate descriptor, positioned where ``file`` is (no
    copy).  Anything else: a temporary file the content is copied into,
    1 MiB at a time, rewound.
    """
    try:
        fd = file.fileno()
        regular = stat.S_ISREG(os.fstat(fd).st_mode)
    except (AttributeError, OSError, io.UnsupportedOperation):
        regular = False
    if regular:
        # Bytes written through ``file`` but still in its buffer must reach
        # the file before another descriptor reads it.
        if file.writable():
            file.flush()
        position = file.tell()
        # A new open file description, so that its offset is its own.
        # (Linux's /proc; elsewhere the copy below.)
        path = f"/proc/self/fd/{fd}"
        if os.path.exists(path):
            duplicate = open(path, "rb")  # noqa: SIM115 (kept until end() or abort)
            duplicate.seek(position)
            return duplicate
    copy = tempfile.TemporaryFile(prefix="dhruva-client-blob-")  # noqa: SIM115 (as above)
    shutil.copyfileobj(file, copy, wire.MAX_BLOB_CHUNK)
    copy.seek(0)
    return copy
