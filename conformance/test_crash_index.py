"""Crash recovery at every step of a sidecar-index checkpoint (spec IDX-006, IDX-030).

A back-end with a sidecar index (FileStorage's ``PATH.index``) writes it
through the same file layer as the data file ([IDX-006]), so the
fault-injecting layer holds, drops and tears the index's unsynced writes too.
The workload checkpoints after every commit, and its oids outgrow the index's
first capacity, so the crash points cover every step of a checkpoint: the
growth, the entry writes, both syncs and the meta slot write, plus the
creation of the index at the first open.  After each crash the database is
reopened with the real file system, which uses the (old, new or torn) index,
and checked against the four crash properties.
"""

from __future__ import annotations

import random
from typing import Protocol, runtime_checkable

import pytest
from dhruva_conformance.backends import StorageFactory
from dhruva_conformance.faults import (
    CRASH_MODES,
    Commit,
    FaultyFileLayer,
    SimulatedCrash,
    check_crash_properties,
)

from dhruva.storage import Storage

pytestmark = pytest.mark.needs("reopen", "durable", "file-layer")


@runtime_checkable
class Checkpointing(Protocol):
    """A storage with a sidecar index that it can bring up to date on demand."""

    def checkpoint(self) -> None: ...


#: Past the first capacity of FileStorage's index (one page, 512 entries).
HIGH_OID = 700


def index_commits() -> list[Commit]:
    """Four commits that overwrite, add low oids, and add oids past the first capacity."""
    commits: list[Commit] = []
    for number in range(4):
        commit: Commit = {}
        for value in (1, 2, 3 + number, HIGH_OID + number):
            oid = value.to_bytes(8, "big")
            commit[oid] = (b"commit %d oid %d" % (number, value), b"")
        commits.append(commit)
    return commits


def run_workload(factory: StorageFactory, layer: FaultyFileLayer, commits: list[Commit]) -> int:
    """Open through ``layer``, commit and checkpoint each commit, close; return acknowledged."""
    try:
        storage = factory.open(reopen=True, file_layer=layer)
    except SimulatedCrash:
        return 0
    acknowledged = 0
    try:
        for commit in commits:
            storage.begin()
            for oid, (data, refs) in commit.items():
                storage.store(oid, data, refs)
            storage.end()
            acknowledged += 1
            assert isinstance(storage, Checkpointing)
            storage.checkpoint()
        storage.close()
    except SimulatedCrash:
        _close_dead(storage)
    return acknowledged


def _close_dead(storage: Storage) -> None:
    try:
        storage.close()
    except SimulatedCrash:
        pass  # the layer refuses everything after the crash: nothing is written


@pytest.mark.req("IDX-006", "IDX-030", "IDX-036", "CONF-041", "CONF-042", "CONF-043", "CONF-044")
def test_crash_at_every_step_of_an_index_checkpoint(storage_factory: StorageFactory) -> None:
    probe = storage_factory.open()
    has_index = isinstance(probe, Checkpointing)
    probe.close()
    if not has_index:
        pytest.skip(f"back-end {storage_factory.name!r} keeps no sidecar index to checkpoint")
    commits = index_commits()
    storage_factory.open().close()
    dry = FaultyFileLayer()
    assert run_workload(storage_factory, dry, commits) == len(commits)
    total = dry.operations
    index_paths = [name for name in dry._inodes if name.endswith(".index")]
    assert index_paths, "the index was not written through the file layer (IDX-006)"
    rng = random.Random(17)
    for crash_at in range(total):
        for mode in CRASH_MODES:
            context = f"crash at operation {crash_at} of {total}, mode {mode}"
            storage_factory.open().close()  # a fresh, empty database with its index
            layer = FaultyFileLayer(crash_at=crash_at)
            acknowledged = run_workload(storage_factory, layer, commits)
            assert layer.crashed, context
            layer.crash(mode, rng)
            check_crash_properties(
                lambda: storage_factory.open(reopen=True), commits, acknowledged, context
            )
