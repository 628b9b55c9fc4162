"""The storage server's socket loop: accepting, TLS, reading and writing.

Spec: ``spec/server.md`` ("Security", "Limits", "Robustness") and
``spec/wire-protocol.md`` ("TLS").

Theory of operation.  :class:`SocketLoop` owns the selector, the listening
socket and one :class:`Client` per connection.  A client's protocol is its
:class:`~dhruva.server.session.ServerSession` (sans-IO): the loop feeds it
the bytes it reads, calls back ``serve_client(client)`` so that the server
handles the events the bytes produced, and writes what the session has to
send.  Everything that is about the socket rather than the protocol lives
here: the TLS peek that tells a ClientHello from a plaintext frame
[WIRE-034], the non-blocking TLS handshake driven by SSLWantRead and
SSLWantWrite so that a client stalling half-way never stalls the loop
[SRV-081], registering for read only while the session is not over its
limits [SRV-082], for write only while bytes are owed, and pausing accepts
when descriptors run out [SRV-086].  :meth:`SocketLoop.sweep`, run about
once a second, applies each session's deadlines.

TLS keeps decrypted bytes inside the SSL object, where ``select`` cannot
see them; clients that may hold such bytes are put in
:attr:`SocketLoop.ready_to_read` and read again by the loop.
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

from dhruva import wire
from dhruva.server.address import format_address
from dhruva.server.prefetch import PrefetchState
from dhruva.server.session import ServerLimits, ServerSession, SessionState

log = logging.getLogger("dhruva.server")

READ_SIZE = 1 << 18
"""The most bytes one ``recv`` asks for."""

TLS_HANDSHAKE_RECORD = 0x16
"""The first byte of a TLS ClientHello (a handshake record) [WIRE-034]."""

ACCEPT_PAUSE_S = 0.5
"""How long the server stops accepting when it has no descriptor left [SRV-086]."""

_OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def _subject_text(subject: object) -> str:
    """Return a certificate subject (nested tuples of pairs) as ``CN=x/O=y``."""
    parts: list[str] = []
    if isinstance(subject, tuple):
        for rdn in subject:
            for pair in rdn if isinstance(rdn, tuple) else ():
                if isinstance(pair, tuple) and len(pair) == 2:
                    parts.append(f"{pair[0]}={pair[1]}")
    return "/".join(parts) or "(no subject)"


class Client:
    """One connected client: its socket, its protocol session, and the server's view of it.

    Transport: ``sock`` (an SSLSocket once TLS is wrapped), ``tls_wrapped``,
    ``events`` (the selector mask registered now; 0: not registered),
    ``handshake_events`` (what the TLS handshake waits for), ``want_write``
    (TLS must write before it can read), ``paused`` (not read for
    back-pressure [SRV-082]) and ``closed`` (the socket is closed).

    Protocol: ``session``, the sans-IO :class:`ServerSession`.

    The server's view (storage-facing, kept here because it lives and dies
    with the connection): ``invalid``, the oids other clients committed
    since this one last synchronized [SRV-023]; ``allocated``, the oids
    given to it by NEW_OIDS and not stored yet [SRV-022]; ``prefetch``, what
    it was sent since its last sync (:class:`PrefetchState`);
    ``snapshot_tid``, for a session that negotiated snapshots, the tid its
    reads are answered at (None otherwise) [SRV-100], and ``hold_tid``, the
    oldest snapshot it said it still reads at (HOLD; ``wire.NO_HOLD``: none).
    """

    __slots__ = (
        "allocated",
        "closed",
        "events",
        "handshake_events",
        "hold_tid",
        "invalid",
        "paused",
        "peer",
        "prefetch",
        "session",
        "snapshot_tid",
        "sock",
        "tls_wrapped",
        "want_write",
    )

    def __init__(self, sock: socket.socket, peer: str, session: ServerSession) -> None:
        self.sock = sock
        self.peer = peer
        self.session = session
        self.tls_wrapped = False
        self.events = selectors.EVENT_READ
        self.handshake_events = selectors.EVENT_READ
        self.want_write = False
        self.paused = False
        self.closed = False
        self.invalid: set[bytes] = set()
        self.allocated: set[bytes] = set()
        self.prefetch = PrefetchState()
        self.snapshot_tid: int | None = None
        self.hold_tid = wire.NO_HOLD

    @property
    def queue(self) -> deque[bytes]:
        """The session's received, unhandled request payloads."""
        return self.session.queue

    def __repr__(self) -> str:
        return f"<Client {self.peer} {self.session.state.value}>"


