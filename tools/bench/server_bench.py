"""Loads/s and commits/s through the dhruva storage server (loopback TCP).

Call :func:`run_server_bench` (the bench harness in ``run.py`` does); run
this file directly for a quick table::

    python tools/bench/server_bench.py [--objects N] [--commits N]

Figures: one client's cold single-object loads (one round trip each), the
same objects with ``bulk_load`` (one round trip per 2048), one client's cold
single-object loads of a tree (fan-out 8, walked breadth first) with and
without prefetch (wire protocol, "Prefetch"), durable commits of one small
object by one client (FileStorage, fsync per commit), and the same by four
concurrent clients (group commit shares fsyncs).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from typing import Any

from dhruva.client_storage import ClientStorage
from dhruva.file_storage import FileStorage
from dhruva.server.storage_server import StorageServer
from dhruva.storage import Storage


def _serve(storage: Storage) -> tuple[StorageServer, threading.Thread]:
    server = StorageServer(storage, ("127.0.0.1", 0))
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    return server, thread


def _commit_loop(address: Any, count: int, payload: bytes) -> None:
    client = ClientStorage(address)
    oid = client.new_oid()
    for _ in range(count):
        client.begin()
        client.store(oid, payload, b"")
        client.end()
    client.close()


def _tree_loads(address: Any, oids: list[bytes], prefetch: bool) -> float:
    """Loads/s of one new client loading ``oids`` one by one, in order."""
    reader = ClientStorage(address, prefetch=prefetch)
    started = time.perf_counter()
    for oid in oids:
        reader.load(oid)
    elapsed = time.perf_counter() - started
    reader.close()
    return len(oids) / elapsed


def run_server_bench(objects: int = 5000, commits: int = 500, clients: int = 4) -> dict[str, float]:
    """Return rates (per second) measured through a server on loopback TCP.

    Keys: ``cold_loads_per_s``, ``bulk_loads_per_s``,
    ``tree_cold_loads_per_s`` and ``tree_cold_loads_no_prefetch_per_s``
    (``objects`` records in a tree of fan-out 8, loaded one by one breadth
    first), ``durable_commits_per_s``
    (one client), ``durable_commits_per_s_<clients>_clients`` (all clients
    together).  Uses a FileStorage in a temporary directory, removed after.
    """
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="dhruva-bench-") as directory:
        storage = FileStorage(os.path.join(directory, "bench.dhruva"))
        server, thread = _serve(storage)
        try:
            address = server.address
            writer = ClientStorage(address, oid_batch_size=1024)
            oids = [writer.new_oid() for _ in range(objects)]
            writer.begin()
            for oid in oids:
                writer.store(oid, b"x" * 100, b"")
            writer.end()
            writer.close()

            reader = ClientStorage(address)
            started = time.perf_counter()
            for oid in oids:
                reader.load(oid)
            results["cold_loads_per_s"] = objects / (time.perf_counter() - started)
            started = time.perf_counter()
            count = sum(1 for _ in reader.bulk_load(oids))
            results["bulk_loads_per_s"] = count / (time.perf_counter() - started)
            reader.close()

            # A tree: record i references records 8i+1 .. 8i+8, so that a
            # breadth-first walk is the order of the oids.
            writer = ClientStorage(address, oid_batch_size=1024)
            tree = [writer.new_oid() for _ in range(objects)]
            writer.begin()
            for index, oid in enumerate(tree):
                writer.store(oid, b"t" * 100, b"".join(tree[8 * index + 1 : 8 * index + 9]))
            writer.end()
            writer.close()
            results["tree_cold_loads_per_s"] = _tree_loads(address, tree, prefetch=True)
            results["tree_cold_loads_no_prefetch_per_s"] = _tree_loads(
                address, tree, prefetch=False
            )

            started = time.perf_counter()
            _commit_loop(address, commits, b"y" * 100)
            results["durable_commits_per_s"] = commits / (time.perf_counter() - started)

            threads = [
                threading.Thread(target=_commit_loop, args=(address, commits, b"z" * 100))
                for _ in range(clients)
            ]
            started = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            elapsed = time.perf_counter() - started
            results[f"durable_commits_per_s_{clients}_clients"] = clients * commits / elapsed
        finally:
            server.stop()
            thread.join()
            storage.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=5000)
    parser.add_argument("--commits", type=int, default=500)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    for name, value in run_server_bench(args.objects, args.commits, args.clients).items():
        print(f"{name:40s} {value:12,.0f}")


if __name__ == "__main__":
    main()
