"""Commit and read of one large blob: time and peak memory, per back-end (issue 15).

Writes a blob of ``--mib`` MiB (1024 by default) through ``Blob.open("w")``
in 1 MiB chunks, commits it, then reads it back in 1 MiB chunks in a fresh
process.  Each phase runs in a child process of its own, so that its peak
RSS (``VmHWM``, from the interpreter's start) is its own.  The systems, in one run:

* ``file``: dhruva FileStorage (durable), blobs in ``PATH.blobs``;
* ``sqlite``: dhruva SqliteStorage, blobs as chunk rows in the database;
* ``postgres``: dhruva PostgresStorage, chunk rows in ``dhruva_blob_chunk``;
* ``zodb``: ZODB FileStorage with a blob directory (ZODB's own blobs);
* ``relstorage``: RelStorage on the same PostgreSQL, history-free, blobs in
  the database (``shared-blob-dir`` false); its read starts with an empty
  blob cache, so it downloads the blob as dhruva's read does.

PostgreSQL is ``DHRUVA_TEST_POSTGRES`` when set, else a throwaway cluster
started and stopped by pid by ``dhruva_conformance.postgres_backend``.  A
system that is not installed, or PostgreSQL when it cannot be started, gets
a row saying so.  Run directly::

    python tools/bench/blob_bench.py [--mib N] [--dir PATH] [--systems file,sqlite,...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import uuid
from typing import Any

SYSTEMS = ("file", "sqlite", "postgres", "zodb", "relstorage")

CHILD = r"""
import json, os, sys, time

def high_water_mib():
    # VmHWM: this process's peak RSS since exec (ru_maxrss keeps the parent's).
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")

system, phase, where, mib = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
chunk = os.urandom(1 << 20)
start_rss = high_water_mib()
started = time.perf_counter()
if system in ("zodb", "relstorage"):
    import transaction, ZODB
    from ZODB.blob import Blob
    if system == "zodb":
        from ZODB.FileStorage import FileStorage
        storage = FileStorage(where, blob_dir=where + ".blobs")
    else:
        from relstorage.adapters.postgresql import PostgreSQLAdapter
        from relstorage.options import Options
        from relstorage.storage import RelStorage
        dsn, cache = where.split("|")
        options = Options(keep_history=False, shared_blob_dir=False, blob_dir=cache + "-" + phase)
        storage = RelStorage(PostgreSQLAdapter(dsn=dsn, options=options), options=options)
    db = ZODB.DB(storage)
    connection = db.open()
    root = connection.root()
    if phase == "write":
        root["blob"] = blob = Blob()
        with blob.open("w") as file:
            for _ in range(mib):
                file.write(chunk)
        transaction.commit()
    else:
        total = 0
        with root["blob"].open("r") as file:
            while data := file.read(1 << 20):
                total += len(data)
        assert total == mib << 20, total
    connection.close()
    db.close()
else:
    from dhruva.blob import Blob
    from dhruva.connection import Connection
    if system == "file":
        from dhruva.file_storage import FileStorage
        storage = FileStorage(where)
    elif system == "sqlite":
        from dhruva.sqlite_storage import SqliteStorage
        storage = SqliteStorage(where)
    else:
        from dhruva.postgres_storage import PostgresStorage
        storage = PostgresStorage(where)
    connection = Connection(storage)
    if phase == "write":
        Blob.temp_dir = os.environ["BLOB_BENCH_TMP"]
        connection.root["blob"] = blob = Blob()
        with blob.open("w") as file:
            for _ in range(mib):
                file.write(chunk)
        connection.commit()
    else:
        total = 0
        with connection.root["blob"].open("r") as file:
            while data := file.read(1 << 20):
                total += len(data)
        assert total == mib << 20, total
    connection.close()
elapsed = time.perf_counter() - started
result = {"seconds": elapsed, "peak_rss_mib": high_water_mib(), "start_rss_mib": start_rss}
print(json.dumps(result))
"""


def fresh_database(admin_dsn: str) -> str:
    """Create a database of its own on the PostgreSQL server; return its DSN."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    name = "blob_bench_" + uuid.uuid4().hex[:12]
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    params = conninfo_to_dict(admin_dsn)
    params["dbname"] = name
    return str(make_conninfo("", **params))


def postgres_admin() -> str | None:
    """The DSN of a PostgreSQL server to use, starting a throwaway cluster if needed."""
    try:
        from dhruva_conformance import postgres_backend
    except ImportError:
        return None
    admin = os.environ.get(postgres_backend.ENV_DSN)
    if admin:
        return admin
    if postgres_backend.psycopg_missing_reason() is not None:
        return None
    running = postgres_backend.cluster()
    return None if running is None else str(running.dsn("postgres"))


def run_system(system: str, mib: int, directory: str, admin: str | None) -> dict[str, Any] | str:
    """Write then read the blob on ``system``; the two phases' figures, or why not."""
    if system in ("postgres", "relstorage"):
        if admin is None:
            return "no PostgreSQL server (set DHRUVA_TEST_POSTGRES or install PostgreSQL)"
        where = fresh_database(admin)
        if system == "relstorage":
            where += "|" + os.path.join(directory, "relstorage-blob-cache")
    else:
        where = os.path.join(directory, f"blob-bench-{system}.db")
    environment = dict(os.environ, BLOB_BENCH_TMP=directory)
    results: dict[str, Any] = {}
    for phase in ("write", "read"):
        done = subprocess.run(
            [sys.executable, "-c", CHILD, system, phase, where, str(mib)],
            capture_output=True,
            text=True,
            env=environment,
        )
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["failed"])[-1]
            return f"not run: {last[:120]}"
        results[phase] = json.loads(done.stdout.strip().splitlines()[-1])
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--dir", default=None, help="where the databases go (default: a temp dir)")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated systems")
    args = parser.parse_args()
    systems = [name for name in args.systems.split(",") if name]
    unknown = set(systems) - set(SYSTEMS)
    if unknown:
        parser.error(f"unknown systems {sorted(unknown)}; choose from {', '.join(SYSTEMS)}")
    admin = postgres_admin() if {"postgres", "relstorage"} & set(systems) else None
    table: dict[str, dict[str, Any] | str] = {}
    try:
        for system in systems:
            with tempfile.TemporaryDirectory(dir=args.dir) as directory:
                table[system] = run_system(system, args.mib, directory, admin)
    finally:
        if admin is not None and not os.environ.get("DHRUVA_TEST_POSTGRES"):
            from dhruva_conformance import postgres_backend

            postgres_backend.stop_cluster()
    print(f"\nOne blob of {args.mib} MiB, 1 MiB chunks, each phase a fresh process")
    print(
        f"{'system':<11} {'phase':<16} {'seconds':>8} {'MiB/s':>7} {'peak RSS MiB':>13}"
        f" {'RSS at start':>13}"
    )
    for system, rows in table.items():
        if isinstance(rows, str):
            print(f"{system:<11} {rows}")
            continue
        for phase, row in rows.items():
            rate = args.mib / row["seconds"]
            print(
                f"{system:<11} {('write + commit' if phase == 'write' else 'read'):<16}"
                f" {row['seconds']:>8.2f} {rate:>7.0f} {row['peak_rss_mib']:>13.1f}"
                f" {row['start_rss_mib']:>13.1f}"
            )


if __name__ == "__main__":
    main()
