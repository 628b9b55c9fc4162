"""Packing while serving: the storage server's pack driver (spec: ``spec/server.md``, "Packing").

Theory of operation.  A pack is a *job* the loop advances between requests
[SRV-051]: PACK (or the ``gcinterval`` timer) calls :meth:`PackDriver.start`,
which calls ``pack_begin()`` and returns; every later pass of the loop first
serves what it read (loads, commit groups), then calls
:meth:`PackDriver.step`, one ``pack_step(step_budget)``; the pass in which a
step reports the walk done runs ``pack_finish()`` and answers every client
waiting for the pack [SRV-052].  Commits made meanwhile go to the old data
file and are carried into the new one by the storage (spec ``pack.md``,
PACK-011, PACK-020).  A failure abandons the pack (the storage removes its
work file) and answers STORAGE_FAILURE [SRV-053], or NOT_SUPPORTED when the
storage cannot pack (:class:`~dhruva.error.PackNotSupportedError`).
Storages without the two-phase interface pack in one blocking call.

The driver owns the job (its waiters, its step count, when it last
reported) and the ``gcinterval`` timer; it never writes to a client: each
method returns the messages to send, as ``(client, message)`` pairs, and
the server sends them.  A :class:`~dhruva.wire.PackProgress` in that list is
a progress frame, not an answer [WIRE-085]; every other message answers the
client's PACK.  Progress is logged (``pack-start``, ``pack-progress`` about
every ``progress_interval_s``, ``pack-end``).
"""

from __future__ import annotations

import logging
import time
from typing import Generic, TypeVar

from dhruva import wire
from dhruva.error import PackNotSupportedError
from dhruva.storage import Storage

log = logging.getLogger("dhruva.server")

DEFAULT_PACK_STEP_BUDGET = 5000
"""Records a pack step copies before the loop serves clients again (a few ms)."""

C = TypeVar("C")

Messages = list[tuple[C, wire.Message]]


class _PackJob(Generic[C]):
    """A pack the server is running between requests [SRV-051]."""

    def __init__(self, started: float) -> None:
        self.started = started
        """When the pack began (monotonic seconds)."""
        self.steps = 0
        """How many pack steps ran."""
        self.last_report = 0.0
        """When progress was last logged and sent."""
        self.waiters: list[C] = []
        """The clients whose PACK this pack answers."""


