"""Crash recovery under a fault-injecting file layer (spec CONF-052).

A workload runs on the back-end with :class:`FaultyFileLayer` underneath.
The layer makes the simulated process die at its N-th disk-changing operation
and leaves the files as the disk could hold them (unsynced writes kept,
dropped or torn).  The database is then reopened with the real file layer
and checked against the four crash properties.  Every operation of the
workload is a crash point.
"""

from __future__ import annotations

import random

import pytest
from dhruva_conformance.backends import StorageFactory
from dhruva_conformance.faults import (
    CRASH_MODES,
    Commit,
    FaultyFileLayer,
    SimulatedCrash,
    check_crash_properties,
    check_recovered,
    make_commits,
    write_commits,
)

from dhruva.storage import Storage

pytestmark = pytest.mark.needs("reopen", "durable", "file-layer")


def run_workload(
    factory: StorageFactory,
    layer: FaultyFileLayer,
    commits: list[Commit],
    pack_after: int,
    create: bool = False,
) -> tuple[int, Storage | None]:
    """Open the database through ``layer``, commit and close; return (acknowledged, storage).

    With ``create`` the database is created through the layer too; otherwise
    an empty database is created first with the real file system.  Packs after
    ``pack_after`` commits when the back-end can (a pack rewrites and renames
    the data file: more crash points).  ``storage`` is None when the crash
    happened while opening.
    """
    if not create:
        factory.open().close()
    try:
        storage = factory.open(reopen=not create, file_layer=layer)
    except SimulatedCrash:
        return 0, None
    acknowledged = _commit_and_pack(factory, storage, layer, commits, pack_after)
    # The close is part of the workload: FileStorage checkpoints its sidecar
    # index there, through the layer, so every step of it is a crash point too.
    # A dead process closes nothing: the layer refuses every operation then.
    try:
        storage.close()
    except SimulatedCrash:
        pass
    return acknowledged, storage


def _commit_and_pack(
    factory: StorageFactory,
    storage: Storage,
    layer: FaultyFileLayer,
    commits: list[Commit],
    pack_after: int,
) -> int:
    acknowledged = write_commits(storage, commits[:pack_after])
    if acknowledged < pack_after or layer.crashed:
        return acknowledged
    if "pack" in factory.capabilities:
        try:
            storage.pack()
        except SimulatedCrash:
            return acknowledged
    return acknowledged + write_commits(storage, commits[pack_after:])


def reachable_commits(seed: int) -> list[Commit]:
    """Commits whose objects hang off the root, so that pack keeps them all."""
    commits = make_commits(5, seed)
    root = (0).to_bytes(8, "big")
    every = b"".join(sorted({oid for commit in commits for oid in commit}))
    commits[0][root] = (b"root", every)
    return commits


def crash_everywhere(factory: StorageFactory, create: bool) -> None:
    """Run the workload once per crash point and mode; check the properties after each."""
    commits = reachable_commits(seed=3)
    pack_after = 3 if not create else 1
    dry = FaultyFileLayer()
    acknowledged, storage = run_workload(factory, dry, commits, pack_after, create)
    assert acknowledged == len(commits) and storage is not None
    storage.close()
    total = dry.operations
    assert total >= len(commits), "the workload did not write through the file layer"
    rng = random.Random(11)
    for crash_at in range(total):
        for mode in CRASH_MODES:
            context = f"crash at operation {crash_at} of {total}, mode {mode}"
            layer = FaultyFileLayer(crash_at=crash_at)
            acknowledged, _abandoned = run_workload(factory, layer, commits, pack_after, create)
            assert layer.crashed, context
            layer.crash(mode, rng)
            check_crash_properties(
                lambda: factory.open(reopen=True), commits, acknowledged, context
            )


@pytest.mark.req(
    "CONF-041",
    "CONF-042",
    "CONF-043",
    "CONF-044",
    "SAPI-043",
    "CONF-052",
    "SAPI-040",
    "SAPI-041",
    "DM-010",
    "DM-011",
    "DM-012",
    "FLT-020",
    "RCV-021",
    "RCV-022",
)
def test_crash_at_every_operation(storage_factory: StorageFactory) -> None:
    """Crash points: every commit, the pack, and the commits after it."""
    crash_everywhere(storage_factory, create=False)


@pytest.mark.req("CONF-041", "CONF-044", "SAPI-043", "CONF-052", "FLT-020", "RCV-006")
def test_crash_while_creating_the_database(
    storage_factory: StorageFactory, request: pytest.FixtureRequest
) -> None:
    """Crash points also in the creation of the data file (its header write).

    FLT-001 lets a crash keep any part of the unsynced header; [RCV-006]
    recognises every such state as an unfinished creation.
    """
    crash_everywhere(storage_factory, create=True)


@pytest.mark.req("CONF-052", "RCV-011")
def test_unsynced_writes_are_what_a_crash_loses(storage_factory: StorageFactory) -> None:
    """The layer itself: after a crash in ``drop`` mode only synced bytes remain."""
    layer = FaultyFileLayer()
    storage = storage_factory.open(file_layer=layer)
    commits = make_commits(2, seed=5)
    assert write_commits(storage, commits) == 2
    layer.crash("drop", random.Random(0))
    storage = storage_factory.open(reopen=True)
    # end() synced both commits, so dropping unsynced writes loses nothing.
    assert check_recovered(storage, commits, 2, "drop after acknowledged commits") == 2
    storage.close()
