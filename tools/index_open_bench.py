"""Measure opening a FileStorage index of 1M oids (not a test; prints numbers).

Usage: ``python tools/index_open_bench.py [ENTRY_COUNT] [LOOKUPS]``

Creates a DiskIndex of ENTRY_COUNT oids (default 1,000,000) in a temporary
directory, then times ``DiskIndex.open`` alone and ``open`` + LOOKUPS random
lookups (default 1000), over 20 rounds, first with the index file in the page
cache ("warm") and then after asking the kernel to drop its pages ("cold",
posix_fadvise DONTNEED; the disk or its cache may still serve them quickly).
Finally it times one checkpoint of LOOKUPS changed entries (two fsyncs).
The goal (spec/file-index.md) is open + lookups in at most 10 ms whatever the
number of oids; without the index, open scans the whole data file.
"""

from __future__ import annotations

import os
import random
import sys
import tempfile
import time

from dhruva.file_index import DiskIndex

ROUNDS = 20


def _evict_from_page_cache(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _time_open(path: str, file_id: bytes, oids: list[int], cold: bool) -> None:
    open_times: list[float] = []
    total_times: list[float] = []
    for _ in range(ROUNDS):
        if cold:
            _evict_from_page_cache(path)
        started = time.perf_counter()
        index = DiskIndex.open(path, file_id, readonly=False)
        opened = time.perf_counter()
        assert index is not None
        for oid in oids:
            assert index.lookup(oid) == 64 + 100 * oid
        done = time.perf_counter()
        index.close()
        open_times.append(opened - started)
        total_times.append(done - started)
    label = "cold" if cold else "warm"
    open_times.sort()
    total_times.sort()
    print(
        f"{label}: open median {open_times[ROUNDS // 2] * 1e3:.3f} ms, "
        f"max {open_times[-1] * 1e3:.3f} ms; "
        f"open + {len(oids)} lookups median {total_times[ROUNDS // 2] * 1e3:.3f} ms, "
        f"max {total_times[-1] * 1e3:.3f} ms"
    )


def main() -> None:
    entry_count = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    lookups = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    file_id = os.urandom(16)
    rng = random.Random(1)
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "bench.dhruva.index")
        entries = {oid: 64 + 100 * oid for oid in range(entry_count)}
        covered = 64 + 100 * entry_count
        started = time.perf_counter()
        DiskIndex.create(path, file_id, entries, covered, 1, 0, entry_count - 1).close()
        create_s = time.perf_counter() - started
        size_mib = os.path.getsize(path) / 2**20
        print(f"create {entry_count} entries: {create_s * 1e3:.1f} ms, file {size_mib:.1f} MiB")
        oids = [rng.randrange(entry_count) for _ in range(lookups)]
        for cold in (False, True):
            _time_open(path, file_id, oids, cold)
        index = DiskIndex.open(path, file_id, readonly=False)
        assert index is not None
        changed = {oid: covered + 10 * i for i, oid in enumerate(oids)}
        started = time.perf_counter()
        index.checkpoint(changed, covered + 10 * lookups + 10, 2, 0, entry_count + 10)
        checkpoint_ms = (time.perf_counter() - started) * 1e3
        print(f"checkpoint of {len(changed)} entries (2 fsyncs): {checkpoint_ms:.1f} ms")
        index.close()


if __name__ == "__main__":
    main()
