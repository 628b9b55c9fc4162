"""Crash recovery after SIGKILL of a writing process (spec CONF-053).

A child process opens the database by back-end name and directory, commits a
deterministic sequence of transactions and prints the number of each one as
soon as ``end()`` returns (flushed), so the parent knows exactly which commits
were acknowledged.  The parent kills it with SIGKILL after some
acknowledgements, reads what was printed before the kill, reopens the
database and checks the four crash properties.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from dhruva_conformance.backends import StorageFactory, backend_names
from dhruva_conformance.faults import check_crash_properties, child_environment, make_commits

pytestmark = [
    pytest.mark.needs("reopen", "durable", "subprocess"),
    pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="no SIGKILL on this platform"),
]

COMMIT_COUNT = 3000
SEED = 17

CHILD = """
import sys
from dhruva_conformance.backends import create_backend
from dhruva_conformance.faults import make_commits

name, directory, count, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
storage = create_backend(name, directory).open(reopen=True)
print("ready", flush=True)
for number, commit in enumerate(make_commits(count, seed)):
    storage.begin()
    for oid, (data, refs) in commit.items():
        storage.store(oid, data, refs)
    storage.end()
    print(number, flush=True)
storage.close()
print("done", flush=True)
"""


@pytest.mark.parametrize("kill_after", [1, 7, 40])
@pytest.mark.req(
    "CONF-041",
    "CONF-042",
    "CONF-043",
    "CONF-044",
    "SAPI-043",
    "CONF-053",
    "SAPI-040",
    "DM-011",
    "DM-012",
    "FLT-003",
    "FLT-020",
)
def test_sigkill_mid_workload(storage_factory: StorageFactory, kill_after: int) -> None:
    directory = getattr(storage_factory, "directory", None)
    if directory is None or storage_factory.name not in backend_names():
        pytest.skip(f"back-end {storage_factory.name!r} is not registered by name with a directory")
    storage_factory.open().close()
    arguments = [storage_factory.name, str(directory), str(COMMIT_COUNT), str(SEED)]
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, *arguments],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=child_environment(),
        text=True,
    )
    lines: list[str] = []
    try:
        assert child.stdout is not None
        # Bounded: the child prints at most COMMIT_COUNT + 2 lines.
        for line in child.stdout:
            lines.append(line.strip())
            if len(lines) > kill_after:
                os.kill(child.pid, signal.SIGKILL)
                break
        # Read the rest through the same buffered file objects: communicate()
        # reads the raw descriptors and would miss lines that the iteration
        # above had already pulled into the TextIOWrapper's read-ahead buffer.
        rest = child.stdout.read()
        assert child.stderr is not None
        errors = child.stderr.read()
        child.wait()
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
        for stream in (child.stdout, child.stderr):
            if stream is not None:
                stream.close()
    lines.extend(rest.split())
    assert lines and lines[0] == "ready", f"the child failed to start: {errors}"
    assert "done" not in lines, "the child finished before the kill; raise COMMIT_COUNT"
    assert child.returncode == -signal.SIGKILL
    acknowledged = len(lines) - 1
    assert lines[1:] == [str(n) for n in range(acknowledged)]
    commits = make_commits(COMMIT_COUNT, SEED)
    context = f"SIGKILL after {acknowledged} acknowledged commits"
    check_crash_properties(
        lambda: storage_factory.open(reopen=True), commits, acknowledged, context
    )
