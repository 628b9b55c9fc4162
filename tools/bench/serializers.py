"""Bulk insert and cold load per serializer, beside pickle (spec: object-encoding.md).

``bench_serializers(n)`` is what the bench harness calls; ``python
tools/bench/serializers.py [N]`` prints the same numbers as a table.

What is measured, per serializer and per object shape:

* bulk insert: ``n`` new objects committed in one transaction (serializing,
  reference bookkeeping and MemoryStorage's store), in objects per second;
* cold load: a fresh Connection (empty cache) on the same storage touches
  every object once, so each is read from its record (decoding and ghost
  creation), in objects per second.  The root, which holds the list of all
  objects, is loaded before the clock starts.

A MemoryStorage keeps file-system noise out, so differences are the
serializers'.  Times are CPU time of this process (``time.process_time``),
which a busy machine disturbs less than wall time; each figure is the best
of ``repeat`` runs, the serializers taking turns within each round.  Shapes:
``typical`` (str, int, float, a list of three strs, one reference) and
``rich`` (the same plus a datetime, a Decimal, a tuple and a set), since
msgspec pays a Python call per value MessagePack lacks.
"""

from __future__ import annotations

import datetime as dt
import decimal
import sys
import time
from pathlib import Path
from typing import Any

from dhruva.connection import Connection
from dhruva.error import SerializationError
from dhruva.persistent import Persistent
from dhruva.storage import MemoryStorage

SERIALIZERS = ("pickle", "pickle-restricted", "msgspec", "dill")


class BenchItem(Persistent):
    """The benchmark's object: a handful of attributes, like a typical model row."""


def _make(shape: str, index: int, previous: BenchItem | None) -> BenchItem:
    item = BenchItem()
    item.name = f"item-{index}"
    item.count = index
    item.price = index * 0.25
    item.tags = ["red", "green", "blue"]
    item.previous = previous
    if shape == "rich":
        item.created = dt.datetime(2024, 1, 1) + dt.timedelta(seconds=index)
        item.amount = decimal.Decimal(index) / 100
        item.point = (index, -index)
        item.flags = {"a", "b"}
    return item


def _reader_options(serializer: str) -> dict[str, Any]:
    if serializer == "pickle-restricted":
        return {"serializer": serializer, "allowed_classes": [BenchItem]}
    return {}


def _run_once(serializer: str, shape: str, n: int) -> tuple[float, float, int]:
    storage = MemoryStorage()
    writer = Connection(storage, serializer=serializer)
    items: list[BenchItem] = []
    previous = None
    for index in range(n):
        previous = _make(shape, index, previous)
        items.append(previous)
    root = writer.get_root()
    start = time.process_time()
    root["items"] = items
    writer.commit()
    insert_s = time.process_time() - start
    size = sum(len(storage.load(item._p_oid).data) for item in items[:100])  # type: ignore[arg-type]
    reader = Connection(storage, **_reader_options(serializer))
    loaded = reader.get_root()["items"]
    start = time.process_time()
    total = 0
    for item in loaded:
        total += item.count
    load_s = time.process_time() - start
    assert total == n * (n - 1) // 2
    return insert_s, load_s, size // min(n, 100)


def bench_serializers(n: int, repeat: int = 3) -> dict[str, Any]:
    """Return bulk insert and cold load rates per serializer and shape.

    The result is ``{"n": n, "storage": "memory", "shapes": {shape:
    {serializer: row}}}`` where a row is ``{"insert_objs_per_s",
    "cold_load_objs_per_s", "insert_vs_pickle", "load_vs_pickle",
    "record_bytes"}`` (ratios > 1 mean faster than pickle), or ``{"skipped":
    reason}`` when the serializer's package is not installed.
    """
    if n < 1:
        raise ValueError("n must be at least 1")
    shapes: dict[str, dict[str, Any]] = {}
    for shape in ("typical", "rich"):
        rows: dict[str, Any] = {}
        runs: dict[str, list[tuple[float, float, int]]] = {}
        for _ in range(repeat):
            for serializer in SERIALIZERS:
                if serializer in rows:
                    continue
                try:
                    runs.setdefault(serializer, []).append(_run_once(serializer, shape, n))
                except SerializationError as exc:
                    rows[serializer] = {"skipped": str(exc)}
        for serializer in SERIALIZERS:
            if serializer in rows:
                continue
            measured = runs[serializer]
            rows[serializer] = {
                "insert_objs_per_s": n / max(min(r[0] for r in measured), 1e-9),
                "cold_load_objs_per_s": n / max(min(r[1] for r in measured), 1e-9),
                "record_bytes": measured[0][2],
            }
        base = rows.get("pickle", {})
        for row in rows.values():
            if "skipped" not in row:
                row["insert_vs_pickle"] = row["insert_objs_per_s"] / base["insert_objs_per_s"]
                row["load_vs_pickle"] = row["cold_load_objs_per_s"] / base["cold_load_objs_per_s"]
        shapes[shape] = rows
    return {"n": n, "storage": "memory", "repeat": repeat, "shapes": shapes}


def format_table(result: dict[str, Any]) -> str:
    """Return ``result`` as a plain-text table."""
    lines = [
        f"serializers: n={result['n']} objects, {result['storage']} storage, best of "
        f"{result['repeat']}"
    ]
    header = f"{'shape':8} {'serializer':18} {'insert/s':>10} {'x pickle':>8} "
    header += f"{'load/s':>10} {'x pickle':>8} {'bytes':>6}"
    lines.append(header)
    for shape, rows in result["shapes"].items():
        for name, row in rows.items():
            if "skipped" in row:
                lines.append(f"{shape:8} {name:18} skipped: {row['skipped']}")
                continue
            lines.append(
                f"{shape:8} {name:18} {row['insert_objs_per_s']:10.0f} "
                f"{row['insert_vs_pickle']:8.2f} {row['cold_load_objs_per_s']:10.0f} "
                f"{row['load_vs_pickle']:8.2f} {row['record_bytes']:6d}"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    # Import this file as a module, so that BenchItem has an import path
    # (dill would otherwise pickle a __main__ class by value).
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import serializers

    count = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    print(serializers.format_table(serializers.bench_serializers(count)))
