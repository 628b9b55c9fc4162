"""The storage server: one thread, one storage, many clients (spec: ``spec/server.md``).

Theory of operation.

State.  The server owns one storage.  For every connected client it keeps a
``Session``: the frame decoder, the output buffer, whether the handshake is
done, the *invalidation set* (oids other clients committed since this client
last synchronized), the oids the server allocated to this client and that
are not yet stored, and the records STAGEd for its next COMMIT.

Loop.  A ``selectors`` loop accepts clients, reads what is readable, splits
it into frames and handles each request in arrival order.  Object state is
never deserialized: records travel as opaque bytes [SRV-001].

Commit.  A COMMIT is not executed at once.  It is checked (write conflicts
[SRV-020], unallocated oids [SRV-022]) and queued; the session stops handling
its later requests until the commit is answered, so replies stay in request
order.  When every readable socket has been read, the queued commits form one
*group*: one ``begin()``, the stores of every commit in the group, one
``end()`` [SRV-030].  The storage makes that one transaction durable with a
single flush, so clients that commit together share one fsync (group
commit).  Only after ``end()`` returns are the commits answered, so a client
never hears COMMITTED for data that is not durable [SRV-031].  Two commits in
one group never store the same oid: the second is refused with a write
conflict, exactly as if the first had been executed before it.  If ``end()``
raises, every commit in the group is answered with STORAGE_FAILURE and
nothing of the group is visible.

Failure of one client.  Malformed frames, unknown messages, a broken
handshake: an ERROR frame, then that connection is closed [SRV-040].  A client
that vanishes loses its staged records and its allocated oids; nobody else
notices [SRV-041].

Connections.  Accepting clients, TLS, the handshake and authentication,
timeouts, back-pressure, reading and writing are the base class's
(:class:`dhruva.server.sessions.SessionLoop`); packing while serving is
:class:`dhruva.server.pack.PackingLoop`'s; which records travel with a LOAD
answer is :mod:`dhruva.server.prefetch`'s.  This module handles the
requests of sessions that are ready, and group commit.
"""

from __future__ import annotations

import errno
import logging
import os
import selectors
import socket
import ssl
import stat
import threading
import time
from collections.abc import Callable, Sequence

from dhruva import wire
from dhruva.error import DhruvaError, DhruvaKeyError, ProtocolError, ReadOnlyError
from dhruva.server import security
from dhruva.server.address import (
    DEFAULT_ADDRESS,
    DEFAULT_HOST,
    DEFAULT_PORT,
    Address,
    format_address,
)
from dhruva.server.pack import DEFAULT_PACK_STEP_BUDGET, PackingLoop, _PackJob
from dhruva.server.prefetch import (
    DEFAULT_PREFETCH_BYTES,
    DEFAULT_PREFETCH_RECORDS,
    choose_prefetch,
    forget_prefetched,
)
from dhruva.server.sessions import ServerLimits, Session
from dhruva.storage import Record, Storage
from dhruva.utils import ROOT_OID, str_to_int8

log = logging.getLogger("dhruva.server")

__all__ = [
    "DEFAULT_ADDRESS",
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "Address",
    "ServerLimits",
    "StorageServer",
    "format_address",
]

_LIST_OIDS_MAX = 65536
_KNOWN_OIDS_MAX = 1 << 20
DEFAULT_BUSY_POLL_S = 0.0002
"""How long the loop polls for the next request before it blocks (see _poll)."""


