"""One client's session with the storage server, as a sans-IO state machine.

Spec: ``spec/wire-protocol.md`` ("Session state machine", "Handshake",
"Authentication") and ``spec/server.md`` ("Security", "Limits",
"Robustness").

Theory of operation.  A :class:`ServerSession` never touches a socket, a
storage or a clock it was not given, in the manner of h11's ``Connection``:

- bytes in: :meth:`ServerSession.receive_data` (``b""`` means the peer
  closed);
- events out: :meth:`ServerSession.next_event` returns the next *request
  event* (:class:`Load`, :class:`Commit`, :class:`Pack`, ...), a *note*
  (:class:`Ready`, :class:`Refused`, :class:`TransactionRefused`: things
  the server may log, needing no answer), or one of the sentinels
  :data:`NEED_DATA` and :data:`PAUSED`;
- bytes out: the server answers the request with :meth:`ServerSession.send`
  or :meth:`ServerSession.send_error`; the answer's bytes collect in the
  session's output buffer, which the socket loop drains with
  :meth:`ServerSession.data_to_send` and :meth:`ServerSession.bytes_sent`.

The states are exactly the spec's table: ``tls`` (TLS servers, until the
socket loop reports the TLS handshake done with
:meth:`ServerSession.tls_established`), ``connected`` (waiting for HELLO),
``authenticating`` (AUTH_CHALLENGE sent, waiting for AUTH), ``ready``,
``staging`` (STAGEd records held for the next COMMIT) and ``closed``.  The
handshake (HELLO, AUTH) is answered here, since it needs no storage; so is
STAGE, and the staging cap [SRV-085].  Every other request becomes an event
the server answers.

Invariants.  At most one request is outstanding: after a request event,
:meth:`next_event` returns :data:`PAUSED` until the server answered it, so
that answers leave in request order even when a COMMIT or a PACK is answered
passes of the loop later.  :data:`PAUSED` is also returned while more than
``OUTPUT_HIGH_WATER`` bytes of answers are unsent (a client that does not
read must not make the server buffer without bound).  Once ``closed`` the
session produces no event and accepts no request; whatever is still in its
output buffer (an ERROR, the OK of STOP) is sent, and
:attr:`ServerSession.finished` turns true when nothing is left to send.

Back-pressure [SRV-082].  :attr:`ServerSession.reading_paused` is true while
the requests received but not answered, or the bytes of those requests and
of the unsent answers, exceed the session's limits; the socket loop then
stops reading the socket, and TCP slows the client down.

Time.  The session is given a clock (``time.monotonic`` by default; tests
pass their own).  :meth:`ServerSession.expire` closes a session past its
handshake deadline [SRV-081], idle for longer than ``idle_timeout_s``, or
closed but not reading its last answer for ``CLOSING_GRACE_S``.
"""

from __future__ import annotations

import enum
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from dhruva import wire
from dhruva.error import ProtocolError
from dhruva.record import Record
from dhruva.server import security
from dhruva.utils import OID_SIZE

OUTPUT_HIGH_WATER = 16 << 20
"""Unsent answer bytes past which a session stops handling requests."""

CLOSING_GRACE_S = 2.0
"""How long a closed session whose peer does not read its last answer is kept."""

# One whole LOAD frame: its head (length and type), then the oid.
_LOAD_FRAME_HEAD = wire.LOAD_FRAME_HEAD
_LOAD_OID_AT = len(_LOAD_FRAME_HEAD)
_LOAD_FRAME_SIZE = _LOAD_OID_AT + OID_SIZE

FEATURES = "stage commit-sync bulk-load list-oids prefetch pack-progress"
"""The features this server announces in HELLO_OK and AUTH_OK (plus ``snapshots``
when its storage has snapshots [WIRE-100], ``blobs`` when it has blobs [WIRE-130],
and ``blob-tids`` when it has both [WIRE-137])."""


