"""Packing while serving: the storage server's pack driver (spec: ``spec/server.md``, "Packing").

Theory of operation.  A pack is a *job* the loop advances between requests
[SRV-051]: PACK (or the ``gcinterval`` timer) calls ``pack_begin()`` and
returns; every later pass of the loop first serves what it read (loads,
commit groups), then runs one ``pack_step(pack_step_budget)``; the pass in
which a step reports the walk done runs ``pack_finish()`` and answers every
session waiting for the pack [SRV-052].  Commits made meanwhile go to the
old data file and are carried into the new one by the storage (spec
``pack.md``, PACK-011, PACK-020).  A session waiting for its PACK answer has
``waiting_pack`` set, so its later requests stay queued and answers keep
their order.  A failure abandons the pack (the storage removes its work
file) and answers STORAGE_FAILURE [SRV-053].  Storages without the
two-phase interface pack in one blocking call.

Progress is logged (``pack-start``, ``pack-progress`` about every
``pack_progress_interval_s``, ``pack-end``) and sent as PACK_PROGRESS frames
to waiting sessions that announced ``pack-progress`` [WIRE-085].
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from dhruva import wire
from dhruva.server.sessions import Session, SessionLoop
from dhruva.storage import Storage

log = logging.getLogger("dhruva.server")

DEFAULT_PACK_STEP_BUDGET = 5000
"""Records a pack step copies before the loop serves clients again (a few ms)."""


@dataclass
class _PackJob:
    """A pack the server is running between requests (SRV-051)."""

    started: float
    steps: int = 0
    last_report: float = 0.0
    waiters: list[Session] = field(default_factory=list)


class PackingLoop(SessionLoop):
    """The pack half of the storage server (a base class of StorageServer)."""

    storage: Storage
    readonly: bool
    pack_step_budget: int
    pack_progress_interval_s: float
    _pack_job: _PackJob | None

    @property
    def packing(self) -> bool:
        """True while a stepwise pack is running."""
        return self._pack_job is not None

    def _pack(self, session: Session) -> None:
        if self.readonly:
            self._error(session, wire.ErrorCode.READ_ONLY, "the server is read-only")
            return
        self._start_pack(session)

    def _start_pack(self, waiter: Session | None) -> None:
        """Start a pack (or join the running one); ``waiter`` hears OK at its end.

        [SRV-051] A storage with the two-phase API packs in steps between
        which the loop serves every session; others pack in one call.
        """
        job = self._pack_job
        if job is not None:
            # [SRV-052] One pack at a time: a second request joins the first.
            if waiter is not None:
                waiter.waiting_pack = True
                job.waiters.append(waiter)
            return
        stepwise = all(
            callable(getattr(self.storage, name, None))
            for name in ("pack_begin", "pack_step", "pack_finish")
        )
        log.info(
            "pack started (%s)",
            "stepwise, serving clients meanwhile" if stepwise else "blocking",
            extra={"event": "pack-start", "stepwise": stepwise},
        )
        if not stepwise:
            self._blocking_pack(waiter)
            return
        job = _PackJob(started=time.monotonic())
        try:
            self.storage.pack_begin()  # type: ignore[attr-defined]
        except Exception as error:
            self._pack_failed(job, waiter, error)
            return
        if waiter is not None:
            waiter.waiting_pack = True
            job.waiters.append(waiter)
        self._pack_job = job

    def _blocking_pack(self, waiter: Session | None) -> None:
        started = time.monotonic()
        try:
            # _known_oids is kept: an oid stored through this server once may
            # be stored again after pack removed it.
            self.storage.pack()
        except Exception as error:
            self._pack_failed(_PackJob(started=started), waiter, error)
            return
        elapsed = time.monotonic() - started
        log.info(
            "pack finished in %.3f s",
            elapsed,
            extra={"event": "pack-end", "elapsed_s": round(elapsed, 3)},
        )
        if waiter is not None:
            self._send(waiter, wire.Empty(wire.MessageType.OK).encode())

    def _pack_failed(self, job: _PackJob, waiter: Session | None, error: Exception) -> None:
        """[SRV-053] Abandon the pack, tell its clients, keep serving."""
        if getattr(self.storage, "packing", False):
            try:
                self.storage.pack_abort()  # type: ignore[attr-defined]
            except Exception:
                log.exception("pack_abort() failed")
        code = wire.ErrorCode.STORAGE_FAILURE
        if "does not support pack" in str(error) or isinstance(error, NotImplementedError):
            code = wire.ErrorCode.NOT_SUPPORTED
        log.error("pack failed: %s", error, extra={"event": "pack-failed"})
        if waiter is not None:
            # Called while handling waiter's PACK: its queue resumes by itself.
            waiter.waiting_pack = False
            self._error(waiter, code, f"pack failed: {error}")
        for session in job.waiters:
            session.waiting_pack = False
            if not session.closed and session is not waiter:
                self._error(session, code, f"pack failed: {error}")
                self._handle_queue(session)

    def _pack_progress(self) -> tuple[int, int]:
        """Records copied so far and the upper bound of records to copy, if known."""
        # The file storages expose their pack's PackProgress; others have none.
        progress = getattr(self.storage, "pack_progress", None)
        copied = int(getattr(progress, "records_copied", 0) or 0)
        total = int(getattr(progress, "objects_before", 0) or 0)
        return copied, total

    def _run_pack_step(self) -> None:
        """Advance the running pack by one step; finish it when the walk is done."""
        job = self._pack_job
        assert job is not None
        try:
            done = self.storage.pack_step(self.pack_step_budget)  # type: ignore[attr-defined]
        except Exception as error:
            self._pack_job = None
            self._pack_failed(job, None, error)
            return
        job.steps += 1
        now = time.monotonic()
        if not done:
            if now - job.last_report >= self.pack_progress_interval_s:
                job.last_report = now
                self._report_pack_progress(job)
            return
        self._pack_job = None
        try:
            result = self.storage.pack_finish()  # type: ignore[attr-defined]
        except Exception as error:
            self._pack_failed(job, None, error)
            return
        elapsed = time.monotonic() - job.started
        log.info(
            "pack finished in %.3f s (%d steps, %s records copied, %s commits during the pack)",
            elapsed,
            job.steps,
            getattr(result, "records_copied", "?"),
            getattr(result, "commits_during_pack", "?"),
            extra={"event": "pack-end", "elapsed_s": round(elapsed, 3), "steps": job.steps},
        )
        for session in job.waiters:
            session.waiting_pack = False
            if not session.closed:
                self._send(session, wire.Empty(wire.MessageType.OK).encode())
                self._handle_queue(session)

    def _report_pack_progress(self, job: _PackJob) -> None:
        copied, total = self._pack_progress()
        percent = f"{min(100.0, 100.0 * copied / total):.0f}%" if total else "?"
        log.info(
            "pack: %d of at most %d objects copied (%s, step %d)",
            copied,
            total,
            percent,
            job.steps,
            extra={"event": "pack-progress", "records_copied": copied, "objects": total},
        )
        frame = wire.PackProgress(copied, total).encode()
        for session in job.waiters:
            # [WIRE-085] Only to clients that asked for progress frames.
            if not session.closed and wire.FEATURE_PACK_PROGRESS in session.features:
                self._send(session, frame)
                self._flush(session)

    def _abandon_pack(self) -> None:
        """Abandon a running pack (the server is stopping); PACK-013 keeps the file."""
        if self._pack_job is None:
            return
        self._pack_job = None
        log.info("pack abandoned: the server is stopping", extra={"event": "pack-abort"})
        try:
            self.storage.pack_abort()  # type: ignore[attr-defined]
        except Exception:
            log.exception("pack_abort() failed")
