"""Instructions per operation of issue 13's bulk insert and cold load, counted by callgrind.

A count, not a time: it does not move with the machine's load, so a change
to a hot path can be judged on a busy 2-core machine where the timed figures
of ``everyday_bench.py`` move by a fifth between runs.  Each figure is the
difference between two runs of one workload at two sizes, divided by the
difference in operations, so interpreter start-up, imports and the building
of the file cancel out:

* **bulk insert**: ``everyday_bench._build`` of ``small`` and ``large``
  chunks of 1,000 Items (one commit per chunk, the index checkpoints
  included once ``large`` is 35 or more); instructions per Item.
* **cold load**: a new process opens a 100-chunk file, loads the chunks,
  picks 6,000 Items at random (seeded) and reads one attribute of the first
  2,000 or of all 6,000; instructions per load.

The garbage collector is off while the operations run: whether a full
collection falls between the two sizes would move a figure by a fifth (the
timed figures include it).  Needs valgrind on PATH; run it in the
interpreter whose dhruva it counts (``DHRUVA_PURE_PYTHON=1`` for the pure
path; ``--source DIR`` for another checkout's, its C module built in place):
``python tools/bench/instruction_count.py [--bulk SMALL LARGE] [--source DIR]``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

BULK = """
import gc, glob, os, sys
sys.path[:0] = [{here!r}, *{source!r}]
import everyday_bench
for leftover in glob.glob({path!r} + "*"):
    os.unlink(leftover)  # each run builds its file anew
gc.disable()
everyday_bench._build({{"system": "dhruva", "path": {path!r}, "chunks": {n}, "per_chunk": 1000}})
"""

COLD = """
import gc, sys
sys.path[:0] = [{here!r}, *{source!r}]
import everyday_bench
spec = {{"system": "dhruva", "path": {path!r}, "chunks": 100, "per_chunk": 1000, "touches": 6000}}
session = everyday_bench._open("dhruva", {path!r}, None)
picked = everyday_bench._random_ghosts(spec, everyday_bench._load_chunks(session, 100))
gc.disable()
for _number, item in picked[:{n}]:
    item.a
session.close()
"""


def instructions(code: str) -> int:
    """The instructions callgrind counts for ``python -c code`` (hash seed fixed)."""
    with tempfile.TemporaryDirectory(prefix="callgrind-") as directory:
        completed = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={os.path.join(directory, 'out')}",
                sys.executable,
                "-c",
                code,
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONHASHSEED": "0"},
            check=True,
        )
    found = re.search(r"Collected : (\d+)", completed.stderr)
    if found is None:
        raise RuntimeError(f"callgrind printed no count: {completed.stderr[-500:]}")
    return int(found.group(1))


def per_unit(
    template: str, path: str, small: int, large: int, units: int, source: list[str]
) -> float:
    counts = [
        instructions(template.format(here=str(HERE), path=path, n=n, source=source))
        for n in (small, large)
    ]
    return (counts[1] - counts[0]) / ((large - small) * units)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bulk", nargs=2, type=int, default=(5, 35), metavar=("SMALL", "LARGE"))
    parser.add_argument(
        "--source", help="a checkout whose dhruva/ to count (built in place), before the installed"
    )
    options = parser.parse_args()
    source = [os.path.abspath(options.source)] if options.source else []
    sys.path[:0] = source
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not on PATH")
    sys.path.insert(0, str(HERE))
    import everyday_bench

    from dhruva import speedups

    with tempfile.TemporaryDirectory(prefix="instructions-") as directory:
        bulk_path = os.path.join(directory, "bulk.db")
        small, large = options.bulk
        print(f"dhruva.speedups in use: {speedups.ENABLED}")
        per_item = per_unit(BULK, bulk_path, small, large, 1000, source)
        print(f"bulk insert: {per_item:,.0f} instructions/Item")
        cold_path = os.path.join(directory, "cold.db")
        everyday_bench._build(
            {"system": "dhruva", "path": cold_path, "chunks": 100, "per_chunk": 1000}
        )
        per_load = per_unit(COLD, cold_path, 2000, 6000, 1, source)
        print(f"cold load: {per_load:,.0f} instructions/load")


if __name__ == "__main__":
    main()