@dataclass(frozen=True)
class ServerLimits:
    """Per-connection limits (spec: server.md, "Limits").

    ``handshake_timeout_s``: a client must finish TLS, HELLO and AUTH within
    this many seconds [SRV-081].  ``idle_timeout_s``: a ready client silent
    for this long is disconnected (None: never).  ``max_frame_bytes``: the
    largest payload accepted once ready (at most 64 MiB) [WIRE-011].
    ``max_pending_requests`` and ``max_pending_bytes``: beyond this many
    requests received but not yet answered, or bytes of such requests and
    unsent answers, the server stops reading from the client until they
    drain [SRV-082].  ``max_staged_bytes``: the most record bytes (wire
    size) one transaction may stage before its COMMIT, COMMIT's own records
    included; a larger transaction is refused with TOO_LARGE [SRV-085].
    ``max_staged_blob_bytes`` and ``max_staged_blobs``: the most blob bytes
    (BLOB_CHUNK data) and blob oids one transaction may stage; past either
    its staged blobs are dropped at once and its COMMIT is refused with
    TOO_LARGE, the session going on [SRV-121].
    """

    handshake_timeout_s: float = 10.0
    idle_timeout_s: float | None = None
    max_frame_bytes: int = wire.MAX_FRAME_SIZE
    max_pending_requests: int = 1024
    max_pending_bytes: int = 128 << 20
    max_staged_bytes: int = 256 << 20
    max_staged_blob_bytes: int = 4 << 30
    max_staged_blobs: int = 1024

    def __post_init__(self) -> None:
        if self.handshake_timeout_s <= 0:
            raise ValueError("handshake_timeout_s must be positive")
        if self.idle_timeout_s is not None and self.idle_timeout_s <= 0:
            raise ValueError("idle_timeout_s must be positive or None")
        if not wire.HANDSHAKE_MAX_FRAME_SIZE <= self.max_frame_bytes <= wire.MAX_FRAME_SIZE:
            raise ValueError(
                f"max_frame_bytes must be {wire.HANDSHAKE_MAX_FRAME_SIZE} to {wire.MAX_FRAME_SIZE}"
            )
        if self.max_pending_requests < 1 or self.max_pending_bytes < 1:
            raise ValueError("max_pending_requests and max_pending_bytes must be positive")
        if self.max_staged_bytes < 1:
            raise ValueError("max_staged_bytes must be positive")
        if self.max_staged_blob_bytes < 0 or self.max_staged_blobs < 1:
            raise ValueError(
                "max_staged_blob_bytes must not be negative and max_staged_blobs must be positive"
            )


class SessionState(enum.Enum):
    """The states of spec/wire-protocol.md's "Session state machine" table."""

    TLS = "tls"
    CONNECTED = "connected"
    AUTHENTICATING = "authenticating"
    READY = "ready"
    STAGING = "staging"
    CLOSED = "closed"


class _Sentinel:
    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


NEED_DATA = _Sentinel("NEED_DATA")
"""No complete request is buffered: feed more bytes with receive_data()."""
PAUSED = _Sentinel("PAUSED")
"""A request is outstanding (or too much output is unsent): answer or send first."""


# --- events: requests the server answers ---------------------------------------


@dataclass(frozen=True, slots=True)
class Load:
    """LOAD: answer with RECORD (or RECORD_PREFETCH) or ERROR."""

    oid: bytes


@dataclass(frozen=True, slots=True)
class BulkLoad:
    """BULK_LOAD: answer with RECORDS or ERROR."""

    oids: list[bytes]


@dataclass(frozen=True, slots=True)
class NewOids:
    """NEW_OIDS: answer with OIDS or ERROR."""

    count: int


@dataclass(frozen=True, slots=True)
class LoadAt:
    """LOAD_AT (snapshot sessions): answer with RECORD or ERROR [WIRE-106]."""

    oid: bytes
    tid: int


@dataclass(frozen=True, slots=True)
class Commit:
    """COMMIT: the staged records and COMMIT's own, in order; answer COMMITTED or ERROR.

    ``reads`` are the oids of the READS frames since the last COMMIT [WIRE-108].
    """

    records: list[Record]
    reads: list[bytes]


@dataclass(frozen=True, slots=True)
class ReadBlob:
    """READ_BLOB (blob sessions): answer with BLOB_DATA, BLOB_DATA_AT or ERROR [WIRE-133].

    BLOB_DATA_AT only when :attr:`ServerSession.blob_tids`, outside a
    snapshot session, for ``tid`` SESSION_SNAPSHOT [WIRE-137].
    """

    oid: bytes
    tid: int
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class Sync:
    """SYNC: answer with OIDS (the invalidations)."""


