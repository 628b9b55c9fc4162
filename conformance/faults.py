"""Crash simulation for the conformance suite: a fault-injecting file layer and
the four crash properties every recovery is checked against.

Spec: ``spec/conformance.md`` (CONF-040..CONF-044 properties, CONF-052 file
layer) and ``spec/fault-model.md`` (the disk it imitates).

Theory of operation.  :class:`FaultyFileLayer` implements the
:mod:`dhruva.fileio` protocol by passing every call through to the real file
system, so the storage above it sees an ordinary file system, while it keeps a
second picture: the bytes and names that are *durable*.  A file's content
becomes durable at its ``sync()``; a create, rename or remove becomes durable
at ``sync_directory()``.  Writes since the last sync are remembered in order.

The layer counts the operations that change the disk (writes, truncations,
syncs, renames, removals).  With ``crash_at=N`` the N-th of them raises
:class:`SimulatedCrash` before it happens, which unwinds the storage the way a
dead process stops.  :meth:`FaultyFileLayer.crash` then closes every file the
layer opened and rewrites the real files into one state a real disk could
show after a power loss at that moment:

* ``keep``: every unsynced write reached the disk;
* ``drop``: none did; the durable picture alone survives;
* ``tear``: the unsynced writes of each file reached the disk in order up to a
  random point, the write at that point only partly (a prefix of its bytes);
* ``zeros``: like ``tear``, but the file grew to its full size and the torn
  write's missing bytes read as zeros (ext4 ``data=writeback`` after a crash).

Directory changes are kept in ``keep`` and dropped in ``drop``; ``tear`` and
``zeros`` pick one at random.

The property checks (:func:`check_recovered`, :func:`check_accepts_commits`,
both run by :func:`check_crash_properties`) compare what a reopened storage
shows with the list of commits the workload made, of which the first
``acknowledged`` returned from ``end()``.
"""

from __future__ import annotations

import mmap
import os
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dhruva.error import DhruvaKeyError
from dhruva.fileio import OS_FILES, DataFile, FileLayer
from dhruva.storage import Storage

CRASH_MODES = ("keep", "drop", "tear", "zeros")


class SimulatedCrash(BaseException):
    """Raised by the faulty layer where the simulated process dies.

    A BaseException, like KeyboardInterrupt, so that storage code that
    handles ``Exception`` to clean up does not treat it as an I/O error to
    recover from: a dead process recovers from nothing.
    """


@dataclass
class _Write:
    offset: int
    data: bytes


@dataclass
class _Truncate:
    size: int


@dataclass
class _Inode:
    """One file's durable bytes and its writes since the last sync."""

    durable: bytes
    pending: list[_Write | _Truncate] = field(default_factory=list)


class FaultyFile:
    """A DataFile that passes through to a real file and records unsynced writes."""

    def __init__(self, layer: FaultyFileLayer, real: DataFile, inode: _Inode) -> None:
        self._layer = layer
        self._real = real
        self._inode = inode
        self.path = real.path

    def size(self) -> int:
        return self._real.size()

    def pread(self, length: int, offset: int) -> bytes:
        self._layer._check_alive()
        return self._real.pread(length, offset)

    def pwrite(self, data: bytes, offset: int) -> None:
        self._layer._step("pwrite")
        self._inode.pending.append(_Write(offset, bytes(data)))
        self._real.pwrite(data, offset)

    def append(self, data: bytes) -> int:
        self._layer._step("append")
        offset = self._real.size()
        self._inode.pending.append(_Write(offset, bytes(data)))
        written_at = self._real.append(data)
        assert written_at == offset
        return written_at

    def sync(self) -> None:
        self._layer._step("sync")
        # No real fsync: the durable picture is kept here, and the test
        # decides what "the disk" held at the crash.
        self._inode.durable = self._real.pread(self._real.size(), 0)
        self._inode.pending.clear()

    def truncate(self, size: int) -> None:
        self._layer._step("truncate")
        self._inode.pending.append(_Truncate(size))
        self._real.truncate(size)

    def allocate(self, size: int) -> None:
        self._layer._step("allocate")
        if size > self._real.size():
            # Reserved space reads as zeros: to the disk picture, a growth.
            self._inode.pending.append(_Truncate(size))
        self._real.allocate(size)

    def read_map(self) -> mmap.mmap | None:
        # No map: every read goes through pread, which the layer can see.
        return None

    def lock(self, exclusive: bool) -> None:
        self._layer._check_alive()
        self._real.lock(exclusive)

    def close(self) -> None:
        self._real.close()


