"""Tests of the online backup (spec: point-in-time.md, HIST-040..HIST-046)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from dhruva import journal
from dhruva.backup import backup
from dhruva.error import CorruptionError, DhruvaError, FormatError
from dhruva.file_storage import FileStorage, FileStorage2
from dhruva.history import list_transactions
from dhruva.utils import int8_to_str

WRITER = """
import sys
from dhruva.file_storage import FileStorage
from dhruva.utils import int8_to_str

storage = FileStorage(sys.argv[1])
print("ready", flush=True)
number = 0
while True:
    number += 1
    storage.begin()
    storage.store(int8_to_str(0), b"%d" % number, b"")
    # Every few commits a large one, so that a backup often meets a commit in progress.
    size = 300_000 if number % 7 == 0 else 100
    storage.store(int8_to_str(number), (b"obj %d " % number) * (size // 10), b"")
    storage.end()
    print(number, flush=True)
"""


class Writer:
    """A subprocess committing numbered transactions as fast as it can."""

    def __init__(self, path: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", WRITER, path],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.acknowledged = 0
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            line = line.strip()
            if line == "ready":
                self._ready.set()
            elif line.isdigit():
                self.acknowledged = int(line)

    def wait_for(self, count: int) -> None:
        """Block until ``count`` commits are acknowledged (bounded by the child's health)."""
        assert self._ready.wait(60), "the writer did not start"
        while self.acknowledged < count:
            assert self.process.poll() is None, "the writer died"
            self._reader.join(0.01)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self._reader.join(10)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


def check_copy(path: str, at_least: int) -> int:
    """The copy verifies and holds commits 1..m of the writer, m >= at_least; return m."""
    data = Path(path).read_bytes()
    journal.decode_file_header(data, path)
    result = journal.scan(data, journal.FILE_HEADER_SIZE, path)
    assert result.tail is None
    tids = [t.tid for t in list_transactions(path)]
    assert tids == list(range(1, len(tids) + 1))
    with FileStorage2(path, readonly=True) as storage:
        last = int(storage.load(int8_to_str(0)).data)
        assert last == len(tids) >= at_least
        # A prefix: every commit up to the last one, nothing after it.
        for number in range(1, last + 1):
            assert storage.load(int8_to_str(number)).data.startswith(b"obj %d " % number)
        assert storage.get_size() == last + 1
    return last


@pytest.mark.req("HIST-040", "HIST-041", "HIST-042", "HIST-043")
def test_backup_under_write_load_holds_a_prefix_of_the_commits(tmp_path: Path) -> None:
    source = str(tmp_path / "live.dhruva")
    writer = Writer(source)
    try:
        counts: list[int] = []
        dropped = 0
        for round_number in range(12):
            writer.wait_for(5 * (round_number + 1))
            acknowledged = writer.acknowledged
            dest = str(tmp_path / f"copy{round_number}.dhruva")
            result = backup(source, dest)
            dropped += result.dropped_tail_bytes > 0
            assert not os.path.exists(dest + ".partial")
            counts.append(check_copy(dest, acknowledged))
            # The copy is a database of its own: it opens writable and commits.
            with FileStorage(dest) as storage:
                storage.begin()
                storage.store(int8_to_str(0), b"0", b"")
                storage.end()
    finally:
        writer.kill()
    assert counts == sorted(counts) and counts[-1] > counts[0]


@pytest.mark.req("HIST-042")
def test_a_commit_in_progress_is_left_out(tmp_path: Path) -> None:
    source = str(tmp_path / "db")
    with FileStorage(source) as storage:
        for number in range(1, 4):
            storage.begin()
            storage.store(int8_to_str(0), b"%d" % number, b"")
            storage.store(int8_to_str(number), b"obj %d " % number, b"")
            storage.end()
    data = Path(source).read_bytes()
    end = journal.scan(data, journal.FILE_HEADER_SIZE, source).end
    # [RCV-060] The writer left free space after its last commit: not left out.
    clean = backup(source, str(tmp_path / "clean"))
    assert end < len(data) and clean.dropped_tail_bytes == 0 and clean.size_bytes == end
    whole = journal.encode_transaction(4, 0, [(int8_to_str(4), b"late", b"")])
    with open(source, "r+b") as file:
        file.seek(end)  # the next commit goes over the free space
        file.write(whole[:-3])  # what a reader can see while the commit is written
    size = os.path.getsize(source)
    result = backup(source, str(tmp_path / "copy"))
    assert result.dropped_tail_bytes == size - end
    assert result.last_tid == 3 and result.transactions == 3
    assert check_copy(str(tmp_path / "copy"), 3) == 3


@pytest.mark.req("HIST-045")
def test_backup_refuses_damage_foreign_files_and_existing_targets(tmp_path: Path) -> None:
    source = str(tmp_path / "db")
    with FileStorage(source) as storage:
        for number in range(3):
            storage.begin()
            storage.store(int8_to_str(number), b"x" * 50, b"")
            storage.end()
    data = bytearray(Path(source).read_bytes())
    (tmp_path / "exists").write_bytes(b"keep me")
    with pytest.raises(DhruvaError, match="exists"):
        backup(source, str(tmp_path / "exists"))
    assert (tmp_path / "exists").read_bytes() == b"keep me"
    data[120] ^= 0xFF  # inside the first transaction, valid ones follow
    damaged = tmp_path / "damaged"
    damaged.write_bytes(bytes(data))
    with pytest.raises(CorruptionError):
        backup(str(damaged), str(tmp_path / "copy"))
    assert not os.path.exists(tmp_path / "copy") and not os.path.exists(tmp_path / "copy.partial")
    foreign = tmp_path / "foreign"
    foreign.write_bytes(b"not a database at all" * 10)
    with pytest.raises(FormatError):
        backup(str(foreign), str(tmp_path / "copy"))


@pytest.mark.req("HIST-046")
def test_backup_of_a_packed_database(tmp_path: Path) -> None:
    source = str(tmp_path / "db")
    with FileStorage(source) as storage:
        storage.begin()
        storage.store(int8_to_str(0), b"1", int8_to_str(1))
        storage.store(int8_to_str(1), b"obj 1 ", b"")
        storage.store(int8_to_str(9), b"garbage", b"")
        storage.end()
        storage.pack()
        result = backup(source, str(tmp_path / "copy"))
    assert result.last_tid == 1
    with FileStorage2(str(tmp_path / "copy"), readonly=True) as copy:
        assert copy.get_size() == 2
