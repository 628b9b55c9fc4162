"""A transaction-package commit against a plain ``connection.commit()`` (issue 15).

One object changed per commit, on MemoryStorage (what the manager's rounds
cost by themselves) and on a durable FileStorage (what they cost next to a
commit's fsync).  The two ways alternate in rounds and the best round of
each counts.  Run it directly::

    python tools/bench/transaction_bench.py [--commits N] [--rounds N]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable

from dhruva.connection import Connection
from dhruva.datamanager import join, leave
from dhruva.file_storage import FileStorage
from dhruva.persistent import Persistent
from dhruva.storage import MemoryStorage, Storage


class Item(Persistent):
    def __init__(self) -> None:
        self.value = 0


def _us_per_commit(connection: Connection, commit: Callable[[], None], count: int) -> float:
    item = connection.root["item"]
    started = time.perf_counter()
    for n in range(count):
        item.value = n
        commit()
    return (time.perf_counter() - started) / count * 1e6


def compare(make_storage: Callable[[], Storage], commits: int, rounds: int) -> tuple[float, float]:
    """Return the best us/commit of connection.commit() and of transaction.commit()."""
    import transaction

    connection = Connection(make_storage())
    connection.root["item"] = Item()
    connection.commit()
    manager = transaction.TransactionManager()
    plain: list[float] = []
    managed: list[float] = []
    for _ in range(rounds):
        plain.append(_us_per_commit(connection, connection.commit, commits))
        data_manager = join(connection, manager)
        manager.begin()
        managed.append(_us_per_commit(connection, manager.commit, commits))
        leave(data_manager)
    connection.close()
    return min(plain), min(managed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commits", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "bench.dhruva")
        rows = [
            ("MemoryStorage", compare(MemoryStorage, args.commits * 4, args.rounds)),
            (
                "FileStorage (durable)",
                compare(lambda: FileStorage(path), args.commits, args.rounds),
            ),
        ]
    print("\nTransaction-package commit vs connection.commit() (us per one-object commit)")
    print(
        f"{'storage':<24} {'connection.commit()':>20} {'transaction.commit()':>21} {'overhead':>9}"
    )
    for name, (plain, managed) in rows:
        print(f"{name:<24} {plain:>20.1f} {managed:>21.1f} {managed / plain - 1:>+9.1%}")


if __name__ == "__main__":
    main()
