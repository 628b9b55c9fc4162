"""SIGKILL a packing process at every step of the pack (spec: pack.md, PACK-040..PACK-042).

The parent builds a database with live objects, superseded revisions and
garbage.  A child process opens it by back-end name and directory, installs
the storage's test hook ``_pack_step_hook`` so that the k-th step boundary
kills the process with SIGKILL, and packs; when the storage offers the
two-phase API it also commits between ``pack_begin()`` and ``pack_finish()``
and reports the acknowledgement.  For k = 0, 1, 2, ... until the child
completes the pack, the parent reopens the database and checks that it is
either the old database or the new one -- every live object with its data,
the acknowledged commit present, the garbage all there or all gone, never a
mix -- and that it accepts commits and packs again.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
from dhruva_conformance.backends import StorageFactory, backend_names, create_backend
from dhruva_conformance.faults import child_environment

from dhruva.error import DhruvaKeyError
from dhruva.storage import Storage
from dhruva.utils import int8_to_str

pytestmark = [
    pytest.mark.needs("pack", "reopen", "durable", "subprocess"),
    pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="no SIGKILL on this platform"),
]

LIVE = 40  # a chain root -> 1 -> 2 ... -> LIVE - 1
GARBAGE = range(100, 130)
RECORD_BYTES = 40_000  # enough live data for several flushes of the pack's buffer
DURING = 500  # the oid the child commits while the pack runs
MAX_STEPS = 200

CHILD = """
import os, signal, sys
from dhruva_conformance.backends import create_backend
from dhruva.utils import int8_to_str

name, directory, kill_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
storage = create_backend(name, directory).open(reopen=True)
if not hasattr(storage, "_pack_step_hook"):
    print("nohook", flush=True)
    sys.exit(0)
calls = 0

def hook(step):
    global calls
    if calls == kill_at:
        print("killed", step, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    calls += 1

storage._pack_step_hook = hook
if hasattr(storage, "pack_begin"):
    storage.pack_begin()
    storage.pack_step(8)
    storage.begin()
    storage.store(int8_to_str(@DURING@), b"committed during the pack", b"")
    storage.store(int8_to_str(0), b"root v2", int8_to_str(1) + int8_to_str(@DURING@))
    storage.end()
    print("committed", flush=True)
    while not storage.pack_step(8):
        pass
    storage.pack_finish()
else:
    storage.pack()
storage.close()
print("done", flush=True)
""".replace("@DURING@", str(DURING))


def live_data(number: int) -> bytes:
    return number.to_bytes(4, "big") * (RECORD_BYTES // 4)


def build(factory: StorageFactory) -> None:
    """The old database: a chain of live objects, each revised once, and garbage."""
    storage = factory.open()
    for revision in (b"old ", b""):
        storage.begin()
        for number in range(LIVE):
            refs = int8_to_str(number + 1) if number + 1 < LIVE else b""
            storage.store(int8_to_str(number), revision + live_data(number), refs)
        storage.end()
    storage.begin()
    for number in GARBAGE:
        storage.store(int8_to_str(number), b"garbage %d" % number, int8_to_str(0))
    storage.end()
    storage.close()


def run_child(factory: StorageFactory, directory: Path, kill_at: int) -> list[str]:
    child = subprocess.run(
        [sys.executable, "-c", CHILD, factory.name, str(directory), str(kill_at)],
        capture_output=True,
        text=True,
        env=child_environment(),
        timeout=300,
    )
    lines = child.stdout.split("\n")
    if "done" in lines or "nohook" in lines:
        assert child.returncode == 0, child.stderr
    else:
        assert child.returncode == -signal.SIGKILL, f"child failed: {child.stderr}"
    return [line for line in lines if line]


def present(storage: Storage, number: int) -> bool:
    try:
        storage.load(int8_to_str(number))
    except DhruvaKeyError:
        return False
    return True


def check_old_or_new(storage: Storage, committed: bool, killed_at: str | None) -> str:
    """Check the reopened database is the old one or the new one; return which."""
    for number in range(1, LIVE):
        assert storage.load(int8_to_str(number)).data == live_data(number)
    root = storage.load(int8_to_str(0)).data
    if committed:
        assert root == b"root v2"
        assert storage.load(int8_to_str(DURING)).data == b"committed during the pack"
    else:
        assert root == live_data(0)
    garbage = [present(storage, number) for number in GARBAGE]
    assert all(garbage) or not any(garbage), f"a mix of old and new after kill at {killed_at}"
    return "old" if all(garbage) else "new"


@pytest.mark.req("PACK-040", "PACK-041", "PACK-042", "PACK-020", "RCV-022", "RCV-023")
def test_sigkill_at_every_pack_step(storage_factory: StorageFactory, tmp_path: Path) -> None:
    if storage_factory.name not in backend_names():
        pytest.skip(f"back-end {storage_factory.name!r} is not registered by name")
    outcomes: list[tuple[str | None, str]] = []
    for kill_at in range(MAX_STEPS):
        directory = tmp_path / f"kill-{kill_at}"
        factory = create_backend(storage_factory.name, directory)
        try:
            build(factory)
            lines = run_child(factory, directory, kill_at)
            if "nohook" in lines:
                pytest.skip(f"back-end {factory.name!r} has no _pack_step_hook (spec PACK-040)")
            done = "done" in lines
            killed = [line.split(" ", 1)[1] for line in lines if line.startswith("killed ")]
            killed_at = killed[0] if killed else None
            committed = "committed" in lines
            storage = factory.open(reopen=True)
            outcome = check_old_or_new(storage, committed, killed_at)
            if done:
                assert outcome == "new", "a completed pack must leave the new database"
            outcomes.append((killed_at, outcome))
            # The store accepts commits and packs again (a stale PATH.pack is ignored).
            storage.begin()
            storage.store(int8_to_str(0), b"root v3", int8_to_str(1))
            storage.end()
            storage.pack()
            assert not present(storage, LIVE + 1) and not present(storage, GARBAGE[0])
            storage.close()
            storage = factory.open(reopen=True)
            assert storage.load(int8_to_str(0)).data == b"root v3"
            assert storage.load(int8_to_str(LIVE - 1)).data == live_data(LIVE - 1)
            storage.close()
        finally:
            factory.cleanup()
        if done:
            break
    else:
        pytest.fail(f"the pack did not complete within {MAX_STEPS} steps")
    # A kill before the rename leaves the old database, after it the new one.
    assert outcomes[0][1] == "old"
    assert len(outcomes) > 3, outcomes
    assert {outcome for _step, outcome in outcomes} == {"old", "new"}
    order = [outcome for _step, outcome in outcomes]
    assert order == sorted(order, key=lambda outcome: outcome == "new"), outcomes
