"""Commit and read of one large blob: time and peak memory (issue 15).

Writes a blob of ``--mib`` MiB (1024 by default) through ``Blob.open("w")``
in 1 MiB chunks, commits it to a durable FileStorage, then reads it back in
1 MiB chunks in a fresh connection.  Each phase runs in a child process of
its own, so that its peak RSS (``ru_maxrss``) is its own.  Run it directly::

    python tools/bench/blob_bench.py [--mib N] [--dir PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

CHILD = r"""
import json, os, resource, sys, time
from dhruva.blob import Blob
from dhruva.connection import Connection
from dhruva.file_storage import FileStorage

phase, path, mib = sys.argv[1], sys.argv[2], int(sys.argv[3])
chunk = os.urandom(1 << 20)
start_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.perf_counter()
connection = Connection(FileStorage(path))
if phase == "write":
    Blob.temp_dir = os.path.dirname(path)
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
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
result = {"seconds": elapsed, "peak_rss_mib": peak / 1024, "start_rss_mib": start_rss / 1024}
print(json.dumps(result))
"""


def run(mib: int, directory: str) -> dict[str, dict[str, float]]:
    path = os.path.join(directory, "blob-bench.dhruva")
    results = {}
    for phase in ("write", "read"):
        out = subprocess.run(
            [sys.executable, "-c", CHILD, phase, path, str(mib)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        results[phase] = json.loads(out)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--dir", default=None, help="where the database goes (default: a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as directory:
        results = run(args.mib, directory)
    print(f"\nOne blob of {args.mib} MiB, FileStorage (durable), 1 MiB chunks")
    print(f"{'phase':<28} {'seconds':>8} {'MiB/s':>8} {'peak RSS MiB':>13} {'RSS at start':>13}")
    names = {"write": "write + commit", "read": "read (fresh connection)"}
    for phase, row in results.items():
        rate = args.mib / row["seconds"]
        print(
            f"{names[phase]:<28} {row['seconds']:>8.2f} {rate:>8.0f} "
            f"{row['peak_rss_mib']:>13.1f} {row['start_rss_mib']:>13.1f}"
        )


if __name__ == "__main__":
    main()