class SocketLoop:
    """The connection half of the storage server (owned by StorageServer).

    ``listener`` is a bound, listening, non-blocking socket; ``new_session``
    makes the protocol session of a new connection; ``serve_client`` is
    called whenever a client's session may have events (after bytes
    arrived, after its output drained, after a deadline closed it); it must
    end by calling :meth:`flush`.  ``tls`` wraps every connection.
    ``on_drop`` is called with each client once it is gone.
    """

    def __init__(
        self,
        listener: socket.socket,
        new_session: Callable[[], ServerSession],
        serve_client: Callable[[Client], None],
        limits: ServerLimits,
        tls: ssl.SSLContext | None = None,
        on_drop: Callable[[Client], None] | None = None,
    ) -> None:
        self.selector = selectors.DefaultSelector()
        self._on_drop = on_drop
        self.listener = listener
        self.tls = tls
        self.limits = limits
        self._new_session = new_session
        self._serve_client = serve_client
        self.clients: set[Client] = set()
        """Every connected client."""
        self.ready_to_read: set[Client] = set()
        """TLS clients whose SSL object may hold decrypted bytes select cannot see."""
        self.accept_resume_at: float | None = None
        """When accepting resumes after running out of descriptors (None: accepting)."""
        self.selector.register(listener, selectors.EVENT_READ, "listener")

    # --- accepting --------------------------------------------------------------

    def accept(self) -> None:
        """Accept every waiting connection."""
        while True:
            try:
                sock, peer = self.listener.accept()
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
            client = Client(sock, f"{name}#{sock.fileno()}", self._new_session())
            self.clients.add(client)
            self.selector.register(sock, selectors.EVENT_READ, client)
            log.info(
                "client %s connected",
                client.peer,
                extra={"peer": client.peer, "event": "connect"},
            )

    def _pause_accepting(self, error: OSError) -> None:
        """[SRV-086] Out of descriptors: stop watching the listener for ACCEPT_PAUSE_S.

        The waiting connection stays in the listen backlog, so the listener
        stays readable: retrying at once would spin the loop and write a log
        line per pass.  Connected clients are served meanwhile.
        """
        self.selector.unregister(self.listener)
        self.accept_resume_at = time.monotonic() + ACCEPT_PAUSE_S
        log.warning(
            "accept failed: %s; not accepting new clients for %.1f s (%d connected)",
            error.strerror or error,
            ACCEPT_PAUSE_S,
            len(self.clients),
            extra={"event": "accept-paused"},
        )

    def resume_accepting(self, now: float) -> None:
        """Watch the listener again once the pause of :meth:`_pause_accepting` is over."""
        if self.accept_resume_at is not None and now >= self.accept_resume_at:
            self.accept_resume_at = None
            self.selector.register(self.listener, selectors.EVENT_READ, "listener")

    # --- events -----------------------------------------------------------------

    def on_event(self, client: Client, mask: int) -> None:
        """Handle what ``select`` reported for ``client``."""
        if client.session.state is SessionState.TLS:
            if client.tls_wrapped:
                self._tls_handshake(client)
            else:
                self._peek_tls(client)
            return
        if mask & selectors.EVENT_WRITE:
            self.flush(client)
            if client.want_write and not client.closed:
                client.want_write = False
                self.read(client)
        if mask & selectors.EVENT_READ and not client.closed:
            self.read(client)

    def read_pending(self) -> None:
        """Read the TLS clients whose SSL objects may hold decrypted bytes."""
        for client in list(self.ready_to_read):
            self.ready_to_read.discard(client)
            if not client.closed:
                self.read(client)

    def sweep(self, now: float) -> None:
        """[SRV-081] Apply every session's deadlines (handshake, idle, closing grace)."""
        for client in list(self.clients):
            if client.closed:
                continue
            session = client.session
            was_closed = session.closed
            if session.expire(now):
                if not was_closed or session.state is SessionState.TLS:
                    log.warning(
                        "client %s: handshake not finished in %.1f s; closing",
                        client.peer,
                        self.limits.handshake_timeout_s,
                        extra={"peer": client.peer, "event": "timeout"},
                    )
                self.drop(client)
            elif session.closed and not was_closed:
                self._serve_client(client)

    # --- TLS --------------------------------------------------------------------

    def _peek_tls(self, client: Client) -> None:
        """Wrap the socket in TLS once the client's first byte shows a ClientHello."""
        assert self.tls is not None
        try:
            first = client.sock.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:
            log.info("client %s: %s; dropping it", client.peer, error)
            self.drop(client)
            return
        if not first:
            self.drop(client)
            return
        if first[0] != TLS_HANDSHAKE_RECORD:
            # [WIRE-034] A plaintext client hears why, in plain text.  Its
            # bytes are read first: closing with unread input would reset the
            # connection and could destroy the ERROR frame in flight.
            try:
                client.sock.recv(READ_SIZE)
            except OSError:
                pass
            client.session.fail(
                wire.ErrorCode.TLS_REQUIRED,
                "this server requires TLS; connect with TLS (ClientStorage(tls=...), --tls)",
            )
            self._serve_client(client)
            return
        self.selector.unregister(client.sock)
        try:
            client.sock = self.tls.wrap_socket(
                client.sock, server_side=True, do_handshake_on_connect=False
            )
        except (OSError, ValueError) as error:
            log.warning("client %s: cannot start TLS: %s", client.peer, error)
            client.closed = True
            self.clients.discard(client)
            client.sock.close()
            return
        client.tls_wrapped = True
        self.selector.register(client.sock, selectors.EVENT_READ, client)
        self._tls_handshake(client)

    def _tls_handshake(self, client: Client) -> None:
        """Advance the non-blocking TLS handshake by what the socket allows."""
        assert isinstance(client.sock, ssl.SSLSocket)
        try:
            client.sock.do_handshake()
        except ssl.SSLWantReadError:
            self._set_handshake_events(client, selectors.EVENT_READ)
            return
        except ssl.SSLWantWriteError:
            self._set_handshake_events(client, selectors.EVENT_WRITE)
            return
        except (ssl.SSLError, OSError) as error:
            log.warning(
                "client %s: TLS handshake failed: %s",
                client.peer,
                error,
                extra={"peer": client.peer, "event": "tls-failed"},
            )
            self.drop(client)
            return
        client.session.tls_established()
        peer_cert = client.sock.getpeercert()
        subject = ""
        if peer_cert:
            subject = f", client certificate {_subject_text(peer_cert.get('subject', ()))}"
        log.info(
            "client %s: TLS established (%s%s)",
            client.peer,
            client.sock.version(),
            subject,
            extra={"peer": client.peer, "event": "tls"},
        )
        self.update_events(client)
        # The HELLO may have arrived with the handshake's last flight.
        self.ready_to_read.add(client)

    def _set_handshake_events(self, client: Client, events: int) -> None:
        if client.handshake_events != events:
            client.handshake_events = events
            self.selector.modify(client.sock, events, client)
            client.events = events

    # --- reading and writing ----------------------------------------------------

    def update_events(self, client: Client) -> None:
        """Register the events this client waits for: read unless paused, write if owed."""
        if client.closed:
            return
        events = 0 if client.paused else selectors.EVENT_READ
        if client.session.data_to_send() or client.want_write:
            events |= selectors.EVENT_WRITE
        # The mask registered last time is remembered, so that the common
        # case (nothing changed) costs no epoll_ctl system call: on the
        # commit and load paths this runs several times per request.
        if events == client.events:
            return
        if not events:
            self.selector.unregister(client.sock)
        elif client.events:
            self.selector.modify(client.sock, events, client)
        else:
            self.selector.register(client.sock, events, client)
        client.events = events

    def check_pressure(self, client: Client) -> None:
        """[SRV-082] Stop reading a client over its limits; resume once it drained."""
        over = client.session.reading_paused
        if over != client.paused:
            client.paused = over
            if not over:
                log.debug("client %s: resumed reading", client.peer)
                if client.tls_wrapped:
                    self.ready_to_read.add(client)
            else:
                log.debug("client %s: paused reading (limits reached)", client.peer)
            self.update_events(client)

    def read(self, client: Client) -> None:
        """Read what the socket has, feed it to the session and serve the client."""
        session = client.session
        while not client.closed and not client.paused:
            try:
                data = client.sock.recv(READ_SIZE)
            except ssl.SSLWantReadError:
                return
            except ssl.SSLWantWriteError:
                client.want_write = True
                self.update_events(client)
                return
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                log.info("client %s: %s; dropping it", client.peer, error)
                self.drop(client)
                return
            if not data:
                # [SRV-041] A client that vanishes, even mid-request, affects nobody else.
                if session.mid_request:
                    log.info("client %s disconnected mid-request", client.peer)
                session.receive_data(b"")
                self.drop(client)
                return
            session.receive_data(data)
            if session.reading_paused != client.paused:
                self.check_pressure(client)
            self._serve_client(client)
            # Only TLS can hold more plaintext than the kernel reports readable.
            if not (client.tls_wrapped and isinstance(client.sock, ssl.SSLSocket)):
                return
            if not client.sock.pending():
                return

    def flush(self, client: Client) -> None:
        """Send what the session has to send; drop the client once its session is finished."""
        if client.closed:
            return
        session = client.session
        out = session.data_to_send()
        while out:
            try:
                sent = client.sock.send(out)
            except (BlockingIOError, InterruptedError, ssl.SSLWantWriteError):
                break
            except ssl.SSLWantReadError:
                # TLS needs to read (a key update) before it can write more.
                break
            except OSError as error:
                log.info("client %s: %s; dropping it", client.peer, error)
                self.drop(client)
                return
            session.bytes_sent(sent)
        if session.state is SessionState.CLOSED and not out:
            self.drop(client)
            return
        if session.reading_paused != client.paused:
            self.check_pressure(client)
        self.update_events(client)
        if not out and session.requests_waiting and session.outstanding is None:
            # Output drained below the high-water mark: resume its requests.
            self._serve_client(client)

    def drop(self, client: Client) -> None:
        """Close ``client``'s socket and forget it."""
        if client.closed:
            return
        client.closed = True
        self.clients.discard(client)
        self.ready_to_read.discard(client)
        try:
            self.selector.unregister(client.sock)
        except (KeyError, ValueError):
            pass
        client.sock.close()
        client.session.receive_data(b"")
        client.prefetch.forget()
        client.allocated.clear()
        client.invalid.clear()
        log.info("client %s gone", client.peer, extra={"peer": client.peer, "event": "close"})
        if self._on_drop is not None:
            self._on_drop(client)

    def close(self) -> None:
        """Drop every client, delivering answers already produced (best effort)."""
        for client in list(self.clients):
            out = client.session.data_to_send()
            if out:
                try:
                    client.sock.setblocking(True)
                    client.sock.settimeout(1.0)
                    client.sock.sendall(out)
                except OSError:
                    pass
            self.drop(client)
        self.selector.close()
        self.listener.close()
