"""BTree benchmark: per-operation cost as the tree grows, and the cost of one commit.

``bench_btree(n)`` grows one ``BTree`` (``BNode16`` nodes, random int keys,
short str values) in a ``FileStorage`` in a temporary directory, committing
every ``COMMIT_EVERY`` insertions, and at each size of ``sizes_up_to(n)``
(10k, 100k, 1M, ... up to ``n``) it measures, on that tree:

* ``insert_per_s``: insertions of new random keys (``PROBE`` of them, timed
  in ``CHUNKS`` chunks, the median chunk counts), in memory, before their
  commit;
* ``batch_commit_ms`` and ``batch_commit_records``: the one commit of those
  ``PROBE`` insertions (random keys touch up to ``PROBE`` leaves, so this
  grows with the number of leaves touched, up to the node count);
* ``lookup_per_s``: lookups of random present keys (timed the same way),
  with every node loaded (a warm cache: the cache size exceeds the node
  count);
* ``depth`` and ``node_count`` of the tree.

A flat per-operation cost shows as ``insert_us`` and ``lookup_us`` growing
with the depth (a few levels) rather than with the size.

Then, on the largest tree, ``COMMIT_PROBES`` commits of **one** insertion
each: the records the connection stores per commit (through a counting
FileStorage), the bytes of record data, the growth of the file, and the
time.  Only the touched nodes are rewritten (spec ``BT-020``), so these stay
a few records and a few KB however large the tree.

Run by hand: ``python tools/bench/btree_bench.py [N]`` (default 1,000,000;
about a minute on a 2-core machine).  The result dict is JSON-ready.
"""

from __future__ import annotations

import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_backends import committed_bytes

from dhruva.btree import BNode16, BTree
from dhruva.connection import Connection
from dhruva.file_storage import FileStorage

COMMIT_EVERY = 10_000  # insertions per commit while growing and probing
PROBE = 10_000  # insertions and lookups timed at each size
CHUNKS = 20  # PROBE is timed in this many chunks; the median chunk counts
COMMIT_PROBES = 50  # one-insert commits timed on the largest tree
KEY_SPACE = 2**40  # random keys are drawn from range(KEY_SPACE)


class CountingFileStorage(FileStorage):
    """A FileStorage that counts the records and record bytes stored."""

    records = 0
    data_bytes = 0

    def store(self, oid: bytes, data: bytes, refs: bytes = b"") -> None:
        self.records += 1
        self.data_bytes += len(data)
        super().store(oid, data, refs)


def sizes_up_to(n: int) -> list[int]:
    """Return 10k, 100k, 1M, ... up to ``n``, and ``n`` itself (at least one size)."""
    sizes = []
    size = 10_000
    while size < n:
        sizes.append(size)
        size *= 10
    sizes.append(n)
    return sizes


def _new_keys(rng: random.Random, present: set[int], count: int) -> list[int]:
    keys: list[int] = []
    while len(keys) < count:
        key = rng.randrange(KEY_SPACE)
        if key not in present:
            present.add(key)
            keys.append(key)
    return keys


def _insert(connection: Connection, tree: BTree, keys: list[int]) -> None:
    for start in range(0, len(keys), COMMIT_EVERY):
        for key in keys[start : start + COMMIT_EVERY]:
            tree[key] = "v"
        connection.commit()


def _median_us(seconds: list[float], per_chunk: int) -> float:
    return statistics.median(seconds) / per_chunk * 1e6


