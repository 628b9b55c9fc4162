"""Pack benchmark: seconds to pack a file database per 100k live objects.

``bench_pack(n)`` builds, for FileStorage and FileStorage2, a database in a
temporary directory holding ``n`` live objects: a tree of fan-out
``FANOUT`` hanging off the root, each record ``DATA_BYTES`` of opaque state
(the storage never looks inside it), written in commits of ``COMMIT_EVERY``
records; then it rewrites every tenth object once (a superseded revision) and
adds ``n // 10`` unreachable objects, so that the pack has something to drop.
It times ``storage.pack()`` (wall clock, the file in the page cache, as it is
right after writing) and checks the packed database holds exactly the live
objects.

The target (issue 4) is at most 0.5 s per 100k live objects; ZODB 6 takes
2.4 s and Durus 4.3 takes 3.7 s on the same 2-core machine.

Run by hand: ``python tools/bench/pack_bench.py [N]`` (default 100,000).
The result dict is JSON-ready.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from typing import Any

from dhruva.file_storage import FileStorage, FileStorage2
from dhruva.file_storage2 import JournalStorage
from dhruva.utils import int8_to_str

FANOUT = 8
DATA_BYTES = 100
COMMIT_EVERY = 10_000
TARGET_S_PER_100K = 0.5


def _children(number: int, n: int) -> list[int]:
    first = number * FANOUT + 1
    return [c for c in range(first, first + FANOUT) if c < n]


def build(storage: JournalStorage, n: int) -> None:
    """Write ``n`` live objects (a tree from the root), revisions and garbage."""
    payload = b"x" * DATA_BYTES

    def write(numbers: range, tag: bytes) -> None:
        for start in range(numbers.start, numbers.stop, COMMIT_EVERY):
            storage.begin()
            for number in range(start, min(start + COMMIT_EVERY, numbers.stop), numbers.step):
                refs = b"".join(int8_to_str(c) for c in _children(number, n))
                storage.store(int8_to_str(number), tag + payload, refs)
            storage.end()

    write(range(n), b"v1")
    write(range(0, n, 10), b"v2")  # superseded revisions of every tenth object
    storage.begin()
    for number in range(n, n + n // 10):  # unreachable: nothing refers to them
        storage.store(int8_to_str(number), payload, b"")
    storage.end()


def bench_one(cls: type[JournalStorage], n: int, directory: str) -> dict[str, Any]:
    path = os.path.join(directory, f"{cls.__name__}.dhruva")
    with cls(path) as storage:
        build(storage, n)
        size_before = os.path.getsize(path)
        objects_before = storage.get_size()
        started = time.perf_counter()
        storage.pack()
        seconds = time.perf_counter() - started
        live = storage.get_size()
    if live != n:
        raise AssertionError(f"{cls.__name__}: {live} objects after pack, expected {n}")
    per_100k = seconds * 100_000 / n
    return {
        "storage": cls.__name__,
        "live_objects": n,
        "objects_before": objects_before,
        "bytes_before": size_before,
        "bytes_after": os.path.getsize(path),
        "pack_s": round(seconds, 4),
        "pack_s_per_100k": round(per_100k, 4),
        "target_s_per_100k": TARGET_S_PER_100K,
        "meets_target": per_100k <= TARGET_S_PER_100K,
    }


def bench_pack(n: int) -> dict[str, Any]:
    """Pack ``n`` live objects with FileStorage and FileStorage2; return the figures."""
    with tempfile.TemporaryDirectory(prefix="dhruva-pack-bench-") as directory:
        results = [bench_one(cls, n, directory) for cls in (FileStorage, FileStorage2)]
    return {
        "n": n,
        "fanout": FANOUT,
        "data_bytes": DATA_BYTES,
        "results": results,
        "compare_s_per_100k": {"ZODB 6": 2.4, "Durus 4.3": 3.7},
    }


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    print(json.dumps(bench_pack(count), indent=2))