class StorageServer(PackingLoop):
    """Serve ``storage`` to clients at ``address`` until stopped.

    ``address`` is ``(host, port)`` (port 0 picks a free one; see
    :attr:`address` after construction) or a Unix socket path.  The socket is
    bound when the server is constructed, so binding errors (an address in use)
    raise OSError here.  ``gcinterval`` is in seconds: when set, the server
    packs the storage that often [SRV-050].  ``readonly`` refuses every write
    [SRV-060].  ``check_oids=False`` turns off the unallocated-oid check
    [SRV-022], so that a client may store oids of its own choosing, as the
    storage interface itself allows (the conformance suite does this).

    ``tls`` is a server-side :class:`ssl.SSLContext` (see
    :func:`dhruva.server.security.server_context`): every client must then speak
    TLS.  ``secret`` turns on authentication: every client must prove it
    knows these bytes before anything else [SRV-080].  ``limits`` are the
    per-connection :class:`ServerLimits`.  ``nonce_source`` exists for
    reproducible test vectors only.

    ``pack_step_budget`` is the number of records one pack step may copy
    before the loop serves clients again [SRV-051];
    ``pack_progress_interval_s`` how often a running pack logs its progress
    (and sends PACK_PROGRESS to clients that asked for it).

    ``busy_poll_s``: after serving a request the loop polls this long for
    the next one before it blocks, which cuts a round trip's latency on an
    idle machine (0 turns it off).

    ``prefetch_records`` and ``prefetch_bytes`` bound what a LOAD answer to
    a client that announced ``prefetch`` carries besides the record asked
    for (wire protocol, "Prefetch"); 0 records turns prefetch off.
    """

    def __init__(
        self,
        storage: Storage,
        address: Address = DEFAULT_ADDRESS,
        gcinterval: float | None = None,
        readonly: bool = False,
        on_stop: Callable[[], None] | None = None,
        check_oids: bool = True,
        tls: ssl.SSLContext | None = None,
        secret: bytes | str | None = None,
        limits: ServerLimits | None = None,
        nonce_source: Callable[[], bytes] = security.new_nonce,
        prefetch_records: int = DEFAULT_PREFETCH_RECORDS,
        prefetch_bytes: int = DEFAULT_PREFETCH_BYTES,
        pack_step_budget: int = DEFAULT_PACK_STEP_BUDGET,
        pack_progress_interval_s: float = 1.0,
        busy_poll_s: float = DEFAULT_BUSY_POLL_S,
        *,
        host: str | None = None,
        port: int | None = None,
    ) -> None:
        # [SRV-087] Durus's StorageServer(storage, host=, port=).
        if host is not None or port is not None:
            if address != DEFAULT_ADDRESS:
                raise TypeError("give either address= or host=/port=, not both")
            address = (host or DEFAULT_HOST, DEFAULT_PORT if port is None else port)
        self.busy_poll_s = max(0.0, busy_poll_s)
        self._busy = False
        self.pack_step_budget = max(1, pack_step_budget)
        self.pack_progress_interval_s = pack_progress_interval_s
        self._pack_job: _PackJob | None = None
        self.storage = storage
        self.prefetch_records = max(0, prefetch_records)
        self.prefetch_bytes = max(0, prefetch_bytes)
        # Tests and the wire vectors replace the nonce source to get
        # reproducible transcripts; servers keep the secure default [WIRE-030].
        self._new_nonce = nonce_source
        self.tls = tls
        self._secret = security.secret_bytes(secret) if secret is not None else None
        self.limits = limits if limits is not None else ServerLimits()
        self._ready_to_read: set[Session] = set()
        shortest = min(self.limits.handshake_timeout_s, self.limits.idle_timeout_s or 1.0)
        self._sweep_interval_s = max(0.05, min(1.0, shortest / 4))
        self._next_sweep = 0.0
        self.gcinterval = gcinterval if gcinterval and gcinterval > 0 else None
        self.readonly = readonly
        self.check_oids = check_oids
        self._on_stop = on_stop
        self._selector = selectors.DefaultSelector()
        self._sessions: set[Session] = set()
        self._stopping = False
        self._known_oids: set[bytes] = set()
        self._commit_queue: list[tuple[Session, list[Record]]] = []
        self._next_pack = time.monotonic() + self.gcinterval if self.gcinterval else None
        self._unix_path: str | None = None
        self._listener = self._listen(address)
        self.address: Address = (
            self._listener.getsockname()[:2] if self._unix_path is None else self._unix_path
        )
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._listener, selectors.EVENT_READ, "listener")
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        # [SRV-061] Only capabilities a client can use over the wire are announced:
        # the raw data file is not reachable through the server.
        caps = sorted(set(getattr(storage, "capabilities", frozenset())) - {"raw-file"})
        if readonly:
            caps = [c for c in caps if c != "pack"]
        self._storage_caps = " ".join(caps)

    # --- sockets ----------------------------------------------------------------

    def _listen(self, address: Address) -> socket.socket:
        if isinstance(address, str):
            self._remove_stale_socket(address)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            # [SRV-083] Only the owner may connect: the socket file is created
            # with mode 0600 (the umask applies at bind), and set so again in
            # case the file system ignored the umask.
            previous_umask = os.umask(0o177)
            try:
                sock.bind(address)
                os.chmod(address, 0o600)
            except OSError:
                sock.close()
                raise
            finally:
                os.umask(previous_umask)
            self._unix_path = address
        else:
            host, port = address
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError:
                sock.close()
                raise
        sock.listen(128)
        sock.setblocking(False)
        return sock

    @staticmethod
    def _remove_stale_socket(path: str) -> None:
        """Remove a socket file left by a dead server; refuse a live one."""
        try:
            mode = os.stat(path).st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise OSError(errno.EEXIST, f"{path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)
            return
        finally:
            probe.close()
        raise OSError(errno.EADDRINUSE, f"a server is already listening at {path}")

    def stop(self) -> None:
        """Ask the loop to stop; safe from signal handlers and other threads."""
        self._stopping = True
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass

    # --- the loop ---------------------------------------------------------------

    def serve(self) -> None:
        """Run the event loop until :meth:`stop` (or a STOP request); then close."""
        log.info(
            "dhruva server listening on %s (tls %s, authentication %s)",
            format_address(self.address),
            "on" if self.tls else "off",
            "on" if self._secret else "off",
            extra={"event": "listening", "address": format_address(self.address)},
        )
        try:
            while not self._stopping:
                self._loop_once()
        finally:
            self._shutdown()

    def _select_timeout(self) -> float | None:
        if self._ready_to_read or self._pack_job is not None:
            return 0.0
        timeout: float | None = None
        now = time.monotonic()
        if self._next_pack is not None:
            timeout = max(0.0, self._next_pack - now)
        if self._sessions:
            until_sweep = max(0.0, self._next_sweep - now)
            timeout = until_sweep if timeout is None else min(timeout, until_sweep)
        if self._accept_resume_at is not None:
            until_resume = max(0.0, self._accept_resume_at - now)
            timeout = until_resume if timeout is None else min(timeout, until_resume)
        return timeout

    def _poll(self, timeout: float | None) -> list[tuple[selectors.SelectorKey, int]]:
        """``select(timeout)``, after polling for up to ``busy_poll_s`` if the loop is busy.

        A client that got its answer usually sends its next request within
        tens of microseconds; a blocking select lets the CPU fall asleep in
        between, and waking it costs more than the request itself (on an
        idle 2-core machine a loopback round trip took 100 us blocking and
        25 us polling).  So after a pass that had work, the loop polls
        without blocking for a short while before it blocks.  An idle
        server blocks at once; a busy one was not going to sleep anyway.
        With other threads in the process (a server in a thread of its
        clients' process) polling would only keep the GIL from them.
        """
        if timeout != 0 and self._busy and self.busy_poll_s > 0 and threading.active_count() == 1:
            deadline = time.perf_counter() + self.busy_poll_s
            events: list[tuple[selectors.SelectorKey, int]] = []
            while not self._stopping:
                events = self._selector.select(0)
                if events or time.perf_counter() >= deadline:
                    break
            if events:
                return events
        events = self._selector.select(timeout)
        self._busy = bool(events)
        return events

    def _loop_once(self) -> None:
        for key, mask in self._poll(self._select_timeout()):
            if key.data == "listener":
                self._accept()
            elif key.data == "wake":
                try:
                    self._wake_r.recv(4096)
                except OSError:
                    pass
            else:
                self._on_event(key.data, mask)
        # TLS keeps decrypted bytes inside the SSL object, where select cannot
        # see them; read those sessions again.
        for session in list(self._ready_to_read):
            self._ready_to_read.discard(session)
            if not session.closed:
                self._read(session)
        self._run_commit_groups()
        if self._pack_job is not None:
            # [SRV-051] One step per pass: requests read in this pass were
            # served (and their commits written) before it.
            self._run_pack_step()
            self._run_commit_groups()
        now = time.monotonic()
        self._resume_accepting(now)
        if now >= self._next_sweep:
            self._next_sweep = now + self._sweep_interval_s
            self._sweep(now)
        if self._next_pack is not None and time.monotonic() >= self._next_pack:
            self._periodic_pack()

    def _on_event(self, session: Session, mask: int) -> None:
        if session.state == "tls-peek":
            self._peek_tls(session)
        elif session.state == "tls-handshake":
            self._tls_handshake(session)
        else:
            if mask & selectors.EVENT_WRITE:
                self._flush(session)
                if session.want_write and not session.closed:
                    session.want_write = False
                    self._read(session)
            if mask & selectors.EVENT_READ and not session.closed:
                self._read(session)

    # --- requests ---------------------------------------------------------------

    def _handle(self, session: Session, payload: bytes) -> None:
        try:
            message = wire.decode_message(payload)
        except ProtocolError as error:
            code = wire.ErrorCode.MALFORMED
            if payload and payload[0] not in wire.MessageType._value2member_map_:
                code = wire.ErrorCode.UNKNOWN_MESSAGE
            self._fatal(session, code, str(error))
            return
        kind = message.type
        if session.state == "hello":
            # [WIRE-021] The first message must be HELLO.
            if not isinstance(message, wire.Hello):
                self._fatal(
                    session, wire.ErrorCode.HANDSHAKE_REQUIRED, "the first message must be HELLO"
                )
                return
            self._hello(session, message)
            return
        if session.state == "auth":
            # [SRV-080] Nothing but AUTH before the client proved the secret.
            if not isinstance(message, wire.Auth):
                self._fatal(
                    session,
                    wire.ErrorCode.AUTH_REQUIRED,
                    "this server requires authentication: answer the challenge with AUTH",
                )
                return
            self._auth(session, message)
            return
        if isinstance(message, wire.Load):
            self._load(session, [message.oid], single=True)
        elif isinstance(message, wire.BulkLoad):
            self._load(session, list(message.oids), single=False)
        elif isinstance(message, wire.NewOids):
            self._new_oids(session, message.count)
        elif isinstance(message, wire.Stage):
            self._stage(session, message.records)
        elif isinstance(message, wire.Commit):
            self._stage(session, message.records)
            if session.staged_too_large:
                self._refuse_too_large(session)
            else:
                self._queue_commit(session, [])
        elif kind is wire.MessageType.SYNC:
            self._send(session, wire.Oids(self._take_invalidations(session)).encode())
        elif kind is wire.MessageType.SIZE:
            self._send(session, wire.SizeIs(self.storage.get_size()).encode())
        elif isinstance(message, wire.ListOids):
            self._list_oids(session, message)
        elif kind is wire.MessageType.PACK:
            self._pack(session)
        elif kind is wire.MessageType.QUIT:
            session.closing = True
        elif kind is wire.MessageType.STOP:
            log.info("client %s asked the server to stop", session.peer)
            self._send(session, wire.Empty(wire.MessageType.OK).encode())
            session.closing = True
            self.stop()
        else:
            # A response type, or a second HELLO, sent as a request.
            self._fatal(
                session, wire.ErrorCode.UNKNOWN_MESSAGE, f"{kind.name} is not a request here"
            )

    def _load(self, session: Session, oids: list[bytes], single: bool) -> None:
        # [SRV-021] Loading an oid invalidated for this client and not yet synced
        # is a read conflict: the client would mix old and new states.
        conflicts = [oid for oid in oids if oid in session.invalid]
        if conflicts:
            self._error(
                session,
                wire.ErrorCode.READ_CONFLICT,
                "objects changed by another client since your last sync",
                conflicts,
            )
            return
        records: list[Record] = []
        for oid in oids:
            try:
                records.append(self.storage.load(oid))
            except DhruvaKeyError:
                self._error(session, wire.ErrorCode.NO_SUCH_OBJECT, "no such object", [oid])
                return
            except DhruvaError as error:
                self._error(session, wire.ErrorCode.STORAGE_FAILURE, str(error), [oid])
                return
        if single:
            record = records[0]
            if wire.FEATURE_PREFETCH in session.features and self.prefetch_records:
                prefetched = choose_prefetch(
                    self.storage, session, record, self.prefetch_records, self.prefetch_bytes
                )
                if prefetched:
                    self._send(session, wire.RecordPrefetch(record, prefetched).encode())
                    return
            self._send(session, wire.RecordMessage(record).encode())
        else:
            self._send(session, wire.Records(records).encode())

    def _new_oids(self, session: Session, count: int) -> None:
        if self.readonly:
            self._error(session, wire.ErrorCode.READ_ONLY, "the server is read-only")
            return
        try:
            oids = [self.storage.new_oid() for _ in range(count)]
        except DhruvaError as error:
            self._error(session, wire.ErrorCode.STORAGE_FAILURE, str(error))
            return
        session.allocated.update(oids)
        self._send(session, wire.Oids(oids).encode())

    def _take_invalidations(self, session: Session) -> list[bytes]:
        oids = sorted(session.invalid)
        session.invalid.clear()
        # [WIRE-057] The client drops its prefetched records at every sync.
        forget_prefetched(session)
        return oids

    def _list_oids(self, session: Session, message: wire.ListOids) -> None:
        limit = max(1, min(message.limit, _LIST_OIDS_MAX))
        start = str_to_int8(message.start)
        # Sorting every stored oid per page is O(n log n); listing is rare
        # (conformance tests, tools) and keeps the storage interface minimal.
        oids = sorted(oid for oid in self.storage.iter_oids() if str_to_int8(oid) >= start)
        self._send(session, wire.Oids(oids[:limit]).encode())

    def _periodic_pack(self) -> None:
        assert self.gcinterval is not None
        self._next_pack = time.monotonic() + self.gcinterval
        if self.readonly:
            return
        # [SRV-050] The same path as PACK: stepwise where the storage allows.
        self._start_pack(None)

    # --- commits ----------------------------------------------------------------

    def _exists(self, oid: bytes) -> bool:
        if oid in self._known_oids:
            return True
        try:
            self.storage.load(oid)
        except DhruvaKeyError:
            return False
        if len(self._known_oids) >= _KNOWN_OIDS_MAX:
            self._known_oids.clear()
        self._known_oids.add(oid)
        return True

    def _stage(self, session: Session, records: Sequence[Record]) -> None:
        """Hold ``records`` for the session's next COMMIT, within the staging cap."""
        if session.staged_too_large:
            return
        session.staged_bytes += sum(wire.record_size(record) for record in records)
        if session.staged_bytes > self.limits.max_staged_bytes:
            # [SRV-085] Drop what was staged at once (memory is the point) and
            # every later STAGE of this transaction; its COMMIT is refused.
            session.staged_too_large = True
            session.staged = []
            return
        session.staged.extend(records)

    def _refuse_too_large(self, session: Session) -> None:
        size = session.staged_bytes
        session.staged = []
        session.staged_bytes = 0
        session.staged_too_large = False
        log.warning(
            "client %s: transaction of at least %d bytes refused (max_staged_bytes %d)",
            session.peer,
            size,
            self.limits.max_staged_bytes,
            extra={"peer": session.peer, "event": "refused", "code": "TOO_LARGE"},
        )
        self._error(
            session,
            wire.ErrorCode.TOO_LARGE,
            f"the transaction is at least {size} bytes; this server accepts at most"
            f" {self.limits.max_staged_bytes} bytes per transaction (max_staged_bytes);"
            " nothing of it was written",
        )

    def _queue_commit(self, session: Session, records: list[Record] | object) -> None:
        assert isinstance(records, list | tuple)
        staged = session.staged + list(records)
        session.staged = []
        session.staged_bytes = 0
        if self.readonly and staged:
            self._error(session, wire.ErrorCode.READ_ONLY, "the server is read-only")
            return
        # Last store of an oid in a transaction wins.
        by_oid = {record.oid: record for record in staged}
        # [SRV-020] A commit storing an oid another client committed since this
        # client's last sync is refused; nothing of it is written.
        conflicts = sorted(oid for oid in by_oid if oid in session.invalid)
        if conflicts:
            self._error(
                session,
                wire.ErrorCode.WRITE_CONFLICT,
                "objects changed by another client since your last sync",
                conflicts,
            )
            return
        # [SRV-022] Only oids this client was given, or that are stored, may be
        # stored; the root oid is always allowed, since every database has one.
        unallocated = sorted(
            oid
            for oid in by_oid
            if self.check_oids
            and oid not in session.allocated
            and oid != ROOT_OID
            and not self._exists(oid)
        )
        if unallocated:
            self._error(
                session,
                wire.ErrorCode.UNALLOCATED_OID,
                "the server never allocated these oids to this client",
                unallocated,
            )
            return
        session.waiting_commit = True
        self._commit_queue.append((session, list(by_oid.values())))

    def _run_commit_groups(self) -> None:
        # Answering a group may let sessions handle queued requests that hold
        # new commits; run groups until none is left.
        while self._commit_queue:
            group, self._commit_queue = self._commit_queue, []
            self._commit_group(group)

    def _commit_group(self, group: list[tuple[Session, list[Record]]]) -> None:
        accepted: list[tuple[Session, list[Record]]] = []
        written: dict[bytes, Session] = {}
        for session, records in group:
            if session.closed:
                continue
            clash = sorted(
                r.oid for r in records if r.oid in written and written[r.oid] is not session
            )
            if clash:
                # As if the earlier commit of the group had run first [SRV-030].
                session.waiting_commit = False
                self._error(
                    session,
                    wire.ErrorCode.WRITE_CONFLICT,
                    "objects changed by another client since your last sync",
                    clash,
                )
                continue
            for record in records:
                written[record.oid] = session
            accepted.append((session, records))
        if accepted and any(records for _, records in accepted):
            try:
                self.storage.begin()
                try:
                    for _, records in accepted:
                        for record in records:
                            self.storage.store(record.oid, record.data, record.refs)
                    # [SRV-031] Nobody hears COMMITTED before end() returned.
                    self.storage.end()
                except BaseException:
                    self.storage.abort_transaction()
                    raise
            except Exception as error:
                # A failing storage must not take the server down; the group's
                # clients hear of it and nothing of the group was acknowledged.
                log.error("commit of %d clients failed: %s", len(accepted), error)
                code = wire.ErrorCode.STORAGE_FAILURE
                if isinstance(error, ReadOnlyError):
                    code = wire.ErrorCode.READ_ONLY
                for session, _ in accepted:
                    session.waiting_commit = False
                    self._error(session, code, f"the storage failed to commit: {error}")
                accepted = []
        for session, records in accepted:
            stored = {record.oid for record in records}
            session.allocated -= stored
            self._known_oids.update(stored)
            if len(self._known_oids) > _KNOWN_OIDS_MAX:
                self._known_oids.clear()
            # [SRV-023] Every other client learns of the change at its next sync.
            for other in self._sessions:
                if other is not session:
                    other.invalid.update(stored)
        for session, _ in accepted:
            session.waiting_commit = False
            # [WIRE-072] COMMITTED also synchronizes the client.
            self._send(session, wire.Committed(self._take_invalidations(session)).encode())
        for session, _ in accepted:
            self._handle_queue(session)
        for session, _ in group:
            if not session.closed and not session.waiting_commit:
                self._handle_queue(session)

    # --- shutdown ---------------------------------------------------------------

    def _shutdown(self) -> None:
        log.info("dhruva server stopping")
        self._abandon_pack()
        for session in list(self._sessions):
            # Best effort: deliver answers already produced (the STOP's OK).
            if session.out:
                try:
                    session.sock.setblocking(True)
                    session.sock.settimeout(1.0)
                    session.sock.sendall(session.out)
                except OSError:
                    pass
            self._drop(session)
        self._selector.close()
        self._listener.close()
        self._wake_r.close()
        self._wake_w.close()
        if self._unix_path is not None:
            try:
                os.unlink(self._unix_path)
            except OSError:
                pass
        if self._on_stop is not None:
            self._on_stop()

    def close(self) -> None:
        """Release the listening socket without serving (if serve() never ran)."""
        if self._listener.fileno() != -1:
            self._shutdown()
