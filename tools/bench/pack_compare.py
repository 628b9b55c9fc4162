"""Section 8's comparison rows: Durus 4.3's and ZODB's pack on the same data.

``pack_bench.py`` packs dhruva's FileStorage and FileStorage2; this module
builds the same logical database for Durus 4.3's FileStorage and ZODB's
FileStorage and times their pack:

- ``n`` live objects in a tree of fan-out ``pack_bench.FANOUT`` hanging off
  the root, each with ``pack_bench.DATA_BYTES`` bytes of state, written in
  commits of ``pack_bench.COMMIT_EVERY``;
- every tenth object rewritten once (a superseded revision);
- ``n // 10`` unreachable objects.

Durus stores opaque records with their references beside them, like dhruva,
so its database is written record by record with ``durus.serialize.
pack_record`` exactly as ``pack_bench.build`` writes dhruva's.  ZODB finds
references inside pickles, so its database is written through a ZODB
connection as persistent ``Node`` objects (a ``payload`` bytes attribute and
a ``children`` list); the garbage is committed hanging off the root and then
cut loose.  ZODB's pack keeps the revisions current at the pack time, which is
taken just after the last commit, so it drops the same revisions.

Run alone (in the bench venv): ``python tools/bench/pack_compare.py [N]``.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from importlib import metadata
from typing import Any

from pack_bench import COMMIT_EVERY, DATA_BYTES, FANOUT, TARGET_S_PER_100K


def _children(number: int, n: int) -> list[int]:
    first = number * FANOUT + 1
    return [c for c in range(first, first + FANOUT) if c < n]


def _row(
    name: str, n: int, seconds: float, live: int | None, path: str, before: int
) -> dict[str, Any]:
    return {
        "storage": name,
        "live_objects": n,
        "live_after_pack": live,
        "bytes_before": before,
        "bytes_after": os.path.getsize(path),
        "pack_s": round(seconds, 4),
        "pack_s_per_100k": round(seconds * 100_000 / n, 4),
    }


def pack_durus(n: int, directory: str) -> dict[str, Any]:
    """Build the database in Durus 4.3's FileStorage and time ``pack()``."""
    from durus.file_storage import FileStorage
    from durus.serialize import pack_record
    from durus.utils import int8_to_str

    path = os.path.join(directory, "durus.durus")
    storage = FileStorage(path)
    payload = b"x" * DATA_BYTES

    def write(numbers: range, tag: bytes) -> None:
        for start in range(numbers.start, numbers.stop, COMMIT_EVERY):
            storage.begin()
            for number in range(start, min(start + COMMIT_EVERY, numbers.stop), numbers.step):
                oid = int8_to_str(number)
                refs = b"".join(int8_to_str(c) for c in _children(number, n))
                storage.store(oid, pack_record(oid, tag + payload, refs))
            storage.end()

    try:
        # Durus refuses to store an oid it did not hand out (except the
        # root's); a new file's oids count up from 0, so this allocates every
        # oid the build stores.
        for expected in range(n + n // 10):
            if storage.new_oid() != int8_to_str(expected):
                raise AssertionError("Durus allocated oids out of order")
        write(range(n), b"v1")
        write(range(0, n, 10), b"v2")
        storage.begin()
        for number in range(n, n + n // 10):
            oid = int8_to_str(number)
            storage.store(oid, pack_record(oid, payload, b""))
        storage.end()
        before = os.path.getsize(path)
        started = time.perf_counter()
        storage.pack()
        seconds = time.perf_counter() - started
        live = sum(1 for _ in storage.gen_oid_record())
    finally:
        storage.close()
    if live != n:
        raise AssertionError(f"Durus: {live} objects after pack, expected {n}")
    return _row(f"Durus {_version('durus')} FileStorage", n, seconds, live, path, before)


def pack_zodb(n: int, directory: str) -> dict[str, Any]:
    """Build the database in ZODB's FileStorage (as objects) and time ``pack()``."""
    import transaction
    from persistent import Persistent
    from ZODB import DB
    from ZODB.FileStorage import FileStorage
    from ZODB.serialize import referencesf

    class Node(Persistent):  # type: ignore[misc]
        def __init__(self, payload: bytes) -> None:
            self.payload = payload
            self.children: list[Node] = []

    # Pickles name the class by module and name, and nothing loads them.
    Node.__module__ = __name__
    Node.__name__ = Node.__qualname__ = "ZodbPackNode"
    globals()["ZodbPackNode"] = Node

    path = os.path.join(directory, "zodb.fs")
    storage = FileStorage(path)
    db = DB(storage)
    manager = transaction.TransactionManager()
    connection = db.open(manager)
    payload = b"x" * DATA_BYTES
    try:
        root = connection.root()
        # Object 0 of the tree hangs off ZODB's root mapping; the root itself
        # is one more live object than dhruva's and Durus's trees have.
        nodes = [Node(b"v1" + payload) for _ in range(n)]
        for number, node in enumerate(nodes):
            node.children = [nodes[c] for c in _children(number, n)]
        root["tree"] = nodes[0]
        # Commit parents before children so each commit holds COMMIT_EVERY
        # new objects, as in the other two systems.
        for start in range(0, n, COMMIT_EVERY):
            for node in nodes[start : start + COMMIT_EVERY]:
                connection.add(node)
            manager.commit()
        for start in range(0, n, COMMIT_EVERY):
            for node in nodes[start : start + COMMIT_EVERY : 10]:
                node.payload = b"v2" + payload
            manager.commit()
        root["garbage"] = [Node(payload) for _ in range(n // 10)]
        manager.commit()
        del root["garbage"]
        manager.commit()
        connection.cacheMinimize()
        before = os.path.getsize(path)
        pack_time = time.time() + 1e-3
        started = time.perf_counter()
        storage.pack(pack_time, referencesf)
        seconds = time.perf_counter() - started
        # The root mapping and the tree: n + 1 live objects.
        live = len(storage) - 1
    finally:
        manager.abort()
        connection.close()
        db.close()
    if live != n:
        raise AssertionError(f"ZODB: {live} tree objects after pack, expected {n}")
    return _row(f"ZODB {_version('ZODB')} FileStorage", n, seconds, live, path, before)


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "?"


def bench_pack_compare(
    n: int, strict: bool = False, systems: list[str] | None = None
) -> list[dict[str, Any]]:
    """Rows for Durus and ZODB (``systems``: ``durus``, ``zodb``; default both).

    A missing or failing system gets a row with ``error`` instead of numbers
    (a failure raises instead when ``strict``).
    """
    rows: list[dict[str, Any]] = []
    for name, module, measure in (
        ("Durus 4.3 FileStorage", "durus", pack_durus),
        ("ZODB FileStorage", "ZODB", pack_zodb),
    ):
        if systems is not None and module.lower() not in systems:
            continue
        try:
            __import__(module)
        except ImportError as error:
            rows.append({"storage": name, "error": f"not installed ({error})"})
            continue
        try:
            with tempfile.TemporaryDirectory(prefix="bench-pack-compare-") as directory:
                rows.append(measure(n, directory))
        except Exception as error:
            if strict:
                raise
            rows.append({"storage": name, "error": f"{type(error).__name__}: {error}"})
    return rows


def format_table(result: dict[str, Any]) -> str:
    """Section 8's table: every storage's pack time, per 100k live objects, and ratios.

    ``result`` is ``pack_bench.bench_pack``'s dict with a ``compare`` list of
    this module's rows added (``run.py`` does that).
    """
    rows = [*result["results"], *result.get("compare", [])]
    measured = {row["storage"]: row for row in rows if "error" not in row}
    dhruva_s = measured.get("FileStorage", {}).get("pack_s_per_100k")
    lines = [
        f"Pack: {result['n']:,} live objects (tree of fan-out {result['fanout']}, "
        f"{result['data_bytes']} bytes each), every tenth rewritten once, "
        f"{result['n'] // 10:,} unreachable",
        f"  {'storage':<28} {'MB before':>9} {'MB after':>8} {'pack s':>8} "
        f"{'s/100k':>8} {'x dhruva FS':>11}",
    ]
    for row in rows:
        label = (
            row["storage"]
            if row["storage"].startswith(("Durus", "ZODB"))
            else (f"dhruva {row['storage']}")
        )
        if "error" in row:
            lines.append(f"  {label:<28} {row['error']}")
            continue
        ratio = "-" if not dhruva_s else f"{row['pack_s_per_100k'] / dhruva_s:.2f}x"
        lines.append(
            f"  {label:<28} {row['bytes_before'] / 1e6:>9.1f} {row['bytes_after'] / 1e6:>8.1f} "
            f"{row['pack_s']:>8.3f} {row['pack_s_per_100k']:>8.3f} {ratio:>11}"
        )
    reference = ", ".join(f"{k} {v} s" for k, v in result["compare_s_per_100k"].items())
    met = [row.get("meets_target") for row in result["results"]]
    verdict = "MET" if met and all(met) else "NOT MET"
    lines.append(
        f"  target: dhruva <= {TARGET_S_PER_100K} s per 100k live objects (both storages) "
        f"-> {verdict}"
    )
    lines.append(f"  note: the issue's figures per 100k on a 2-core machine: {reference}")
    lines.append("  note: x dhruva FS is each storage's s/100k over dhruva FileStorage's")
    return "\n".join(lines)


if __name__ == "__main__":
    from pack_bench import bench_pack

    count = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    outcome = bench_pack(count)
    outcome["compare"] = bench_pack_compare(count, strict=True)
    print(format_table(outcome))
    print(json.dumps(outcome["compare"], indent=2), file=sys.stderr)