class FaultyFileLayer:
    """A FileLayer that can simulate a crash (see the module docstring).

    ``crash_at``: the number of the disk-changing operation (from 0) that
    raises SimulatedCrash instead of happening; None never crashes.
    ``operations`` counts the operations so far, so a dry run with
    ``crash_at=None`` tells how many crash points a workload has.  With
    ``fail_with`` (an OSError class, say) that operation raises that instead,
    once, and the process lives on: an I/O error rather than a crash.
    """

    def __init__(
        self,
        crash_at: int | None = None,
        base: FileLayer = OS_FILES,
        fail_with: type[BaseException] | None = None,
    ) -> None:
        self.crash_at = crash_at
        self.fail_with = fail_with
        self.operations = 0
        self.crashed = False
        self._base = base
        self._inodes: dict[str, _Inode] = {}  # current name -> inode
        self._durable_names: dict[str, _Inode] = {}  # name -> inode after the last dir sync
        self._open: list[DataFile] = []

    # --- the FileLayer protocol -------------------------------------------------

    def open(self, path: str, create: bool, readonly: bool) -> DataFile:
        self._check_alive()
        existed = self._base.exists(path)
        real = self._base.open(path, create, readonly)
        self._open.append(real)
        inode = self._inodes.get(path)
        if inode is None:
            # A file that was there before the layer saw it counts as durable.
            inode = _Inode(real.pread(real.size(), 0) if existed else b"")
            self._inodes[path] = inode
            if existed:
                self._durable_names[path] = inode
        return FaultyFile(self, real, inode)

    def exists(self, path: str) -> bool:
        self._check_alive()
        return self._base.exists(path)

    def rename(self, source: str, target: str) -> None:
        self._step("rename")
        self._base.rename(source, target)
        inode = self._inodes.pop(source, None)
        if inode is not None:
            self._inodes[target] = inode

    def remove(self, path: str) -> None:
        self._step("remove")
        self._base.remove(path)
        self._inodes.pop(path, None)

    def sync_directory(self, path: str) -> None:
        self._step("sync_directory")
        directory = os.path.dirname(os.path.abspath(path))
        for name in list(self._durable_names):
            if os.path.dirname(os.path.abspath(name)) == directory:
                del self._durable_names[name]
        for name, inode in self._inodes.items():
            if os.path.dirname(os.path.abspath(name)) == directory:
                self._durable_names[name] = inode

    # --- crash control --------------------------------------------------------------

    def _check_alive(self) -> None:
        if self.crashed:
            raise SimulatedCrash("the simulated process is dead")

    def _step(self, what: str) -> None:
        self._check_alive()
        if self.crash_at is not None and self.operations == self.crash_at and self.fail_with:
            self.operations += 1
            self.crash_at = None  # one failure; later operations succeed
            raise self.fail_with(f"simulated I/O error at operation {self.operations - 1} ({what})")
        if self.crash_at is not None and self.operations >= self.crash_at:
            self.crashed = True
            raise SimulatedCrash(f"simulated crash at operation {self.operations} ({what})")
        self.operations += 1

    def crash(self, mode: str, rng: random.Random) -> None:
        """Close every file and rewrite the real files as a crash in ``mode`` left them."""
        if mode not in CRASH_MODES:
            raise ValueError(f"crash mode {mode!r} is not one of {CRASH_MODES}")
        self.crashed = True
        for real in self._open:
            real.close()
        self._open.clear()
        keep_names = {"keep": True, "drop": False}.get(mode, rng.random() < 0.5)
        names = dict(self._inodes) if keep_names else dict(self._durable_names)
        for name in set(self._inodes) | set(self._durable_names):
            if name not in names and os.path.exists(name):
                os.unlink(name)
        for name, inode in names.items():
            with open(name, "wb") as out:
                out.write(_disk_bytes(inode, mode, rng))


