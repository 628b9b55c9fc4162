"""Conflicts of a read-heavy mixed workload: Durus's model vs snapshots (issue 11).

Four client processes share one storage server (FileStorage, durable).  Each
runs transactions over 2000 items with a cache of 200 objects: 80 %
read-only (sum 50 random items), 20 % writes (read 5 random items, add 1 to
one of them), retrying every conflict.  Three ways of running the same clients:

* ``durus-model``: the client does not ask for snapshots (as a Durus-era
  client): a load of an object another client changed during the
  transaction raises ReadConflictError;
* ``serializable``: snapshot reads, serializable commits (the default);
* ``snapshot``: snapshot reads, snapshot isolation (ZODB's behaviour).

Reported per mode: read conflicts raised by loads, read conflicts raised at
commit, write conflicts, audits (read-only transactions) that failed, and
transactions per second.  Run it directly::

    python tools/bench/mvcc_bench.py [--transactions N] [--clients N]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import tempfile
import threading
import time
from typing import Any

from dhruva.client_storage import ClientStorage
from dhruva.connection import Connection
from dhruva.error import ConflictError, ReadConflictError
from dhruva.file_storage import FileStorage
from dhruva.persistent import Persistent
from dhruva.persistent_list import PersistentList
from dhruva.server.storage_server import StorageServer

ITEMS = 2000
READS_PER_AUDIT = 50
READS_PER_WRITE = 5
WRITE_SHARE = 0.2
#: Small, so that transactions load objects (Durus's read conflicts happen on loads).
CACHE_SIZE = 200
MODES = ("durus-model", "serializable", "snapshot")


class Item(Persistent):
    def __init__(self) -> None:
        self.value = 0


def _client(args: tuple[str, Any, int, int]) -> dict[str, int]:
    mode, address, transactions, seed = args
    storage = ClientStorage(address, snapshots=mode != "durus-model")
    isolation = "snapshot" if mode == "snapshot" else "serializable"
    connection = Connection(storage, cache_size=CACHE_SIZE, isolation=isolation)
    rng = random.Random(seed)
    counts = {"load_read_conflicts": 0, "commit_read_conflicts": 0, "write_conflicts": 0}
    counts["failed_audits"] = 0
    for _ in range(transactions):
        writes = rng.random() < WRITE_SHARE
        while True:
            stage = "load"
            try:
                connection.abort()
                items = connection.root["items"]
                if writes:
                    picked = rng.sample(range(ITEMS), READS_PER_WRITE)
                    _ = sum(items[i].value for i in picked)
                    items[picked[0]].value += 1
                else:
                    _ = sum(items[i].value for i in rng.sample(range(ITEMS), READS_PER_AUDIT))
                stage = "commit"
                connection.commit()
                break
            except ConflictError as conflict:
                if not isinstance(conflict, ReadConflictError):
                    counts["write_conflicts"] += 1
                elif stage == "load":
                    counts["load_read_conflicts"] += 1
                else:
                    counts["commit_read_conflicts"] += 1
                if not writes:
                    counts["failed_audits"] += 1
    connection.close()
    return counts


def run_mode(mode: str, transactions: int, clients: int) -> dict[str, Any]:
    """Run the workload once in ``mode``; return the summed counts and the rate."""
    with tempfile.TemporaryDirectory() as directory:
        storage = FileStorage(os.path.join(directory, "mvcc.dhruva"))
        server = StorageServer(storage, ("127.0.0.1", 0))
        thread = threading.Thread(target=server.serve, daemon=True)
        thread.start()
        address = server.address
        setup = Connection(ClientStorage(address))
        setup.root["items"] = PersistentList(Item() for _ in range(ITEMS))
        setup.commit()
        setup.close()
        context = multiprocessing.get_context("spawn")
        started = time.perf_counter()
        with context.Pool(clients) as pool:
            results = pool.map(
                _client, [(mode, address, transactions, 7 + n) for n in range(clients)]
            )
        elapsed = time.perf_counter() - started
        server.stop()
        thread.join()
        storage.close()
    total: dict[str, Any] = {key: sum(r[key] for r in results) for key in results[0]}
    total["mode"] = mode
    total["transactions_per_s"] = round(transactions * clients / elapsed)
    return total


def format_table(rows: list[dict[str, Any]]) -> str:
    header = (
        f"{'mode':<14} {'read conflicts (load)':>22} {'read conflicts (commit)':>24} "
        f"{'write conflicts':>16} {'failed audits':>14} {'tx/s':>7}"
    )
    lines = [header]
    for row in rows:
        lines.append(
            f"{row['mode']:<14} {row['load_read_conflicts']:>22} "
            f"{row['commit_read_conflicts']:>24} {row['write_conflicts']:>16} "
            f"{row['failed_audits']:>14} {row['transactions_per_s']:>7}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transactions", type=int, default=400, help="per client")
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    rows = [run_mode(mode, args.transactions, args.clients) for mode in MODES]
    print(
        f"\nConflicts of a read-heavy mixed workload ({args.clients} clients x "
        f"{args.transactions} transactions, {ITEMS} items, {WRITE_SHARE:.0%} writes)"
    )
    print(format_table(rows))


if __name__ == "__main__":
    main()
