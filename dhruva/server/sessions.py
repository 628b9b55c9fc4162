"""Sessions of the storage server: accepting, TLS, the handshake, reading and writing.

Spec: ``spec/server.md`` ("Security", "Limits", "Robustness") and
``spec/wire-protocol.md`` ("Authentication", "TLS").  The storage requests
themselves are :class:`dhruva.server.storage_server.StorageServer`'s; this module
is the part of the server that deals with clients as connections.

Theory of operation.  Each session moves through states: ``tls-peek`` (TLS
servers only: wait for the first byte and tell a TLS ClientHello from a
plaintext frame [WIRE-034]), ``tls-handshake`` (a non-blocking TLS
handshake driven by SSLWantRead/SSLWantWrite, so that a client that stalls
half-way never stalls the loop [SRV-081]), ``hello``, ``auth`` (when the
server has a shared secret [WIRE-030]) and ``ready``.  Only a ``ready``
session may make storage requests [SRV-080].  Until it is ready a session
has a deadline (the handshake timeout) and a small frame limit [WIRE-033];
:meth:`SessionLoop._sweep`, run from the loop about once a second, closes
sessions past their deadline or idle too long.

Back-pressure.  A session whose received-but-unanswered requests or unsent
answers exceed its limits is not read from until they drain [SRV-082]: TCP
then slows the client down instead of the server buffering without bound.

TLS keeps decrypted bytes inside the SSL object, where ``select`` cannot see
them; sessions that may hold such bytes are put in ``_ready_to_read`` and
read again by the loop.
"""

from __future__ import annotations

import errno
import logging
import selectors
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from dhruva import wire
from dhruva.error import ProtocolError
from dhruva.record import Record
from dhruva.server import security
from dhruva.server.address import format_address

log = logging.getLogger("dhruva.server")

_READ_SIZE = 1 << 18
# A client that does not read its answers must not make the server buffer
# without bound: past this much unsent output we stop handling its requests.
_OUTPUT_HIGH_WATER = 16 << 20

FEATURES = "stage commit-sync bulk-load list-oids prefetch pack-progress"

_TLS_HANDSHAKE_RECORD = 0x16
"""The first byte of a TLS ClientHello (a handshake record) [WIRE-034]."""

_CLOSING_GRACE_S = 2.0