def _disk_bytes(inode: _Inode, mode: str, rng: random.Random) -> bytes:
    """Return what the disk holds for ``inode`` after a crash in ``mode``."""
    content = bytearray(inode.durable)
    ops = inode.pending
    if mode == "drop" or not ops:
        return bytes(content)
    applied = len(ops) if mode == "keep" else rng.randrange(len(ops))
    for op in ops[:applied]:
        _apply(content, op)
    if mode in ("tear", "zeros") and applied < len(ops):
        op = ops[applied]
        if isinstance(op, _Write) and op.data:
            cut = rng.randrange(len(op.data))
            torn = op.data[:cut]
            if mode == "zeros":
                torn += bytes(len(op.data) - cut)
            _apply(content, _Write(op.offset, torn))
    return bytes(content)


def _apply(content: bytearray, op: _Write | _Truncate) -> None:
    if isinstance(op, _Truncate):
        del content[op.size :]
        content.extend(bytes(op.size - len(content)))
        return
    end = op.offset + len(op.data)
    if len(content) < op.offset:
        content.extend(bytes(op.offset - len(content)))
    content[op.offset : end] = op.data


# --- the data file, read straight from the spec -------------------------------------

# Independent of dhruva.journal on purpose: the suite checks an implementation
# against spec/file-format.md, not against itself.
FILE_HEADER_SIZE = 64
_TXN_HEADER = struct.Struct(">4sIQQQII")
assert _TXN_HEADER.size == 40
_TXN_TRAILER_SIZE = 16


def transaction_spans(data: bytes) -> list[tuple[int, int]]:
    """Return ``(offset, end)`` of each transaction of a well-formed data file.

    Walks the headers' ``body_length`` fields; stops at the first header that
    does not carry the ``DTXN`` tag or runs past the end.
    """
    spans = []
    offset = FILE_HEADER_SIZE
    while offset + _TXN_HEADER.size <= len(data):
        tag, _count, body_length, _tid, _time, _reserved, _crc = _TXN_HEADER.unpack_from(
            data, offset
        )
        end = offset + _TXN_HEADER.size + body_length + _TXN_TRAILER_SIZE
        if tag != b"DTXN" or end > len(data):
            break
        spans.append((offset, end))
        offset = end
    return spans


# --- the four crash properties -----------------------------------------------------------

Commit = dict[bytes, tuple[bytes, bytes]]


def state_after(commits: list[Commit], count: int) -> dict[bytes, tuple[bytes, bytes]]:
    """Return oid -> (data, refs) after the first ``count`` commits."""
    state: dict[bytes, tuple[bytes, bytes]] = {}
    for commit in commits[:count]:
        state.update(commit)
    return state


def observe(storage: Storage, oids: set[bytes]) -> dict[bytes, tuple[bytes, bytes]]:
    """Return what ``storage`` shows for ``oids`` (missing ones left out)."""
    seen = {}
    for oid in sorted(oids):
        try:
            record = storage.load(oid)
        except DhruvaKeyError:
            continue
        seen[oid] = (record.data, record.refs)
    return seen