@dataclass(frozen=True, slots=True)
class Size:
    """SIZE: answer with SIZE_IS."""


@dataclass(frozen=True, slots=True)
class ListOids:
    """LIST_OIDS: answer with OIDS."""

    start: bytes
    limit: int


@dataclass(frozen=True, slots=True)
class Pack:
    """PACK: answer with OK or ERROR (PACK_PROGRESS frames may come first)."""


@dataclass(frozen=True, slots=True)
class Stop:
    """STOP: answer with OK; the session closes after it and the server stops."""


Request = (
    Load | LoadAt | BulkLoad | NewOids | Commit | Sync | Size | ListOids | Pack | Stop | ReadBlob
)


# --- events: notes that need no answer -----------------------------------------


@dataclass(frozen=True, slots=True)
class Ready:
    """The handshake is done; ``authenticated`` tells whether AUTH was needed."""

    authenticated: bool


@dataclass(frozen=True, slots=True)
class Refused:
    """The session sent a fatal ERROR (``code``, ``message``) and is now closed [SRV-040]."""

    code: wire.ErrorCode
    message: str


@dataclass(frozen=True, slots=True)
class TransactionRefused:
    """A COMMIT was answered TOO_LARGE: it staged at least ``size_bytes`` [SRV-085]."""

    size_bytes: int
    max_bytes: int


@dataclass(frozen=True, slots=True)
class Held:
    """HOLD (snapshot sessions): the oldest snapshot the client reads at [WIRE-112]."""

    tid: int


@dataclass(frozen=True, slots=True)
class BlobChunk:
    """BLOB_CHUNK (blob sessions): append ``data`` to ``oid``'s staged blob [SRV-120]."""

    oid: bytes
    data: bytes


@dataclass(frozen=True, slots=True)
class BlobsRefused:
    """The transaction's staged blobs passed a limit: drop them now [SRV-121]."""

    size_bytes: int
    count: int


Note = Ready | Refused | TransactionRefused | Held | BlobChunk | BlobsRefused
Event = Request | Note