class PackDriver(Generic[C]):
    """Runs one pack at a time in steps between requests (see the module docstring).

    ``step_budget`` is the number of records one step may copy;
    ``progress_interval_s`` how often a running pack reports progress;
    ``gcinterval_s`` (None: never) how often :meth:`due` asks for a pack.
    """

    def __init__(
        self,
        storage: Storage,
        step_budget: int,
        progress_interval_s: float,
        gcinterval_s: float | None = None,
    ) -> None:
        self.storage = storage
        self.step_budget = max(1, step_budget)
        self.progress_interval_s = progress_interval_s
        self.gcinterval_s = gcinterval_s if gcinterval_s and gcinterval_s > 0 else None
        self.next_pack: float | None = (
            time.monotonic() + self.gcinterval_s if self.gcinterval_s else None
        )
        """When the ``gcinterval`` timer fires next (None: no timer)."""
        self._job: _PackJob[C] | None = None

    @property
    def packing(self) -> bool:
        """True while a stepwise pack is running."""
        return self._job is not None

    def due(self, now: float) -> bool:
        """[SRV-050] True (once per interval) when the ``gcinterval`` timer fired."""
        if self.next_pack is None or now < self.next_pack:
            return False
        assert self.gcinterval_s is not None
        self.next_pack = now + self.gcinterval_s
        return True

    def start(self, waiter: C | None) -> Messages[C]:
        """Start a pack (or join the running one); ``waiter`` hears OK at its end.

        [SRV-051] A storage with the two-phase API packs in steps between
        which the loop serves every client; others pack in one call.
        """
        job = self._job
        if job is not None:
            # [SRV-052] One pack at a time: a second request joins the first.
            if waiter is not None:
                job.waiters.append(waiter)
            return []
        storage = self.storage
        stepwise = all(
            callable(getattr(storage, name, None))
            for name in ("pack_begin", "pack_step", "pack_finish")
        )
        log.info(
            "pack started (%s)",
            "stepwise, serving clients meanwhile" if stepwise else "blocking",
            extra={"event": "pack-start", "stepwise": stepwise},
        )
        job = _PackJob[C](time.monotonic())
        if waiter is not None:
            job.waiters.append(waiter)
        if not stepwise:
            return self._blocking_pack(job)
        try:
            storage.pack_begin()  # type: ignore[attr-defined]
        except Exception as error:
            return self._failed(job, error)
        self._job = job
        return []

    def _blocking_pack(self, job: _PackJob[C]) -> Messages[C]:
        try:
            self.storage.pack()
        except Exception as error:
            return self._failed(job, error)
        elapsed = time.monotonic() - job.started
        log.info(
            "pack finished in %.3f s",
            elapsed,
            extra={"event": "pack-end", "elapsed_s": round(elapsed, 3)},
        )
        return [(waiter, wire.Empty(wire.MessageType.OK)) for waiter in job.waiters]

    def _failed(self, job: _PackJob[C], error: Exception) -> Messages[C]:
        """[SRV-053] Abandon the pack and tell its clients; the server keeps serving."""
        if getattr(self.storage, "packing", False):
            try:
                self.storage.pack_abort()  # type: ignore[attr-defined]
            except Exception:
                log.exception("pack_abort() failed")
        code = wire.ErrorCode.STORAGE_FAILURE
        if isinstance(error, PackNotSupportedError | NotImplementedError):
            code = wire.ErrorCode.NOT_SUPPORTED
        log.error("pack failed: %s", error, extra={"event": "pack-failed"})
        answer = wire.Error(code, f"pack failed: {error}", [])
        return [(waiter, answer) for waiter in job.waiters]

    def _progress(self) -> tuple[int, int]:
        """Records copied so far and the upper bound of records to copy, if known."""
        # The file storages expose their pack's PackProgress; others have none.
        progress = getattr(self.storage, "pack_progress", None)
        copied = int(getattr(progress, "records_copied", 0) or 0)
        total = int(getattr(progress, "objects_before", 0) or 0)
        return copied, total

    def step(self) -> Messages[C]:
        """Advance the running pack by one step; finish it when the walk is done."""
        job = self._job
        if job is None:
            return []
        storage = self.storage
        try:
            done = storage.pack_step(self.step_budget)  # type: ignore[attr-defined]
        except Exception as error:
            self._job = None
            return self._failed(job, error)
        job.steps += 1
        if not done:
            now = time.monotonic()
            if now - job.last_report >= self.progress_interval_s:
                job.last_report = now
                return self._report(job)
            return []
        self._job = None
        try:
            result = storage.pack_finish()  # type: ignore[attr-defined]
        except Exception as error:
            return self._failed(job, error)
        elapsed = time.monotonic() - job.started
        log.info(
            "pack finished in %.3f s (%d steps, %s records copied, %s commits during the pack)",
            elapsed,
            job.steps,
            getattr(result, "records_copied", "?"),
            getattr(result, "commits_during_pack", "?"),
            extra={"event": "pack-end", "elapsed_s": round(elapsed, 3), "steps": job.steps},
        )
        return [(waiter, wire.Empty(wire.MessageType.OK)) for waiter in job.waiters]

    def _report(self, job: _PackJob[C]) -> Messages[C]:
        copied, total = self._progress()
        percent = f"{min(100.0, 100.0 * copied / total):.0f}%" if total else "?"
        log.info(
            "pack: %d of at most %d objects copied (%s, step %d)",
            copied,
            total,
            percent,
            job.steps,
            extra={"event": "pack-progress", "records_copied": copied, "objects": total},
        )
        frame = wire.PackProgress(copied, total)
        return [(waiter, frame) for waiter in job.waiters]

    def abandon(self) -> None:
        """Abandon a running pack (the server is stopping); PACK-013 keeps the file."""
        if self._job is None:
            return
        self._job = None
        log.info("pack abandoned: the server is stopping", extra={"event": "pack-abort"})
        try:
            self.storage.pack_abort()  # type: ignore[attr-defined]
        except Exception:
            log.exception("pack_abort() failed")