def _probe(
    connection: Connection,
    storage: CountingFileStorage,
    tree: BTree,
    rng: random.Random,
    present: set[int],
    probe: int,
) -> dict[str, Any]:
    """Time ``probe`` insertions, their one commit, and ``probe`` lookups."""
    # The operations are timed in chunks and the median chunk counts: the
    # machine may be shared, and a median is robust to a few slow chunks.
    chunk = max(1, probe // CHUNKS)
    new_keys = _new_keys(rng, present, chunk * CHUNKS)
    insert_seconds = []
    for start in range(0, len(new_keys), chunk):
        keys = new_keys[start : start + chunk]
        started = time.perf_counter()
        for key in keys:
            tree[key] = "v"
        insert_seconds.append(time.perf_counter() - started)
    storage.records = storage.data_bytes = 0
    started = time.perf_counter()
    connection.commit()
    commit_s = time.perf_counter() - started
    commit_records = storage.records
    lookup_keys = rng.sample(sorted(present), chunk * CHUNKS)
    lookup_seconds = []
    for start in range(0, len(lookup_keys), chunk):
        keys = lookup_keys[start : start + chunk]
        started = time.perf_counter()
        for key in keys:
            tree[key]
        lookup_seconds.append(time.perf_counter() - started)
    insert_us = _median_us(insert_seconds, chunk)
    lookup_us = _median_us(lookup_seconds, chunk)
    return {
        "size": len(tree),
        "depth": tree.get_depth(),
        "node_count": tree.get_node_count(),
        "insert_per_s": round(1e6 / insert_us),
        "insert_us": round(insert_us, 2),
        "lookup_per_s": round(1e6 / lookup_us),
        "lookup_us": round(lookup_us, 2),
        "batch_inserts": len(new_keys),
        "batch_commit_ms": round(commit_s * 1000, 1),
        "batch_commit_records": commit_records,
    }


def bench_btree(n: int = 1_000_000, directory: str | None = None) -> dict[str, Any]:
    """Measure the BTree at sizes up to ``n`` keys; see the module docstring.

    Returns ``{"node_class", "sizes": [{"size", "depth", "node_count",
    "insert_per_s", "insert_us", "lookup_per_s", "lookup_us",
    "batch_inserts", "batch_commit_ms", "batch_commit_records"}...],
    "one_insert_commit": {"size", "records_median", "records_max",
    "data_bytes_median", "file_bytes_median", "ms_median"}}``.
    """
    if n < 1:
        raise ValueError(f"n must be positive, not {n}")
    rng = random.Random(20240607)
    with tempfile.TemporaryDirectory(dir=directory, prefix="btree-bench-") as work:
        path = str(Path(work) / "btree.durus")
        storage = CountingFileStorage(path)
        # A cache that holds every node, so lookups measure the tree, not loads.
        connection = Connection(storage, cache_size=max(100_000, n // 5))
        tree = BTree(BNode16)
        connection.get_root()["tree"] = tree
        connection.commit()
        present: set[int] = set()
        rows = []
        for size in sizes_up_to(n):
            probe = min(PROBE, size)
            _insert(connection, tree, _new_keys(rng, present, size - probe - len(tree)))
            rows.append(_probe(connection, storage, tree, rng, present, probe))
            assert len(tree) == size
        records, data_bytes, file_bytes, seconds = [], [], [], []
        file_size = committed_bytes(path)
        for key in _new_keys(rng, present, COMMIT_PROBES):
            storage.records = storage.data_bytes = 0
            started = time.perf_counter()
            tree[key] = "v"
            connection.commit()
            seconds.append(time.perf_counter() - started)
            records.append(storage.records)
            data_bytes.append(storage.data_bytes)
            end = committed_bytes(path, file_size)
            file_bytes.append(end - file_size)
            file_size = end
        connection.close()
    return {
        "node_class": "BNode16",
        "sizes": rows,
        "one_insert_commit": {
            "size": len(present),
            "records_median": statistics.median(records),
            "records_max": max(records),
            "data_bytes_median": statistics.median(data_bytes),
            "file_bytes_median": statistics.median(file_bytes),
            "ms_median": round(statistics.median(seconds) * 1000, 3),
        },
    }


def format_result(result: dict[str, Any]) -> str:
    """Render ``bench_btree``'s result as a plain-text table."""
    lines = [
        f"BTree ({result['node_class']}), random int keys, FileStorage",
        f"{'size':>10} {'depth':>5} {'nodes':>8} {'inserts/s':>10} {'us':>7} "
        f"{'lookups/s':>10} {'us':>7} {'batch commit':>20}",
    ]
    for row in result["sizes"]:
        lines.append(
            f"{row['size']:>10,} {row['depth']:>5} {row['node_count']:>8,} "
            f"{row['insert_per_s']:>10,} {row['insert_us']:>7} "
            f"{row['lookup_per_s']:>10,} {row['lookup_us']:>7} "
            f"{row['batch_commit_records']:>7,} rec {row['batch_commit_ms']:>7} ms"
        )
    one = result["one_insert_commit"]
    lines.append(
        f"one insert + commit into {one['size']:,} keys: {one['records_median']} records "
        f"(max {one['records_max']}), {one['data_bytes_median']:,} data bytes, "
        f"{one['file_bytes_median']:,} file bytes, {one['ms_median']} ms (medians)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    n = int(args[0].replace("_", "")) if args else 1_000_000
    print(format_result(bench_btree(n)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