class ServerSession:
    """The server's end of one client's session (see the module docstring).

    ``limits`` are the connection's :class:`ServerLimits`;
    ``storage_capabilities`` the text HELLO_OK and AUTH_OK announce;
    ``secret`` turns on the AUTH step [WIRE-030], with challenges from
    ``new_nonce``; ``tls`` starts the session in state ``tls``; ``clock``
    gives the time in seconds for deadlines; ``features`` the server
    features announced (``snapshots`` among them only when the storage has
    snapshots).
    """

    def __init__(
        self,
        limits: ServerLimits,
        *,
        storage_capabilities: str = "",
        secret: bytes | None = None,
        new_nonce: Callable[[], bytes] = security.new_nonce,
        tls: bool = False,
        clock: Callable[[], float] = time.monotonic,
        features: str = FEATURES,
    ) -> None:
        self.limits = limits
        self._server_features = features
        self._storage_caps = storage_capabilities
        self._secret = secret
        self._new_nonce = new_nonce
        self._clock = clock
        self.state = SessionState.TLS if tls else SessionState.CONNECTED
        now = clock()
        self.deadline: float | None = now + limits.handshake_timeout_s
        """When the handshake (or, once closed, the last answer's delivery) times out."""
        self.last_active = now
        """When bytes last arrived (for ``idle_timeout_s``)."""
        self.features: frozenset[str] = frozenset()
        """The features the client announced in HELLO."""
        self.snapshots = False
        """True when both ends announced ``snapshots`` [WIRE-100]."""
        self.blobs = False
        """True when both ends announced ``blobs`` [WIRE-130]."""
        self.blob_tids = False
        """True in a blob session when both ends announced ``blob-tids`` [WIRE-137]."""
        self._server_nonce = b""
        # [WIRE-033] Before the handshake is done, frames are small.
        self._decoder = wire.FrameDecoder(wire.HANDSHAKE_MAX_FRAME_SIZE)
        self.queue: deque[bytes] = deque()
        """Payloads received and not yet handled, oldest first."""
        self.queued_bytes = 0
        """The total size of :attr:`queue`."""
        self._out = bytearray()
        self._outstanding: Request | None = None
        self._staged: list[Record] = []
        self._reads: list[bytes] = []
        self._staged_bytes = 0
        self._staged_too_large = False
        self._blob_oids: set[bytes] = set()
        self._blob_bytes = 0
        self._blobs_too_large = False
        self._notes: deque[Note] = deque()
        self._ready_load: Load | None = None

    # --- properties -----------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once the session is in state ``closed``."""
        return self.state is SessionState.CLOSED

    @property
    def finished(self) -> bool:
        """True when the session is closed and its last answer is sent: drop the socket."""
        return self.state is SessionState.CLOSED and not self._out

    @property
    def outstanding(self) -> Request | None:
        """The request handed out by :meth:`next_event` and not answered yet."""
        return self._outstanding

    @property
    def requests_waiting(self) -> bool:
        """True while requests received are not handed out by :meth:`next_event` yet."""
        return bool(self.queue) or self._ready_load is not None

    @property
    def mid_request(self) -> bool:
        """True while part of a frame, or a staged transaction, is held."""
        return (
            self._decoder.buffered > 0
            or bool(self._staged)
            or bool(self._reads)
            or bool(self._blob_oids)
        )

    @property
    def reading_paused(self) -> bool:
        """[SRV-082] True while the session is over its pending limits: stop reading it."""
        limits = self.limits
        return (
            len(self.queue) >= limits.max_pending_requests
            or self.queued_bytes + len(self._out) >= limits.max_pending_bytes
        )

    # --- bytes in -------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Take bytes read from the peer; ``b""`` means the peer closed the connection.

        A bad frame (a length over the state's limit [WIRE-033]) closes the
        session with a fatal ERROR [SRV-040].  Bytes received once closed
        are ignored.
        """
        if self.state is SessionState.CLOSED:
            return
        if not data:
            # [SRV-041] The peer is gone: what it staged is dropped.
            self._close()
            return
        self.last_active = self._clock()
        if (
            len(data) == _LOAD_FRAME_SIZE
            and data.startswith(_LOAD_FRAME_HEAD)
            and self.state is SessionState.READY
            and self._outstanding is None
            and self._ready_load is None
            and not self.queue
            and not self._notes
            and not self._out
            and not self._decoder.buffered
        ):
            # The hot path of a reading client: exactly one whole LOAD, with
            # nothing before it.  The event is what the decoder, the queue
            # and _handle would make of it, without them.
            self._ready_load = Load(data[_LOAD_OID_AT:])
            return
        try:
            payloads = self._decoder.feed(data)
        except ProtocolError as error:
            code = wire.ErrorCode.MALFORMED
            if isinstance(error, wire.FrameSizeError):
                code = wire.ErrorCode.FRAME_TOO_LARGE
            self.fail(code, str(error))
            return
        if payloads:
            self.queue.extend(payloads)
            self.queued_bytes += sum(len(p) for p in payloads)

    def tls_established(self) -> None:
        """The socket loop finished the TLS handshake: ``tls`` -> ``connected``."""
        if self.state is SessionState.TLS:
            self.state = SessionState.CONNECTED

    # --- events out -----------------------------------------------------------

    def next_event(self) -> Event | _Sentinel:
        """Return the next event, or NEED_DATA, or PAUSED (see the module docstring)."""
        while True:
            if self._notes:
                return self._notes.popleft()
            if self.state is SessionState.CLOSED:
                return NEED_DATA
            load = self._ready_load
            if load is not None:
                # receive_data's whole LOAD: the only request it holds.
                self._ready_load = None
                self._outstanding = load
                return load
            if self._outstanding is not None or len(self._out) > OUTPUT_HIGH_WATER:
                return PAUSED
            if not self.queue:
                return NEED_DATA
            payload = self.queue.popleft()
            self.queued_bytes -= len(payload)
            request = self._handle(payload)
            if request is not None:
                self._outstanding = request
                return request

    def _handle(self, payload: bytes) -> Request | None:
        try:
            message = wire.decode_message(payload)
        except ProtocolError as error:
            code = wire.ErrorCode.MALFORMED
            if payload and payload[0] not in wire.MessageType._value2member_map_:
                code = wire.ErrorCode.UNKNOWN_MESSAGE
            self.fail(code, str(error))
            return None
        state = self.state
        if state is SessionState.READY or state is SessionState.STAGING:
            return self._request(message)
        if state is SessionState.CONNECTED:
            # [WIRE-021] The first message must be HELLO.
            if isinstance(message, wire.Hello):
                self._hello(message)
            else:
                self.fail(wire.ErrorCode.HANDSHAKE_REQUIRED, "the first message must be HELLO")
            return None
        if state is SessionState.AUTHENTICATING:
            # [SRV-080] Nothing but AUTH before the client proved the secret.
            if isinstance(message, wire.Auth):
                self._auth(message)
            else:
                self.fail(
                    wire.ErrorCode.AUTH_REQUIRED,
                    "this server requires authentication: answer the challenge with AUTH",
                )
            return None
        # State tls: the socket loop hands over no bytes before TLS is up.
        self.fail(wire.ErrorCode.MALFORMED, "a frame arrived before the TLS handshake finished")
        return None

    def _request(self, message: wire.Message) -> Request | None:
        if isinstance(message, wire.Load):
            return Load(message.oid)
        if isinstance(message, wire.Stage):
            self._stage(message.records)
            if not self._staged_too_large:
                self.state = SessionState.STAGING
            return None
        if isinstance(message, wire.Commit):
            self._stage(message.records)
            records = self._staged
            reads = self._reads
            too_large = self._staged_too_large
            size = self._staged_bytes
            blobs_too_large = self._blobs_too_large
            blob_oids = self._blob_oids
            self._drop_staged()
            self.state = SessionState.READY
            if too_large:
                self._refuse_too_large(size)
                return None
            if blobs_too_large:
                self._refuse_blobs_too_large()
                return None
            if blob_oids:
                # [WIRE-135] A blob goes with its object's record.
                missing = blob_oids.difference(record.oid for record in records)
                if missing:
                    self.fail(
                        wire.ErrorCode.MALFORMED,
                        f"COMMIT carries blobs of {len(missing)} objects whose records it"
                        " does not store",
                    )
                    return None
            return Commit(records, reads)
        if isinstance(message, wire.BulkLoad):
            return BulkLoad(list(message.oids))
        if isinstance(message, wire.NewOids):
            return NewOids(message.count)
        if self.snapshots:
            # [WIRE-101] Only a session that negotiated snapshots sends these.
            if isinstance(message, wire.LoadAt):
                return LoadAt(message.oid, message.tid)
            if isinstance(message, wire.Reads):
                self._read(message.oids)
                return None
            if isinstance(message, wire.Hold):
                self._notes.append(Held(message.tid))
                return None
        if self.blobs:
            # [WIRE-130] Only a session that negotiated blobs sends these.
            if isinstance(message, wire.BlobChunk):
                self._blob_chunk(message.oid, message.data)
                return None
            if isinstance(message, wire.ReadBlob):
                return ReadBlob(message.oid, message.tid, message.offset, message.length)
        if isinstance(message, wire.ListOids):
            return ListOids(message.start, message.limit)
        kind = message.type
        if kind is wire.MessageType.SYNC:
            return Sync()
        if kind is wire.MessageType.SIZE:
            return Size()
        if kind is wire.MessageType.PACK:
            return Pack()
        if kind is wire.MessageType.STOP:
            return Stop()
        if kind is wire.MessageType.QUIT:
            self._close()
            return None
        # A response type, or a second HELLO, sent as a request.
        self.fail(wire.ErrorCode.UNKNOWN_MESSAGE, f"{kind.name} is not a request here")
        return None

    # --- the handshake --------------------------------------------------------

    def _hello(self, hello: wire.Hello) -> None:
        if hello.magic != wire.MAGIC:
            self.fail(wire.ErrorCode.MALFORMED, "bad magic: not a dhruva client")
            return
        if hello.major != wire.PROTOCOL_MAJOR:
            # [WIRE-022] An unknown major version is refused.
            self.fail(
                wire.ErrorCode.VERSION_MISMATCH,
                f"protocol version {hello.major}.{hello.minor} is not supported;"
                f" this server speaks {wire.PROTOCOL_MAJOR}.{wire.PROTOCOL_MINOR}",
            )
            return
        self.features = frozenset(hello.features.split())
        self.snapshots = (
            wire.FEATURE_SNAPSHOTS in self.features
            and wire.FEATURE_SNAPSHOTS in self._server_features.split()
        )
        self.blobs = (
            wire.FEATURE_BLOBS in self.features
            and wire.FEATURE_BLOBS in self._server_features.split()
        )
        self.blob_tids = (
            self.blobs
            and wire.FEATURE_BLOB_TIDS in self.features
            and wire.FEATURE_BLOB_TIDS in self._server_features.split()
        )
        if self._secret is not None:
            # [WIRE-030] Challenge the client with a fresh nonce.
            self.state = SessionState.AUTHENTICATING
            self._server_nonce = self._new_nonce()
            challenge = wire.AuthChallenge(security.AUTH_MECHANISM, self._server_nonce)
            self._out += challenge.encode()
            return
        self._ready(authenticated=False)
        reply = wire.HelloOk(
            features=self._server_features, storage_capabilities=self._storage_caps
        )
        self._out += reply.encode()

    def _auth(self, auth: wire.Auth) -> None:
        assert self._secret is not None
        if auth.mechanism != security.AUTH_MECHANISM:
            self.fail(
                wire.ErrorCode.AUTH_FAILED,
                f"unknown authentication mechanism; this server uses {security.AUTH_MECHANISM}",
            )
            return
        expected = security.client_proof(self._secret, self._server_nonce, auth.client_nonce)
        # [WIRE-031] Constant-time comparison: timing tells nothing about the proof.
        if not security.proofs_equal(expected, auth.proof):
            self.fail(wire.ErrorCode.AUTH_FAILED, "authentication failed")
            return
        proof = security.server_proof(self._secret, self._server_nonce, auth.client_nonce)
        self._ready(authenticated=True)
        reply = wire.AuthOk(
            proof, features=self._server_features, storage_capabilities=self._storage_caps
        )
        self._out += reply.encode()

    def _ready(self, authenticated: bool) -> None:
        self.state = SessionState.READY
        self.deadline = None
        self._server_nonce = b""
        self._decoder.max_frame_size = self.limits.max_frame_bytes
        self._notes.append(Ready(authenticated))

    # --- staging --------------------------------------------------------------

    def _stage(self, records: Sequence[Record]) -> None:
        """Hold ``records`` for the next COMMIT, within the staging cap [SRV-085]."""
        if self._staged_too_large:
            return
        self._staged_bytes += sum(wire.record_size(record) for record in records)
        if self._staged_bytes > self.limits.max_staged_bytes:
            # [SRV-085] Drop what was staged at once (memory is the point) and
            # every later STAGE of this transaction; its COMMIT is refused.
            self._staged_too_large = True
            self._staged = []
            self._reads = []
            return
        self._staged.extend(records)

    def _read(self, oids: Sequence[bytes]) -> None:
        """Hold the read set for the next COMMIT; it counts against the staging cap."""
        if self._staged_too_large:
            return
        self._staged_bytes += OID_SIZE * len(oids)
        if self._staged_bytes > self.limits.max_staged_bytes:
            self._staged_too_large = True
            self._staged = []
            self._reads = []
            return
        self._reads.extend(oids)
        if self.state is SessionState.READY:
            self.state = SessionState.STAGING

    def _blob_chunk(self, oid: bytes, data: bytes) -> None:
        """Pass a BLOB_CHUNK on to the server's spool, within the blob limits [SRV-121]."""
        if self._blobs_too_large:
            return
        self._blob_bytes += len(data)
        if oid not in self._blob_oids:
            self._blob_oids.add(oid)
        limits = self.limits
        if (
            self._blob_bytes > limits.max_staged_blob_bytes
            or len(self._blob_oids) > limits.max_staged_blobs
        ):
            # [SRV-121] Disk is the point: the server drops the staged files
            # at once; later chunks of the transaction are ignored.
            self._blobs_too_large = True
            self._notes.append(BlobsRefused(self._blob_bytes, len(self._blob_oids)))
            return
        self._notes.append(BlobChunk(oid, data))
        if self.state is SessionState.READY:
            self.state = SessionState.STAGING

    def _refuse_blobs_too_large(self) -> None:
        limits = self.limits
        self._out += wire.Error(
            wire.ErrorCode.TOO_LARGE,
            "the transaction staged more blob data than this server accepts per transaction"
            f" (max_staged_blob_bytes {limits.max_staged_blob_bytes}, max_staged_blobs"
            f" {limits.max_staged_blobs}); nothing of it was written",
        ).encode()

    def _drop_staged(self) -> None:
        self._staged = []
        self._reads = []
        self._staged_bytes = 0
        self._staged_too_large = False
        self._blob_oids = set()
        self._blob_bytes = 0
        self._blobs_too_large = False

    def _refuse_too_large(self, size: int) -> None:
        maximum = self.limits.max_staged_bytes
        self._notes.append(TransactionRefused(size, maximum))
        self._out += wire.Error(
            wire.ErrorCode.TOO_LARGE,
            f"the transaction is at least {size} bytes; this server accepts at most"
            f" {maximum} bytes per transaction (max_staged_bytes); nothing of it was written",
        ).encode()

    # --- answers (bytes out) --------------------------------------------------

    def send(self, message: wire.Message) -> None:
        """Answer the outstanding request with ``message``.

        After the answer to STOP the session is closed.  Raises
        ProtocolError when no request is outstanding.
        """
        request = self._outstanding
        if request is None:
            raise ProtocolError(f"no request to answer with {type(message).__name__}")
        self._outstanding = None
        self._out += message.encode()
        if type(request) is Stop:
            self._close()

    def send_record(self, record: Record) -> None:
        """``send(wire.RecordMessage(record))``, without building the message (a load's answer)."""
        request = self._outstanding
        if type(request) is not Load:
            self.send(wire.RecordMessage(record))  # raises or answers as send does
            return
        self._outstanding = None
        self._out += wire.encode_record_message(record)

    def send_error(
        self, code: wire.ErrorCode, message: str, oids: list[bytes] | None = None
    ) -> None:
        """Answer the outstanding request with ERROR ``code`` (not fatal: the session stays)."""
        self.send(wire.Error(code, message, oids or []))

    def send_progress(self, message: wire.PackProgress) -> None:
        """Send PACK_PROGRESS for the outstanding PACK; it does not answer it [WIRE-085]."""
        if type(self._outstanding) is not Pack or self.closed:
            raise ProtocolError("PACK_PROGRESS only goes to a session waiting for its PACK")
        self._out += message.encode()

    def fail(self, code: wire.ErrorCode, message: str) -> None:
        """[SRV-040] Send a fatal ERROR and close the session (its bytes still drain).

        A :class:`Refused` note tells the server why.
        """
        if self.state is SessionState.CLOSED:
            return
        self._out += wire.Error(code, message).encode()
        self._notes.append(Refused(code, message))
        self._close()

    def _close(self) -> None:
        self.state = SessionState.CLOSED
        self._ready_load = None
        # A client that never reads its last answer is dropped anyway.
        self.deadline = self._clock() + CLOSING_GRACE_S
        self._outstanding = None
        self.queue.clear()
        self.queued_bytes = 0
        self._drop_staged()

    def data_to_send(self) -> bytearray:
        """The answer bytes not sent yet (the buffer itself: do not keep or change it)."""
        return self._out

    def bytes_sent(self, count: int) -> None:
        """The socket took the first ``count`` bytes of :meth:`data_to_send`."""
        del self._out[:count]

    # --- time -----------------------------------------------------------------

    def expire(self, now: float) -> bool:
        """Apply the deadlines at time ``now``; True: drop the connection at once.

        A session past its handshake deadline [SRV-081] answers ERROR
        TIMEOUT and closes (in state ``tls`` no frame can reach the peer, so
        it is dropped at once); a ready session idle longer than
        ``idle_timeout_s`` with nothing outstanding answers TIMEOUT; a
        closed session whose last answer is not taken within
        ``CLOSING_GRACE_S`` is dropped.
        """
        state = self.state
        if self.deadline is not None and now >= self.deadline:
            if state is SessionState.CLOSED or state is SessionState.TLS:
                self._close()
                return True
            self.fail(
                wire.ErrorCode.TIMEOUT,
                f"handshake not finished in {self.limits.handshake_timeout_s:g} s",
            )
            return False
        idle_s = self.limits.idle_timeout_s
        if (
            idle_s is not None
            and (state is SessionState.READY or state is SessionState.STAGING)
            and self._outstanding is None
            and not self.requests_waiting
            and now - self.last_active >= idle_s
        ):
            self.fail(wire.ErrorCode.TIMEOUT, f"idle for more than {idle_s:g} s")
        return False
