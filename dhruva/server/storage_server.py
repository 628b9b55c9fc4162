"""The storage server: one thread, one storage, many clients (spec: ``spec/server.md``).

Theory of operation.

Parts.  :class:`StorageServer` is composed of parts that each own their
state: a :class:`~dhruva.server.loop.SocketLoop` (the selector, the
listening socket, one :class:`~dhruva.server.loop.Client` per connection,
TLS, reading and writing), each client's
:class:`~dhruva.server.session.ServerSession` (the protocol as a sans-IO
state machine: the handshake, STAGE, framing, back-pressure), a
:class:`~dhruva.server.commit.Committer` (group commit), a
:class:`~dhruva.server.pack.PackDriver` (packing in steps between requests)
and a :class:`~dhruva.server.prefetch.Prefetcher` (which records travel
with a LOAD answer).  This module turns the sessions' request events into
storage calls and answers, and runs the loop.

Loop.  A ``selectors`` loop accepts clients, reads what is readable and
feeds it to the clients' sessions; the server then takes each session's
request events in arrival order and answers them.  Object state is never
deserialized: records travel as opaque bytes [SRV-001].

Order of a pass.  Every readable socket is read and its requests served
(loads are answered at once; commits are checked and queued, and their
session waits); then the queued commits are written as one group
(``spec/server.md``, "Commit"; see :mod:`dhruva.server.commit`) and
answered; then, while a pack runs, one pack step [SRV-051] and the commit
groups its waiting clients released; then the deadlines and the
``gcinterval`` timer.

Snapshots [SRV-100].  When the storage has the capability ``snapshots``
the server announces the feature, and every session that negotiated it
reads the database as of its *snapshot*, ``Client.snapshot_tid``: the
storage's last tid when its handshake finished, its last SYNC, or its last
accepted COMMIT (the group's tid).  A load of an oid in its invalidation
set (committed by others after the snapshot) is answered with
``storage.load_at(oid, snapshot)``; every other oid's current record is the
snapshot's.  The storage keeps the versions those reads need because the
server tells it, with ``set_oldest_snapshot``, the oldest snapshot (or
HOLD) a session still reads at (:meth:`StorageServer._update_floor`):
before each commit group, counting every session that will not move with
it, and after every SYNC, group and session end, counting only the
sessions that are behind the latest commit (None when none is).  The
storage bounds what it keeps; a session past that bound gets
SNAPSHOT_TOO_OLD and gets out by synchronizing (abort).

Blobs [SRV-120].  When the storage has the capability ``blobs`` the server
offers the feature ``blobs``: a session's BLOB_CHUNK data goes straight to
its :class:`~dhruva.server.blobs.StagedBlobs` (temporary files, never
memory), which COMMIT hands to the committer; the files are closed (and
deleted) once the group is answered, when the transaction is refused, or
when the session ends [SRV-123].  READ_BLOB opens the blob as of the
session's snapshot and answers one chunk [SRV-124]; outside a snapshot
session, with the feature ``blob-tids``, a read at SESSION_SNAPSHOT is
at ``storage.last_tid()`` and its BLOB_DATA_AT names that tid, which the
client's later reads of the blob name [WIRE-137].

Failure of one client.  Malformed frames, unknown messages, a broken
handshake: an ERROR frame, then that connection is closed [SRV-040].  A
client that vanishes loses its staged records and its allocated oids;
nobody else notices [SRV-041].  A request that fails in the storage in an
unexpected way is answered STORAGE_FAILURE; the server goes on.
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
from collections.abc import Callable, Collection
from typing import Any

from dhruva import wire
from dhruva.error import DhruvaError, DhruvaKeyError, SnapshotTooOldError
from dhruva.record import Record
from dhruva.server import security, session
from dhruva.server.address import (
    DEFAULT_ADDRESS,
    DEFAULT_HOST,
    DEFAULT_PORT,
    Address,
    format_address,
)
from dhruva.server.blobs import StagedBlobs
from dhruva.server.commit import Committer, Outcome
from dhruva.server.loop import Client, SocketLoop
from dhruva.server.pack import DEFAULT_PACK_STEP_BUDGET, PackDriver
from dhruva.server.prefetch import DEFAULT_PREFETCH_BYTES, DEFAULT_PREFETCH_RECORDS, Prefetcher
from dhruva.server.session import (
    FEATURES,
    NEED_DATA,
    PAUSED,
    Refused,
    ServerLimits,
    ServerSession,
    TransactionRefused,
)
from dhruva.storage import CAP_BLOBS, CAP_SNAPSHOTS, Storage
from dhruva.utils import str_to_int8

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
"""The most oids one LIST_OIDS answer holds."""

DEFAULT_BUSY_POLL_S = 0.0002
"""How long the loop polls for the next request before it blocks (see _poll)."""

_OK = wire.Empty(wire.MessageType.OK)
_CONFLICT = "objects changed by another client since your last sync"


class StorageServer:
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
        self.storage = storage
        self.readonly = readonly
        self.tls = tls
        self.limits = limits if limits is not None else ServerLimits()
        # [SRV-088] Durus's StorageServer(storage, host=, port=).
        if host is not None or port is not None:
            if address != DEFAULT_ADDRESS:
                raise TypeError("give either address= or host=/port=, not both")
            address = (host or DEFAULT_HOST, DEFAULT_PORT if port is None else port)
        self.busy_poll_s = max(0.0, busy_poll_s)
        self._busy = False
        # Tests and the wire vectors replace the nonce source to get
        # reproducible transcripts; servers keep the secure default [WIRE-030].
        self._new_nonce = nonce_source
        self._secret = security.secret_bytes(secret) if secret is not None else None
        self._on_stop = on_stop
        self._stopping = False
        shortest = min(self.limits.handshake_timeout_s, self.limits.idle_timeout_s or 1.0)
        self._sweep_interval_s = max(0.05, min(1.0, shortest / 4))
        self._next_sweep = 0.0
        self.prefetcher = Prefetcher(storage, prefetch_records, prefetch_bytes)
        self.committer: Committer[Client] = Committer(storage, readonly, check_oids)
        self.packer: PackDriver[Client] = PackDriver(
            storage, pack_step_budget, pack_progress_interval_s, gcinterval
        )
        # [SRV-061] Only capabilities a client can use over the wire are announced:
        # the raw data file is not reachable through the server.
        caps = sorted(set(getattr(storage, "capabilities", frozenset())) - {"raw-file"})
        if readonly:
            caps = [c for c in caps if c != "pack"]
        self._storage_caps = " ".join(caps)
        # [WIRE-100] Snapshots are offered only over a storage that has them.
        self.snapshots = CAP_SNAPSHOTS in caps
        self._features = FEATURES + (" " + wire.FEATURE_SNAPSHOTS if self.snapshots else "")
        # [SRV-120] Blobs likewise, over a storage that stores them.
        self.blobs = CAP_BLOBS in caps
        if self.blobs:
            self._features += " " + wire.FEATURE_BLOBS
            # [WIRE-137] Naming the tid read at needs the storage's last_tid().
            if self.snapshots:
                self._features += " " + wire.FEATURE_BLOB_TIDS
        self._staged_blobs: dict[Client, StagedBlobs] = {}
        self._floor: int | None = None
        self._unix_path: str | None = None
        listener = self._listen(address)
        self.address: Address = (
            listener.getsockname()[:2] if self._unix_path is None else self._unix_path
        )
        self._loop = SocketLoop(
            listener, self._new_session, self._serve_client, self.limits, tls, self._dropped
        )
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._loop.selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._handlers: dict[type, Callable[[Client, Any], None]] = {
            session.Load: self._load,
            session.LoadAt: self._load_at,
            session.BulkLoad: self._bulk_load,
            session.NewOids: self._new_oids,
            session.Commit: self._commit,
            session.Sync: self._sync,
            session.Size: self._size,
            session.ListOids: self._list_oids,
            session.Pack: self._pack,
            session.Stop: self._stop_request,
            session.Ready: self._note_ready,
            session.Held: self._note_held,
            session.ReadBlob: self._read_blob,
            session.BlobChunk: self._note_blob_chunk,
            session.BlobsRefused: self._note_blobs_refused,
            Refused: self._note_refused,
            TransactionRefused: self._note_transaction_refused,
        }

    @property
    def gcinterval(self) -> float | None:
        """Seconds between periodic packs (None: no periodic pack) [SRV-050]."""
        return self.packer.gcinterval_s

    @property
    def check_oids(self) -> bool:
        """Whether COMMIT may store only allocated or stored oids [SRV-022]."""
        return self.committer.check_oids

    @property
    def packing(self) -> bool:
        """True while a stepwise pack is running."""
        return self.packer.packing

    @property
    def _sessions(self) -> set[Client]:
        """The connected clients (tests look at their sessions' back-pressure)."""
        return self._loop.clients

    def _new_session(self) -> ServerSession:
        return ServerSession(
            self.limits,
            storage_capabilities=self._storage_caps,
            secret=self._secret,
            new_nonce=self._new_nonce,
            tls=self.tls is not None,
            features=self._features,
        )

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
        loop = self._loop
        if loop.ready_to_read or self.packer.packing:
            return 0.0
        timeout: float | None = None
        now = time.monotonic()
        next_pack = self.packer.next_pack
        if next_pack is not None:
            timeout = max(0.0, next_pack - now)
        if loop.clients:
            until_sweep = max(0.0, self._next_sweep - now)
            timeout = until_sweep if timeout is None else min(timeout, until_sweep)
        if loop.accept_resume_at is not None:
            until_resume = max(0.0, loop.accept_resume_at - now)
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
                events = self._loop.selector.select(0)
                if events or time.perf_counter() >= deadline:
                    break
            if events:
                return events
        events = self._loop.selector.select(timeout)
        self._busy = bool(events)
        return events

    def _loop_once(self) -> None:
        loop = self._loop
        for key, mask in self._poll(self._select_timeout()):
            data = key.data
            if data == "listener":
                loop.accept()
            elif data == "wake":
                try:
                    self._wake_r.recv(4096)
                except OSError:
                    pass
            else:
                loop.on_event(data, mask)
        if loop.ready_to_read:
            loop.read_pending()
        if self.committer.pending:
            self._run_commit_groups()
        if self.packer.packing:
            # [SRV-051] One step per pass: requests read in this pass were
            # served (and their commits written) before it.
            self._deliver_pack(self.packer.step())
            self._run_commit_groups()
        now = time.monotonic()
        loop.resume_accepting(now)
        if now >= self._next_sweep:
            self._next_sweep = now + self._sweep_interval_s
            loop.sweep(now)
        if self.packer.due(time.monotonic()) and not self.readonly:
            # [SRV-050] The same path as PACK: stepwise where the storage allows.
            self._deliver_pack(self.packer.start(None))

    # --- requests ---------------------------------------------------------------

    def _serve_client(self, client: Client) -> None:
        """Answer the requests the client's session has ready, in order; then flush."""
        session_ = client.session
        handlers = self._handlers
        while True:
            event = session_.next_event()
            if event is NEED_DATA or event is PAUSED:
                break
            try:
                handlers[type(event)](client, event)
            except Exception as error:
                # A storage failing in an unexpected way (an OSError from a
                # load, say) fails this request, not the server.
                log.exception("client %s: request failed", client.peer)
                if session_.outstanding is not None:
                    session_.send_error(wire.ErrorCode.STORAGE_FAILURE, f"server error: {error}")
        self._loop.flush(client)

    def _note_ready(self, client: Client, event: session.Ready) -> None:
        if client.session.snapshots:
            # [SRV-100] The session starts at the latest commit.
            client.snapshot_tid = self.storage.last_tid()
        log.info(
            "client %s ready (tls %s, authenticated %s)",
            client.peer,
            "yes" if client.tls_wrapped else "no",
            "yes" if event.authenticated else "no",
            extra={
                "peer": client.peer,
                "event": "ready",
                "tls": client.tls_wrapped,
                "authenticated": event.authenticated,
            },
        )

    # --- snapshots ----------------------------------------------------------------

    def _note_held(self, client: Client, event: session.Held) -> None:
        # [SRV-103] HOLD: the client reads at an older snapshot too.
        client.hold_tid = event.tid
        self._update_floor()

    def _dropped(self, client: Client) -> None:
        # [SRV-123] A session that ends leaves no staged blob behind.
        self._drop_blobs(client)
        # [SRV-101] A session that ends holds nothing any more.
        if client.snapshot_tid is not None:
            was = min(client.snapshot_tid, client.hold_tid)
            client.snapshot_tid = None
            if self._holds_floor(was):
                self._update_floor()

    def _holds_floor(self, tid: int) -> bool:
        """Whether a session that read at ``tid`` may have been the oldest (SRV-101).

        The floor is the oldest among the sessions behind (None: none is);
        a session moving off a snapshot above it, or while none is behind,
        leaves it as it is, which spares a walk over every session per SYNC.
        """
        return self._floor is not None and tid <= self._floor

    def _update_floor(self, moving: Collection[Client] = ()) -> None:
        """[SRV-101] Tell the storage the oldest snapshot a session still reads at.

        ``moving``: the sessions whose commits the group about to be written
        accepts; they move to its tid, so only their HOLD counts.  Without
        ``moving`` (after a SYNC, a group or a session end) a session at the
        latest commit is not behind, and when no session is, the floor is
        None: the next group recomputes it before it writes.
        """
        if not self.snapshots:
            return
        floor = wire.NO_HOLD
        for other in self._loop.clients:
            tid = other.snapshot_tid
            if tid is None:
                continue
            held = other.hold_tid
            if held < tid or other in moving:
                tid = held
            if tid < floor:
                floor = tid
        oldest: int | None = floor
        try:
            if floor == wire.NO_HOLD or (not moving and floor >= self.storage.last_tid()):
                oldest = None
            if oldest != self._floor:
                self._floor = oldest
                self.storage.set_oldest_snapshot(oldest)
        except DhruvaError as error:
            # A failing storage fails the requests that need it, not the loop.
            log.error("cannot tell the storage the oldest snapshot %s: %s", oldest, error)

    def _before_write(self, accepted: list[Outcome[Client]]) -> None:
        # [SRV-101] Before a group writes: keep what every session that does
        # not move with it (to the group's tid) still reads.
        self._update_floor({outcome.client for outcome in accepted})

    def _snapshot_too_old(self, client: Client, error: SnapshotTooOldError, oid: bytes) -> None:
        # [SRV-102] Not a hang, not a wrong record: the client synchronizes and retries.
        client.session.send(
            wire.snapshot_too_old(
                error.tid,
                error.oldest,
                f"snapshot {error.tid} is too old (oldest kept: {error.oldest}) loading oid"
                f" {str_to_int8(oid)}; abort (synchronize) and retry",
            )
        )

    def _load_version(self, client: Client, oid: bytes) -> Record | None:
        """Load ``oid`` as of the client's snapshot (or current); answer errors, return None."""
        tid = client.snapshot_tid
        changed = False
        try:
            if tid is not None and oid in client.invalid:
                # [SRV-100] Changed after the snapshot: the version it saw.
                changed = True
                return self.storage.load_at(oid, tid)
            return self.storage.load(oid)
        except DhruvaKeyError:
            if tid is not None and not changed:
                # [SRV-106] Packed away now, perhaps still there at the snapshot.
                return self._load_version_after_pack(client, oid)
            client.session.send_error(wire.ErrorCode.NO_SUCH_OBJECT, "no such object", [oid])
        except SnapshotTooOldError as error:
            self._snapshot_too_old(client, error, oid)
        except DhruvaError as error:
            client.session.send_error(wire.ErrorCode.STORAGE_FAILURE, str(error), [oid])
        return None

    def _load_version_after_pack(self, client: Client, oid: bytes) -> Record | None:
        """[SRV-106] ``oid`` has no current record: load it at the snapshot, or answer why not."""
        tid = client.snapshot_tid
        assert tid is not None
        try:
            return self.storage.load_at(oid, tid)
        except DhruvaKeyError:
            client.session.send_error(wire.ErrorCode.NO_SUCH_OBJECT, "no such object", [oid])
        except SnapshotTooOldError as error:
            self._snapshot_too_old(client, error, oid)
        except DhruvaError as error:
            client.session.send_error(wire.ErrorCode.STORAGE_FAILURE, str(error), [oid])
        return None

    def _load_at(self, client: Client, event: session.LoadAt) -> None:
        tid = client.snapshot_tid
        assert tid is not None  # only snapshot sessions send LOAD_AT
        if event.tid > tid:
            # [WIRE-107] The client checks this itself: a peer that does not is broken.
            client.session.fail(
                wire.ErrorCode.MALFORMED,
                f"LOAD_AT tid {event.tid} is above the session's snapshot {tid}",
            )
            return
        try:
            record = self.storage.load_at(event.oid, event.tid)
        except DhruvaKeyError:
            client.session.send_error(
                wire.ErrorCode.NO_SUCH_OBJECT, "no such object then", [event.oid]
            )
            return
        except SnapshotTooOldError as error:
            self._snapshot_too_old(client, error, event.oid)
            return
        except DhruvaError as error:
            client.session.send_error(wire.ErrorCode.STORAGE_FAILURE, str(error), [event.oid])
            return
        client.session.send(wire.RecordMessage(record))

    def _note_refused(self, client: Client, event: Refused) -> None:
        # [SRV-123] A fatal error ends the session: its staged blobs go now.
        self._drop_blobs(client)
        if event.code is wire.ErrorCode.AUTH_FAILED:
            log.warning(
                "client %s: authentication failed",
                client.peer,
                extra={"peer": client.peer, "event": "auth-failed"},
            )
        log.warning(
            "client %s: %s (%s); closing its connection",
            client.peer,
            event.message,
            event.code.name,
            extra={"peer": client.peer, "event": "refused", "code": event.code.name},
        )

    def _note_transaction_refused(self, client: Client, event: TransactionRefused) -> None:
        self._drop_blobs(client)
        log.warning(
            "client %s: transaction of at least %d bytes refused (max_staged_bytes %d)",
            client.peer,
            event.size_bytes,
            event.max_bytes,
            extra={"peer": client.peer, "event": "refused", "code": "TOO_LARGE"},
        )

    def _read_conflicts(self, client: Client, oids: list[bytes]) -> bool:
        # [SRV-107] Loading an oid invalidated for this client and not yet synced
        # is a read conflict: the client would mix old and new states.  A
        # snapshot session reads the version its snapshot saw instead [SRV-100].
        invalid = client.invalid
        if not invalid or client.snapshot_tid is not None:
            return False
        conflicts = [oid for oid in oids if oid in invalid]
        if not conflicts:
            return False
        client.session.send_error(wire.ErrorCode.READ_CONFLICT, _CONFLICT, conflicts)
        return True

    def _load_records(self, client: Client, oids: list[bytes]) -> list[Record] | None:
        records: list[Record] = []
        for oid in oids:
            record = self._load_version(client, oid)
            if record is None:
                return None
            records.append(record)
        return records

    def _load(self, client: Client, event: session.Load) -> None:
        # The hot path of the server: one oid, written out without the helpers
        # BULK_LOAD uses.
        oid = event.oid
        answer_to = client.session
        if client.invalid and oid in client.invalid:
            if client.snapshot_tid is not None:
                # [SRV-100] The version the session's snapshot saw; nothing is
                # prefetched with it (WIRE-056: prefetched records are current).
                record_at = self._load_version(client, oid)
                if record_at is not None:
                    answer_to.send(wire.RecordMessage(record_at))
                return
            # [SRV-107] (see _read_conflicts)
            answer_to.send_error(wire.ErrorCode.READ_CONFLICT, _CONFLICT, [oid])
            return
        try:
            record = self.storage.load(oid)
        except DhruvaKeyError:
            if client.snapshot_tid is not None:
                # [SRV-106] (see _load_version)
                record_at = self._load_version_after_pack(client, oid)
                if record_at is not None:
                    answer_to.send(wire.RecordMessage(record_at))
                return
            answer_to.send_error(wire.ErrorCode.NO_SUCH_OBJECT, "no such object", [oid])
            return
        except DhruvaError as error:
            answer_to.send_error(wire.ErrorCode.STORAGE_FAILURE, str(error), [oid])
            return
        if wire.FEATURE_PREFETCH in answer_to.features and self.prefetcher.enabled:
            prefetched = self.prefetcher.choose(client.prefetch, client.invalid, record)
            if prefetched:
                answer_to.send(wire.RecordPrefetch(record, prefetched))
                return
        answer_to.send_record(record)

    def _bulk_load(self, client: Client, event: session.BulkLoad) -> None:
        if self._read_conflicts(client, event.oids):
            return
        records = self._load_records(client, event.oids)
        if records is not None:
            client.session.send(wire.Records(records))

    def _new_oids(self, client: Client, event: session.NewOids) -> None:
        if self.readonly:
            client.session.send_error(wire.ErrorCode.READ_ONLY, "the server is read-only")
            return
        try:
            oids = [self.storage.new_oid() for _ in range(event.count)]
        except DhruvaError as error:
            client.session.send_error(wire.ErrorCode.STORAGE_FAILURE, str(error))
            return
        client.allocated.update(oids)
        client.session.send(wire.Oids(oids))

    def _take_invalidations(self, client: Client) -> list[bytes]:
        oids = sorted(client.invalid)
        client.invalid.clear()
        # [WIRE-057] The client drops its prefetched records at every sync.
        client.prefetch.forget()
        return oids

    def _sync(self, client: Client, event: session.Sync) -> None:
        if client.snapshot_tid is None:
            client.session.send(wire.Oids(self._take_invalidations(client)))
            return
        # [WIRE-102] SYNCED carries the session's new snapshot.
        tid = self.storage.last_tid()
        was = min(client.snapshot_tid, client.hold_tid)
        client.snapshot_tid = tid
        client.session.send(wire.Synced(tid, self._take_invalidations(client)))
        if self._holds_floor(was):
            self._update_floor()

    def _size(self, client: Client, event: session.Size) -> None:
        client.session.send(wire.SizeIs(self.storage.get_size()))

    def _list_oids(self, client: Client, event: session.ListOids) -> None:
        limit = max(1, min(event.limit, _LIST_OIDS_MAX))
        start = str_to_int8(event.start)
        # Sorting every stored oid per page is O(n log n); listing is rare
        # (conformance tests, tools) and keeps the storage interface minimal.
        oids = sorted(oid for oid in self.storage.iter_oids() if str_to_int8(oid) >= start)
        client.session.send(wire.Oids(oids[:limit]))

    def _stop_request(self, client: Client, event: session.Stop) -> None:
        log.info("client %s asked the server to stop", client.peer)
        client.session.send(_OK)
        self.stop()

    # --- blobs ------------------------------------------------------------------

    def _drop_blobs(self, client: Client) -> None:
        staged = self._staged_blobs.pop(client, None)
        if staged is not None:
            staged.close()

    def _note_blob_chunk(self, client: Client, event: session.BlobChunk) -> None:
        # [SRV-120] Straight to the session's temporary file of that oid.
        if client.session.closed:
            return
        staged = self._staged_blobs.get(client)
        if staged is None:
            staged = self._staged_blobs[client] = StagedBlobs()
        staged.append(event.oid, event.data)

    def _note_blobs_refused(self, client: Client, event: session.BlobsRefused) -> None:
        # [SRV-121] Past the limit: the files go now, the COMMIT is refused later.
        self._drop_blobs(client)
        log.warning(
            "client %s: %d staged blobs of at least %d bytes refused (max_staged_blob_bytes %d,"
            " max_staged_blobs %d)",
            client.peer,
            event.count,
            event.size_bytes,
            self.limits.max_staged_blob_bytes,
            self.limits.max_staged_blobs,
            extra={"peer": client.peer, "event": "refused", "code": "TOO_LARGE"},
        )

    def _read_blob(self, client: Client, event: session.ReadBlob) -> None:
        snapshot = client.snapshot_tid
        tid: int | None = event.tid
        # [WIRE-137] Outside a snapshot session, with blob-tids: read at the
        # latest commit by its number, and tell the client which it was.
        answer_at = False
        if tid == wire.SESSION_SNAPSHOT:
            # [WIRE-133] The session's snapshot; without snapshots, the latest commit.
            tid = snapshot
            if tid is None and client.session.blob_tids:
                tid = self.storage.last_tid()
                answer_at = True
        elif snapshot is not None and event.tid > snapshot:
            # [WIRE-136] As LOAD_AT: a client checks this itself.
            client.session.fail(
                wire.ErrorCode.MALFORMED,
                f"READ_BLOB tid {event.tid} is above the session's snapshot {snapshot}",
            )
            return
        try:
            file = self.storage.open_blob(event.oid, tid)
        except DhruvaKeyError:
            client.session.send_error(
                wire.ErrorCode.NO_SUCH_OBJECT, "no blob is stored for this object", [event.oid]
            )
            return
        except SnapshotTooOldError as error:
            self._snapshot_too_old(client, error, event.oid)
            return
        except DhruvaError as error:
            client.session.send_error(wire.ErrorCode.STORAGE_FAILURE, str(error), [event.oid])
            return
        # [SRV-124] One chunk read from the file: memory holds no more.
        with file:
            file.seek(event.offset)
            parts: list[bytes] = []
            left = event.length
            while left:
                part = file.read(left)
                if not part:
                    break
                parts.append(part)
                left -= len(part)
        data = b"".join(parts)
        if answer_at:
            assert tid is not None
            client.session.send(wire.BlobDataAt(tid, data))
        else:
            client.session.send(wire.BlobData(data))

    # --- commits ----------------------------------------------------------------

    def _commit(self, client: Client, event: session.Commit) -> None:
        records, refusal = self.committer.check(
            event.records, client.invalid, client.allocated, event.reads
        )
        staged = self._staged_blobs.pop(client, None)
        if refusal is not None:
            if staged is not None:
                staged.close()
            client.session.send_error(refusal.code, refusal.message, refusal.oids)
            return
        # The session stays PAUSED (its COMMIT outstanding) until the group is written.
        # [SRV-122] Its staged blobs go with it; _run_commit_groups closes them.
        blobs = staged.files() if staged is not None else ()
        self.committer.queue(client, records, event.reads, blobs)

    def _run_commit_groups(self) -> None:
        # Answering a group may let sessions handle queued requests that hold
        # new commits; run groups until none is left.
        committer = self.committer
        while committer.pending:
            # A session closed meanwhile (its peer left, or sent garbage after
            # its COMMIT) loses the commit, as it would its staged records.
            taken = committer.take_group()
            group = [g for g in taken if not g[0].session.closed]
            snapshots = self.snapshots
            try:
                outcomes = committer.run_group(group, self._before_write if snapshots else None)
            finally:
                # [SRV-123] Written, refused or abandoned: the staged files go.
                for entry in taken:
                    for _oid, file in entry[3]:
                        file.close()
            accepted = [o for o in outcomes if o.refusal is None]
            tid = self.storage.last_tid() if snapshots else 0
            for outcome in accepted:
                outcome.client.allocated -= outcome.stored
                # [SRV-023] Every other client learns of the change at its next sync.
                for other in self._loop.clients:
                    if other is not outcome.client:
                        other.invalid.update(outcome.stored)
            for outcome in outcomes:
                if outcome.refusal is None:
                    # [WIRE-072] COMMITTED also synchronizes the client.
                    answer: wire.Message
                    invalidations = self._take_invalidations(outcome.client)
                    if outcome.client.snapshot_tid is None:
                        answer = wire.Committed(invalidations)
                    else:
                        # [WIRE-104] ... to the group's tid, its new snapshot.
                        outcome.client.snapshot_tid = tid
                        answer = wire.CommittedAt(tid, invalidations)
                else:
                    refusal = outcome.refusal
                    answer = wire.Error(refusal.code, refusal.message, refusal.oids)
                outcome.client.session.send(answer)
            if snapshots:
                self._update_floor()
            for outcome in outcomes:
                self._serve_client(outcome.client)

    # --- packing ----------------------------------------------------------------

    def _pack(self, client: Client, event: session.Pack) -> None:
        if self.readonly:
            client.session.send_error(wire.ErrorCode.READ_ONLY, "the server is read-only")
            return
        # The session stays PAUSED until the pack answers it (now or steps later).
        self._deliver_pack(self.packer.start(client), current=client)

    def _deliver_pack(
        self, messages: list[tuple[Client, wire.Message]], current: Client | None = None
    ) -> None:
        """Send what the pack driver produced; resume the sessions it answered.

        ``current`` is the client whose PACK is being handled: its session
        resumes by itself when the handler returns.
        """
        for client, message in messages:
            if client.session.closed:
                continue
            if isinstance(message, wire.PackProgress):
                # [WIRE-085] Only to clients that asked for progress frames.
                if wire.FEATURE_PACK_PROGRESS in client.session.features:
                    client.session.send_progress(message)
                    self._loop.flush(client)
                continue
            client.session.send(message)
            if client is not current:
                self._serve_client(client)

    # --- shutdown ---------------------------------------------------------------

    def _shutdown(self) -> None:
        log.info("dhruva server stopping")
        self.packer.abandon()
        for staged in self._staged_blobs.values():
            staged.close()
        self._staged_blobs.clear()
        self._loop.close()
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
        if self._loop.listener.fileno() != -1:
            self._shutdown()
