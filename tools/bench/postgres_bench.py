"""PostgresStorage against RelStorage on the same PostgreSQL server (spec: postgres-storage.md).

Four figures, both systems in the same run, on the same server, each in a
fresh database of its own:

* ``bulk``: objects/s writing ``BULK`` small objects, 1,000 per commit;
* ``commit``: durable one-object commits/s, one process;
* ``cold``: random loads/s of single objects through a new connection with an
  empty cache (RelStorage's local cache off);
* ``four``: commits/s of four processes committing at once, each to its own
  object (the commit lock is the shared resource).

The server is ``DHRUVA_TEST_POSTGRES`` when set, else a throwaway cluster
started (and stopped by pid) by ``dhruva_conformance.postgres_backend``,
with ``fsync=on``.  RelStorage runs history-free (``keep_history=False``),
its closest configuration to dhruva's.  Run: ``python
tools/bench/postgres_bench.py [--quick]``; ``nox -s bench`` installs
``relstorage==4.3.0`` and ``psycopg2-binary`` and runs it.  A system that is
not installed gets a row saying so.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_models  # noqa: E402
from dhruva_conformance import postgres_backend  # noqa: E402

CHILD = r"""
import sys, time
sys.path.insert(0, sys.argv[4])
import postgres_bench as bench
system, dsn, index, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[5])
session = bench.open_session(system, dsn)
root = session.root()
item = root["c%d" % index]
item.a
print("ready", flush=True)
sys.stdin.readline()
started = time.perf_counter()
for _ in range(count):
    item.a += 1
    session.commit()
print(time.perf_counter() - started, flush=True)
session.close()
"""


class Session:
    """One connection to one system: root(), commit(), get(oid), close()."""

    def __init__(self, system: str, dsn: str) -> None:
        self.system = system
        if system == "dhruva":
            from dhruva.connection import Connection
            from dhruva.postgres_storage import PostgresStorage

            self.connection: Any = Connection(PostgresStorage(dsn), cache_size=100_000)
            self.db: Any = None
        else:
            import ZODB
            from relstorage.adapters.postgresql import PostgreSQLAdapter
            from relstorage.options import Options
            from relstorage.storage import RelStorage

            options = Options(keep_history=False, cache_local_mb=0, driver="psycopg2")
            storage = RelStorage(PostgreSQLAdapter(dsn=dsn, options=options), options=options)
            self.db = ZODB.DB(storage, cache_size=100_000)
            self.connection = self.db.open()

    def root(self) -> Any:
        if self.system == "dhruva":
            return self.connection.get_root()
        return self.connection.root()

    def commit(self) -> None:
        if self.system == "dhruva":
            self.connection.commit()
        else:
            import transaction

            transaction.commit()

    def get(self, oid: bytes) -> Any:
        return self.connection.get(oid)

    def close(self) -> None:
        if self.system == "dhruva":
            self.connection.close()
        else:
            self.connection.close()
            self.db.close()


def open_session(system: str, dsn: str) -> Session:
    return Session(system, dsn)


def classes(system: str) -> tuple[Any, Any]:
    prefix = "Dhruva" if system == "dhruva" else "Zodb"
    return getattr(bench_models, prefix + "Item"), getattr(bench_models, prefix + "Bucket")


def fresh_database(admin_dsn: str, name: str) -> str:
    import psycopg

    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = conninfo_to_dict(admin_dsn)
    params["dbname"] = name
    return str(make_conninfo("", **params))


def run_system(system: str, dsn: str, sizes: dict[str, int]) -> dict[str, float]:
    item_class, bucket_class = classes(system)
    results: dict[str, float] = {}
    session = open_session(system, dsn)
    root = session.root()
    if system == "dhruva":
        session.commit()
    # bulk
    oids: list[bytes] = []
    started = time.perf_counter()
    for start in range(0, sizes["bulk"], 1000):
        items = [item_class(n, "item", n * 0.5) for n in range(start, start + 1000)]
        root[f"b{start}"] = bucket_class(items)
        session.commit()
        oids.extend(item._p_oid for item in items)
    results["bulk objects/s"] = sizes["bulk"] / (time.perf_counter() - started)
    # one-object commits
    for index in range(4):
        root[f"c{index}"] = item_class(0, "counter", 0.0)
    session.commit()
    counter = root["c0"]
    started = time.perf_counter()
    for _ in range(sizes["commits"]):
        counter.a += 1
        session.commit()
    results["one-object commits/s"] = sizes["commits"] / (time.perf_counter() - started)
    session.close()
    # cold random loads
    chosen = random.Random(7).sample(oids, sizes["cold"])
    session = open_session(system, dsn)
    started = time.perf_counter()
    for oid in chosen:
        session.get(oid).a  # noqa: B018 - the access loads the state
    results["cold loads/s"] = sizes["cold"] / (time.perf_counter() - started)
    session.close()
    # four processes
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, system, dsn, str(i), str(HERE), str(sizes["four"])],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(4)
    ]
    for child in children:
        assert child.stdout is not None
        line = child.stdout.readline().strip()
        if line != "ready":
            raise RuntimeError(f"a {system} child failed to start")
    for child in children:
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
    elapsed = [float(child.communicate()[0].split()[-1]) for child in children]
    results["four processes commits/s"] = 4 * sizes["four"] / max(elapsed)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    parser.add_argument("--json", default=str(HERE / "postgres_results.json"))
    args = parser.parse_args()
    sizes = {"bulk": 20_000, "commits": 500, "cold": 2_000, "four": 150}
    if args.quick:
        sizes = {"bulk": 2_000, "commits": 50, "cold": 200, "four": 20}
    admin = os.environ.get(postgres_backend.ENV_DSN)
    if not admin:
        running = postgres_backend.cluster()
        assert running is not None
        admin = running.dsn("postgres")
    table: dict[str, dict[str, float] | str] = {}
    for system in ("dhruva", "relstorage"):
        try:
            dsn = fresh_database(admin, f"bench_{system}")
            table[system] = run_system(system, dsn, sizes)
        except ImportError as exc:
            table[system] = f"not installed ({exc.name})"
    postgres_backend.stop_cluster()
    figures = ["bulk objects/s", "one-object commits/s", "cold loads/s", "four processes commits/s"]
    print(f"{'figure':28} {'dhruva':>12} {'RelStorage':>12} {'ratio':>7}")
    for figure in figures:
        ours, theirs = table["dhruva"], table["relstorage"]
        a = ours[figure] if isinstance(ours, dict) else float("nan")
        b = theirs[figure] if isinstance(theirs, dict) else float("nan")
        print(f"{figure:28} {a:12.0f} {b:12.0f} {a / b if b else float('nan'):7.2f}")
    for system, value in table.items():
        if isinstance(value, str):
            print(f"{system}: {value}")
    Path(args.json).write_text(json.dumps({"sizes": sizes, "results": table}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