ACCEPT_PAUSE_S = 0.5
"""How long the server stops accepting when it has no descriptor left [SRV-086]."""
_OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


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
    """

    handshake_timeout_s: float = 10.0
    idle_timeout_s: float | None = None
    max_frame_bytes: int = wire.MAX_FRAME_SIZE
    max_pending_requests: int = 1024
    max_pending_bytes: int = 128 << 20
    max_staged_bytes: int = 256 << 20

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


def _subject_text(subject: object) -> str:
    """Return a certificate subject (nested tuples of pairs) as ``CN=x/O=y``."""
    parts: list[str] = []
    if isinstance(subject, tuple):
        for rdn in subject:
            for pair in rdn if isinstance(rdn, tuple) else ():
                if isinstance(pair, tuple) and len(pair) == 2:
                    parts.append(f"{pair[0]}={pair[1]}")
    return "/".join(parts) or "(no subject)"


def handshake_decoder() -> wire.FrameDecoder:
    # [WIRE-033] Before the handshake is done, frames are small.
    return wire.FrameDecoder(wire.HANDSHAKE_MAX_FRAME_SIZE)


@dataclass(eq=False)
class Session:
    sock: socket.socket
    peer: str
    state: str = "hello"
    deadline: float | None = None
    last_active: float = 0.0
    server_nonce: bytes = b""
    tls: bool = False
    handshake_events: int = selectors.EVENT_READ
    events: int = selectors.EVENT_READ
    """The events the socket is registered for now (0: not registered)."""
    want_write: bool = False
    paused: bool = False
    queued_bytes: int = 0
    decoder: wire.FrameDecoder = field(default_factory=handshake_decoder)
    out: bytearray = field(default_factory=bytearray)
    invalid: set[bytes] = field(default_factory=set)
    allocated: set[bytes] = field(default_factory=set)
    staged: list[Record] = field(default_factory=list)
    staged_bytes: int = 0
    staged_too_large: bool = False
    """The transaction being staged passed ``max_staged_bytes``; its STAGEs are dropped."""
    features: frozenset[str] = frozenset()
    """The features the client announced in HELLO."""
    prefetched: set[bytes] = field(default_factory=set)
    """Oids whose records were sent since the session last synchronized."""
    frontier: dict[bytes, None] = field(default_factory=dict)
    """Oids referenced by records sent since the last sync, not sent yet (in order)."""
    frontier_overflowed: bool = False
    prefetch_window: int = 8
    readahead_next: int = -1
    """The oid after the last one this session received in ascending order."""
    """How many records the next LOAD answer may prefetch (adapts per load)."""
    queue: deque[bytes] = field(default_factory=deque)
    waiting_commit: bool = False
    waiting_pack: bool = False
    closing: bool = False
    closed: bool = False

    @property
    def waiting(self) -> bool:
        """True while a COMMIT or PACK of this session awaits its answer.

        Its later requests stay queued meanwhile, so that answers go out in
        request order.
        """
        return self.waiting_commit or self.waiting_pack


class SessionLoop:
    """The connection half of the storage server (a base class of StorageServer).

    Subclasses provide :meth:`_handle` for the requests of ready sessions
    and set the attributes annotated below.
    """

    limits: ServerLimits
    tls: ssl.SSLContext | None
    _secret: bytes | None
    _new_nonce: Callable[[], bytes]
    _selector: selectors.BaseSelector
    _sessions: set[Session]
    _ready_to_read: set[Session]
    _listener: socket.socket
    _storage_caps: str
    _accept_resume_at: float | None = None
    """When accepting resumes after running out of descriptors (None: accepting)."""

    def _handle(self, session: Session, payload: bytes) -> None:
        raise NotImplementedError

    def _sweep(self, now: float) -> None:
        """[SRV-081] Close sessions past their handshake deadline or idle too long."""
        idle_s = self.limits.idle_timeout_s
        for session in list(self._sessions):
            if session.closed:
                continue
            if session.deadline is not None and now >= session.deadline:
                if session.closing or session.state.startswith("tls"):
                    # No frame can reach it (TLS not up, or it does not read).
                    log.warning(
                        "client %s: handshake not finished in %.1f s; closing",
                        session.peer,
                        self.limits.handshake_timeout_s,
                        extra={"peer": session.peer, "event": "timeout"},
                    )
                    self._drop(session)
                else:
                    self._fatal(
                        session,
                        wire.ErrorCode.TIMEOUT,
                        f"handshake not finished in {self.limits.handshake_timeout_s:g} s",
                    )
            elif (
                idle_s is not None
                and session.state == "ready"
                and not session.waiting
                and not session.queue
                and now - session.last_active >= idle_s
            ):
                self._fatal(session, wire.ErrorCode.TIMEOUT, f"idle for more than {idle_s:g} s")

    def _accept(self) -> None:
        while True:
            try:
                sock, peer = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                if error.errno in _OUT_OF_DESCRIPTORS:
                    self._pause_accepting(error)
                    return
                log.warning("accept failed: %s", error)
                return
            sock.setblocking(False)
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                # Half-open connections (a peer that vanished without a FIN)
                # are eventually found by the kernel's keepalive probes.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            name = format_address(peer[:2]) if isinstance(peer, tuple) else "unix client"
            now = time.monotonic()
            session = Session(
                sock,
                f"{name}#{sock.fileno()}",
                state="tls-peek" if self.tls else "hello",
                deadline=now + self.limits.handshake_timeout_s,
                last_active=now,
            )
            self._sessions.add(session)
            self._selector.register(sock, selectors.EVENT_READ, session)
            log.info(
                "client %s connected",
                session.peer,
                extra={"peer": session.peer, "event": "connect"},
            )

    def _pause_accepting(self, error: OSError) -> None:
        """[SRV-086] Out of descriptors: stop watching the listener for ACCEPT_PAUSE_S.

        The waiting connection stays in the listen backlog, so the listener
        stays readable: retrying at once would spin the loop and write a log
        line per pass.  Connected clients are served meanwhile.
        """
        self._selector.unregister(self._listener)
        self._accept_resume_at = time.monotonic() + ACCEPT_PAUSE_S
        log.warning(
            "accept failed: %s; not accepting new clients for %.1f s (%d connected)",
            error.strerror or error,
            ACCEPT_PAUSE_S,
            len(self._sessions),
            extra={"event": "accept-paused"},
        )

    def _resume_accepting(self, now: float) -> None:
        """Watch the listener again once the pause of :meth:`_pause_accepting` is over."""
        if self._accept_resume_at is not None and now >= self._accept_resume_at:
            self._accept_resume_at = None
            self._selector.register(self._listener, selectors.EVENT_READ, "listener")

    # --- TLS --------------------------------------------------------------------

    def _peek_tls(self, session: Session) -> None:
        """Wrap the socket in TLS once the client's first byte shows a ClientHello."""
        assert self.tls is not None
        try:
            first = session.sock.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:
            log.info("client %s: %s; dropping it", session.peer, error)
            self._drop(session)
            return
        if not first:
            self._drop(session)
            return
        if first[0] != _TLS_HANDSHAKE_RECORD:
            # [WIRE-034] A plaintext client hears why, in plain text.  Its
            # bytes are read first: closing with unread input would reset the
            # connection and could destroy the ERROR frame in flight.
            try:
                session.sock.recv(_READ_SIZE)
            except OSError:
                pass
            session.state = "hello"
            self._fatal(
                session,
                wire.ErrorCode.TLS_REQUIRED,
                "this server requires TLS; connect with TLS (ClientStorage(tls=...), --tls)",
            )
            return
        self._selector.unregister(session.sock)
        try:
            session.sock = self.tls.wrap_socket(
                session.sock, server_side=True, do_handshake_on_connect=False
            )
        except (OSError, ValueError) as error:
            log.warning("client %s: cannot start TLS: %s", session.peer, error)
            session.closed = True
            self._sessions.discard(session)
            session.sock.close()
            return
        session.tls = True
        session.state = "tls-handshake"
        self._selector.register(session.sock, selectors.EVENT_READ, session)
        self._tls_handshake(session)

    def _tls_handshake(self, session: Session) -> None:
        """Advance the non-blocking TLS handshake by what the socket allows."""
        assert isinstance(session.sock, ssl.SSLSocket)
        try:
            session.sock.do_handshake()
        except ssl.SSLWantReadError:
            self._set_handshake_events(session, selectors.EVENT_READ)
            return
        except ssl.SSLWantWriteError:
            self._set_handshake_events(session, selectors.EVENT_WRITE)
            return
        except (ssl.SSLError, OSError) as error:
            log.warning(
                "client %s: TLS handshake failed: %s",
                session.peer,
                error,
                extra={"peer": session.peer, "event": "tls-failed"},
            )
            self._drop(session)
            return
        session.state = "hello"
        peer_cert = session.sock.getpeercert()
        subject = ""
        if peer_cert:
            subject = f", client certificate {_subject_text(peer_cert.get('subject', ()))}"
        log.info(
            "client %s: TLS established (%s%s)",
            session.peer,
            session.sock.version(),
            subject,
            extra={"peer": session.peer, "event": "tls"},
        )
        self._update_events(session)
        # The HELLO may have arrived with the handshake's last flight.
        self._ready_to_read.add(session)

    def _set_handshake_events(self, session: Session, events: int) -> None:
        if session.handshake_events != events:
            session.handshake_events = events
            self._selector.modify(session.sock, events, session)
            session.events = events

    def _update_events(self, session: Session) -> None:
        """Register the events this session waits for: read unless paused, write if owed."""
        if session.closed:
            return
        events = 0 if session.paused else selectors.EVENT_READ
        if session.out or session.want_write:
            events |= selectors.EVENT_WRITE
        # The mask registered last time is remembered, so that the common
        # case (nothing changed) costs no epoll_ctl system call: on the
        # commit and load paths this runs several times per request.
        if events == session.events:
            return
        if not events:
            self._selector.unregister(session.sock)
        elif session.events:
            self._selector.modify(session.sock, events, session)
        else:
            self._selector.register(session.sock, events, session)
        session.events = events

    # --- reading and writing ----------------------------------------------------

    def _read(self, session: Session) -> None:
        while not session.closed and not session.paused:
            try:
                data = session.sock.recv(_READ_SIZE)
            except ssl.SSLWantReadError:
                return
            except ssl.SSLWantWriteError:
                session.want_write = True
                self._update_events(session)
                return
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                log.info("client %s: %s; dropping it", session.peer, error)
                self._drop(session)
                return
            if not data:
                # [SRV-041] A client that vanishes, even mid-request, affects nobody else.
                if session.decoder.buffered or session.staged:
                    log.info("client %s disconnected mid-request", session.peer)
                self._drop(session)
                return
            session.last_active = time.monotonic()
            try:
                payloads = session.decoder.feed(data)
            except ProtocolError as error:
                code = wire.ErrorCode.MALFORMED
                if isinstance(error, wire.FrameSizeError):
                    code = wire.ErrorCode.FRAME_TOO_LARGE
                self._fatal(session, code, str(error))
                return
            session.queue.extend(payloads)
            session.queued_bytes += sum(len(p) for p in payloads)
            self._check_pressure(session)
            self._handle_queue(session)
            # Only TLS can hold more plaintext than the kernel reports readable.
            if not (session.tls and isinstance(session.sock, ssl.SSLSocket)):
                return
            if not session.sock.pending():
                return

    def _check_pressure(self, session: Session) -> None:
        """[SRV-082] Stop reading a session over its limits; resume once it drained."""
        limits = self.limits
        over = (
            len(session.queue) >= limits.max_pending_requests
            or session.queued_bytes + len(session.out) >= limits.max_pending_bytes
        )
        if over != session.paused:
            session.paused = over
            if not over:
                log.debug("client %s: resumed reading", session.peer)
                if session.tls:
                    self._ready_to_read.add(session)
            else:
                log.debug("client %s: paused reading (limits reached)", session.peer)
            self._update_events(session)

    def _handle_queue(self, session: Session) -> None:
        while session.queue and not session.waiting and not session.closing:
            if len(session.out) > _OUTPUT_HIGH_WATER:
                break
            payload = session.queue.popleft()
            session.queued_bytes -= len(payload)
            try:
                self._handle(session, payload)
            except Exception as error:
                # A storage failing in an unexpected way (an OSError from a
                # load, say) fails this request, not the server.
                log.exception("client %s: request failed", session.peer)
                self._error(session, wire.ErrorCode.STORAGE_FAILURE, f"server error: {error}")
        self._flush(session)

    def _send(self, session: Session, frame_bytes: bytes) -> None:
        session.out += frame_bytes

    def _flush(self, session: Session) -> None:
        if session.closed:
            return
        while session.out:
            try:
                sent = session.sock.send(session.out)
            except (BlockingIOError, InterruptedError, ssl.SSLWantWriteError):
                break
            except ssl.SSLWantReadError:
                # TLS needs to read (a key update) before it can write more.
                break
            except OSError as error:
                log.info("client %s: %s; dropping it", session.peer, error)
                self._drop(session)
                return
            del session.out[:sent]
        if session.closing and not session.out:
            self._drop(session)
            return
        self._check_pressure(session)
        self._update_events(session)
        if not session.out and session.queue and not session.waiting:
            # Output drained below the high-water mark: resume its requests.
            self._handle_queue(session)

    def _drop(self, session: Session) -> None:
        if session.closed:
            return
        session.closed = True
        self._sessions.discard(session)
        self._ready_to_read.discard(session)
        try:
            self._selector.unregister(session.sock)
        except (KeyError, ValueError):
            pass
        session.sock.close()
        session.staged.clear()
        session.staged_bytes = 0
        session.staged_too_large = False
        session.prefetched.clear()
        session.frontier.clear()
        session.allocated.clear()
        session.queue.clear()
        session.queued_bytes = 0
        log.info("client %s gone", session.peer, extra={"peer": session.peer, "event": "close"})

    def _fatal(self, session: Session, code: wire.ErrorCode, message: str) -> None:
        """[SRV-040] Answer with an ERROR frame, then close this connection only."""
        log.warning(
            "client %s: %s (%s); closing its connection",
            session.peer,
            message,
            code.name,
            extra={"peer": session.peer, "event": "refused", "code": code.name},
        )
        session.queue.clear()
        session.queued_bytes = 0
        self._send(session, wire.Error(code, message).encode())
        session.closing = True
        # A client that never reads its ERROR is dropped anyway.
        session.deadline = time.monotonic() + _CLOSING_GRACE_S
        self._flush(session)

    def _hello(self, session: Session, hello: wire.Hello) -> None:
        if hello.magic != wire.MAGIC:
            self._fatal(session, wire.ErrorCode.MALFORMED, "bad magic: not a dhruva client")
            return
        if hello.major != wire.PROTOCOL_MAJOR:
            # [WIRE-022] An unknown major version is refused.
            self._fatal(
                session,
                wire.ErrorCode.VERSION_MISMATCH,
                f"protocol version {hello.major}.{hello.minor} is not supported;"
                f" this server speaks {wire.PROTOCOL_MAJOR}.{wire.PROTOCOL_MINOR}",
            )
            return
        session.features = frozenset(hello.features.split())
        if self._secret is not None:
            # [WIRE-030] Challenge the client with a fresh nonce.
            session.state = "auth"
            session.server_nonce = self._new_nonce()
            challenge = wire.AuthChallenge(security.AUTH_MECHANISM, session.server_nonce)
            self._send(session, challenge.encode())
            return
        self._ready(session, authenticated=False)
        reply = wire.HelloOk(features=FEATURES, storage_capabilities=self._storage_caps)
        self._send(session, reply.encode())

    def _auth(self, session: Session, auth: wire.Auth) -> None:
        assert self._secret is not None
        if auth.mechanism != security.AUTH_MECHANISM:
            self._fatal(
                session,
                wire.ErrorCode.AUTH_FAILED,
                f"unknown authentication mechanism; this server uses {security.AUTH_MECHANISM}",
            )
            return
        expected = security.client_proof(self._secret, session.server_nonce, auth.client_nonce)
        # [WIRE-031] Constant-time comparison: timing tells nothing about the proof.
        if not security.proofs_equal(expected, auth.proof):
            log.warning(
                "client %s: authentication failed (wrong secret)",
                session.peer,
                extra={"peer": session.peer, "event": "auth-failed"},
            )
            self._fatal(session, wire.ErrorCode.AUTH_FAILED, "authentication failed")
            return
        proof = security.server_proof(self._secret, session.server_nonce, auth.client_nonce)
        self._ready(session, authenticated=True)
        reply = wire.AuthOk(proof, features=FEATURES, storage_capabilities=self._storage_caps)
        self._send(session, reply.encode())

    def _ready(self, session: Session, authenticated: bool) -> None:
        session.state = "ready"
        session.deadline = None
        session.server_nonce = b""
        session.decoder.max_frame_size = self.limits.max_frame_bytes
        log.info(
            "client %s ready (tls %s, authenticated %s)",
            session.peer,
            "yes" if session.tls else "no",
            "yes" if authenticated else "no",
            extra={
                "peer": session.peer,
                "event": "ready",
                "tls": session.tls,
                "authenticated": authenticated,
            },
        )

    def _error(
        self, session: Session, code: wire.ErrorCode, message: str, oids: list[bytes] | None = None
    ) -> None:
        self._send(session, wire.Error(code, message, oids or []).encode())