def check_recovered(
    storage: Storage, commits: list[Commit], acknowledged: int, context: str = ""
) -> int:
    """Check properties P1-P3 on a recovered storage; return the commits visible.

    ``commits`` are all commits the workload attempted, in order; the first
    ``acknowledged`` returned from ``end()``; ``commits[acknowledged]``, when
    present, was in flight at the crash (and may or may not have reached disk);
    later ones were never attempted and are allowed only to be absent.

    * P1 (CONF-041) every acknowledged commit is visible;
    * P2 (CONF-042) what is visible is the state after a prefix of the commits;
    * P3 (CONF-043) the in-flight commit is visible entirely or not at all.

    Raises AssertionError describing the first violated property.
    """
    oids = set().union(*commits) if commits else set()
    seen = observe(storage, oids)
    possible = range(acknowledged, min(acknowledged + 1, len(commits)) + 1)
    for count in possible:
        if seen == state_after(commits, count):
            return count
    for count in range(len(commits) + 1):
        if seen == state_after(commits, count):
            raise AssertionError(
                f"{context}: P1 violated: {acknowledged} commits were acknowledged but "
                f"the recovered state is that after {count}"
            )
    expected = state_after(commits, acknowledged)
    wrong = sorted(oid for oid in oids if seen.get(oid) != expected.get(oid))
    raise AssertionError(
        f"{context}: P2/P3 violated: the recovered state is no prefix of the commit "
        f"order ({acknowledged} acknowledged); oids differing from the acknowledged "
        f"state: {[int.from_bytes(o, 'big') for o in wrong[:10]]}"
    )


def check_accepts_commits(
    reopen: Callable[[], Storage],
    storage: Storage,
    visible: dict[bytes, tuple[bytes, bytes]],
    context: str = "",
) -> Storage:
    """Check P4 (CONF-044): ``storage`` takes a commit that survives another reopen.

    ``visible`` is the recovered state.  New oids come from ``new_oid`` and must
    not collide with a visible oid (SAPI-010).  Closes ``storage`` and returns
    the reopened one, which the caller closes.
    """
    fresh = [storage.new_oid() for _ in range(3)]
    clash = set(fresh) & set(visible)
    assert not clash, f"{context}: new_oid reissued the stored oids {sorted(clash)}"
    extra = {oid: (b"after recovery " + oid, b"".join(fresh)) for oid in fresh}
    storage.begin()
    for oid, (data, refs) in extra.items():
        storage.store(oid, data, refs)
    storage.end()
    storage.close()
    storage = reopen()
    expected = {**visible, **extra}
    seen = observe(storage, set(expected))
    assert seen == expected, f"{context}: P4 violated: a commit after recovery did not survive"
    return storage


def check_crash_properties(
    reopen: Callable[[], Storage], commits: list[Commit], acknowledged: int, context: str = ""
) -> int:
    """Reopen a store after a crash and check P1-P4 (CONF-041..CONF-044).

    P1-P3 by :func:`check_recovered`, then P4 by :func:`check_accepts_commits`
    (which reopens once more); closes the store and returns the number of
    commits that were visible after the crash.
    """
    storage = reopen()
    visible = check_recovered(storage, commits, acknowledged, context)
    storage = check_accepts_commits(reopen, storage, state_after(commits, visible), context)
    storage.close()
    return visible


def child_environment() -> dict[str, str]:
    """The parent's environment, with this package importable in a child process."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env


def make_commits(count: int, seed: int, oids_per_commit: int = 3) -> list[Commit]:
    """Return ``count`` deterministic commits over a small pool of oids.

    Oids are small integers from 1 (the root, 0, is left alone) so that the
    commits overlap: later commits overwrite earlier records, which is what
    makes a wrong prefix visible.
    """
    rng = random.Random(seed)
    commits: list[Commit] = []
    for number in range(count):
        chosen = rng.sample(range(1, 3 * oids_per_commit + 1), oids_per_commit)
        commit: Commit = {}
        for value in chosen:
            oid = value.to_bytes(8, "big")
            data = b"commit %d oid %d " % (number, value) + bytes(rng.randrange(40))
            refs = b"".join(v.to_bytes(8, "big") for v in chosen if v != value)
            commit[oid] = (data, refs)
        commits.append(commit)
    return commits


def write_commits(storage: Storage, commits: list[Commit]) -> int:
    """Commit each of ``commits``; return how many ``end()`` acknowledged.

    Stops at a SimulatedCrash, which is swallowed: the caller knows from the
    count which commit was in flight.
    """
    done = 0
    try:
        for commit in commits:
            storage.begin()
            for oid, (data, refs) in commit.items():
                storage.store(oid, data, refs)
            storage.end()
            done += 1
    except SimulatedCrash:
        pass
    return done
