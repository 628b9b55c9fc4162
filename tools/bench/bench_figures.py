"""The five measurements; each returns a ``Figure`` (a table of rows).

Theory of operation: a ``Bench`` holds the sizes, the directories and the
backends to compare.  Each figure function runs every available backend the
same way, turns what it measured into rows with a ratio against the figure's
reference (a plain object, a bare append+fdatasync loop, or ZODB) and checks
dhruva's row against its target.  A backend that raises gets a row saying so
instead of a number, unless ``strict`` is set (the smoke test sets it so a
broken harness or a broken dhruva fails loudly).

Databases that take long to build (the million-object files of the open-time
figure) are built once into the cache directory under a name that carries the
backend's cache key and the sizes, and a ``.done`` marker written only after a
build finished; anything without its marker is rebuilt.  Everything else is
built fresh in ``<cache>/work`` and deleted afterwards.
"""

from __future__ import annotations

import math
import os
import shutil
import statistics
import sys
import time
import timeit
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from bench_backends import Backend, committed_bytes, remove_database
from bench_models import PlainItem

Cell = float | str | None


@dataclass(frozen=True)
class Sizes:
    """How much work each figure does; FULL, QUICK and TINY below."""

    attr_loops: int  # timeit ``number`` for the attribute-read loop
    attr_repeat: int  # timeit ``repeat``; the best repeat counts
    open_objects: int  # objects in the open-time databases
    open_per_commit: int  # objects per commit while building them
    open_runs: int  # opens timed per database; the median counts
    commit_count: int  # one-object commits timed
    bulk_objects: int  # objects in the bulk-insert and cold-load database
    bulk_per_commit: int
    cold_runs: int  # cold loads timed; the median counts
    serializer_objects: int  # objects per run of serializers.py's comparison
    btree_keys: int  # largest tree btree_bench.py grows


FULL = Sizes(200_000, 5, 1_000_000, 10_000, 7, 1_000, 100_000, 10_000, 3, 20_000, 1_000_000)
QUICK = Sizes(20_000, 3, 100_000, 10_000, 3, 200, 20_000, 10_000, 2, 2_000, 20_000)
TINY = Sizes(50, 1, 300, 100, 1, 5, 300, 100, 1, 50, 200)

#: Attribute reads per pass of the timed loop: unrolled so the loop's own
#: overhead (a FOR_ITER and a jump) is small against what is measured.
READS_PER_PASS = 30
READ_STATEMENT = "o.a; o.b; o.c; " * (READS_PER_PASS // 3)


@dataclass
class Row:
    """One line of a figure: a system and its cells by column key."""

    system: str
    label: str
    cells: dict[str, Cell] = field(default_factory=dict)
    error: str | None = None


@dataclass
class Figure:
    """One figure: its columns, rows, target and whether dhruva met it."""

    key: str
    title: str
    columns: list[tuple[str, str]]  # (cell key, header)
    rows: list[Row]
    target: str
    target_met: bool | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class Bench:
    """Everything the figures share: sizes, places, systems, strictness."""

    sizes: Sizes
    cache_dir: Path
    backends: list[Backend]
    strict: bool = False
    log: Callable[[str], None] = field(default=lambda message: print(message, file=sys.stderr))

    @property
    def work_dir(self) -> Path:
        path = self.cache_dir / "work"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def run(self, row: Row, action: Callable[[], dict[str, Cell]]) -> Row:
        """Fill ``row`` from ``action()``, or record its exception as the row's error."""
        try:
            row.cells.update(action())
        except Exception as error:
            if self.strict:
                raise
            row.error = f"{type(error).__name__}: {error}"
            self.log(f"  {row.system}: {row.error}")
        return row

    def usable(self, names: tuple[str, ...] | None = None) -> list[tuple[Backend, str | None]]:
        """The backends to run (optionally only ``names``) with why each is unusable."""
        chosen = [b for b in self.backends if names is None or b.name in names]
        return [(backend, backend.available()) for backend in chosen]


def _ratio(value: Cell, reference: Cell) -> Cell:
    if isinstance(value, float) and isinstance(reference, float) and reference > 0:
        return value / reference
    return None


def _dhruva_cell(figure_rows: list[Row], key: str) -> Cell:
    for row in figure_rows:
        if row.system == "dhruva" and row.error is None:
            return row.cells.get(key)
    return None


def _skip_row(backend: Backend, reason: str) -> Row:
    return Row(backend.name, backend.label, error=f"not run: {reason}")


#: The systems the figures compare (the bare-loop baseline only runs in figure 3).
SYSTEMS = ("dhruva", "durus", "zodb")


def _system_rows(bench: Bench, cells: Callable[[Bench, Backend], dict[str, Cell]]) -> list[Row]:
    """Run ``cells(bench, backend)`` for each of :data:`SYSTEMS`; a skip row for an unusable one."""
    rows = []
    for backend, reason in bench.usable(SYSTEMS):
        if reason:
            rows.append(_skip_row(backend, reason))
            continue
        rows.append(bench.run(Row(backend.name, backend.label), partial(cells, bench, backend)))
    return rows


# --- 1. attribute read --------------------------------------------------------


def time_reads_ns(obj: Any, sizes: Sizes) -> float:
    """Best time of one attribute read of ``obj``, in nanoseconds.

    timeit compiles ``READ_STATEMENT`` into a function whose ``o`` is a local
    (the setup runs inside that function), so each read is a LOAD_FAST and a
    LOAD_ATTR: exactly the cost of attribute access on the object.
    """
    timer = timeit.Timer(READ_STATEMENT, setup="o = _obj", globals={"_obj": obj})
    best_s = min(timer.repeat(repeat=sizes.attr_repeat, number=sizes.attr_loops))
    return best_s / (sizes.attr_loops * READS_PER_PASS) * 1e9


def _loaded_read_ns(bench: Bench, backend: Backend) -> dict[str, Cell]:
    path = bench.work_dir / f"attr-{backend.name}.db"
    remove_database(backend, path)
    session = backend.open(path)
    session.root["obj"] = backend.new_item(1)
    session.commit()
    session.close()
    # Reopen so the object comes from storage, then unghost it by reading.
    session = backend.open(path)
    try:
        obj = session.root["obj"]
        if obj.a != 1:
            raise AssertionError(f"{backend.name} read back a={obj.a!r}")
        if backend.is_ghost(obj):
            raise AssertionError(f"{backend.name} object is still a ghost after a read")
        read_ns = time_reads_ns(obj, bench.sizes)
        if backend.is_ghost(obj):
            raise AssertionError(f"{backend.name} object became a ghost while timed")
    finally:
        session.close()
        remove_database(backend, path)
    return {"ns": read_ns}


def attribute_read(bench: Bench) -> Figure:
    """Figure 1: ns per attribute read of a loaded persistent object vs a plain one."""
    bench.log("figure 1: attribute read")
    plain = PlainItem(1, "item1", 0.5)
    plain_before_ns = time_reads_ns(plain, bench.sizes)
    rows = _system_rows(bench, _loaded_read_ns)
    # Time the plain object on both sides of the others and keep the best, so
    # a noisy moment cannot flatter the persistent objects.
    plain_ns = min(plain_before_ns, time_reads_ns(plain, bench.sizes))
    reference = Row("plain", "plain object (same attributes)", {"ns": plain_ns})
    rows.insert(0, reference)
    for row in rows:
        row.cells["ratio"] = _ratio(row.cells.get("ns"), plain_ns)
    dhruva_ratio = _dhruva_cell(rows, "ratio")
    return Figure(
        key="attribute_read",
        title="1. Attribute read of a loaded persistent object (ns/read, lower is better)",
        columns=[("ns", "ns/read"), ("ratio", "x plain")],
        rows=rows,
        target="dhruva <= 1.5x plain",
        target_met=None if not isinstance(dhruva_ratio, float) else dhruva_ratio <= 1.5,
        notes=[
            f"{READS_PER_PASS} reads per pass, {bench.sizes.attr_loops} passes, "
            f"best of {bench.sizes.attr_repeat}; object committed, reopened, unghosted"
        ],
    )


# --- building object databases (figures 2, 4, 5) -----------------------------


def build_objects(
    backend: Backend, path: Path, count: int, per_commit: int, cpu_s: list[float] | None = None
) -> float:
    """Write ``count`` Items in Buckets of ``per_commit``, one commit each.

    Returns the seconds from the first Item made to the last commit returned;
    appends the process CPU seconds of the same span to ``cpu_s`` if given.
    The root maps ``b0``, ``b1``, ... to Buckets and ``count`` to how many
    Items were committed so far.
    """
    session = backend.open(path)
    try:
        start_s = time.perf_counter()
        start_cpu_s = time.process_time()
        for bucket_index in range(math.ceil(count / per_commit)):
            first = bucket_index * per_commit
            last = min(first + per_commit, count)
            items = [backend.new_item(number) for number in range(first, last)]
            session.root[f"b{bucket_index}"] = backend.new_bucket(items)
            session.root["count"] = last
            session.commit()
        elapsed_s = time.perf_counter() - start_s
        if cpu_s is not None:
            cpu_s.append(time.process_time() - start_cpu_s)
    finally:
        session.close()
    return elapsed_s


def _copy_database(backend: Backend, source: Path, target: Path) -> None:
    for source_file in backend.db_files(source):
        if source_file.exists():
            suffix = source_file.name[len(source.name) :]
            shutil.copyfile(source_file, target.with_name(target.name + suffix))


def _remove_stale_caches(bench: Bench, backend: Backend, keep: Path) -> None:
    """Delete databases built from older dhruva sources; they are never reused."""
    prefix = backend.stale_cache_prefix()
    if prefix is None:
        return
    suffix = keep.name.rsplit("-", 1)[-1]  # the sizes part, e.g. 1000000x10000
    for folder in bench.cache_dir.glob(f"{prefix}*-{suffix}"):
        if folder != keep and folder.is_dir():
            bench.log(f"  removing stale cache {folder.name}")
            shutil.rmtree(folder)


def cached_database(bench: Bench, backend: Backend, packed: bool) -> tuple[Path, float | None]:
    """Path of the open-time database, building it (and its packed copy) if needed.

    Returns the path and the build time in seconds when built by this call.
    """
    sizes = bench.sizes
    folder = bench.cache_dir / f"{backend.cache_key()}-{sizes.open_objects}x{sizes.open_per_commit}"
    folder.mkdir(parents=True, exist_ok=True)
    unpacked_path = folder / "unpacked.db"
    built_s: float | None = None
    if not (folder / "unpacked.done").exists():
        _remove_stale_caches(bench, backend, folder)
        remove_database(backend, unpacked_path)
        bench.log(f"  building {backend.name} {sizes.open_objects} objects (cached for later runs)")
        built_s = build_objects(backend, unpacked_path, sizes.open_objects, sizes.open_per_commit)
        bench.log(f"  built in {built_s:.1f} s")
        (folder / "unpacked.done").write_text(f"{built_s}\n")
    if not packed:
        return unpacked_path, built_s
    packed_path = folder / "packed.db"
    if not (folder / "packed.done").exists():
        remove_database(backend, packed_path)
        _copy_database(backend, unpacked_path, packed_path)
        bench.log(f"  packing {backend.name}")
        session = backend.open(packed_path)
        try:
            pack_start_s = time.perf_counter()
            session.pack()
            pack_s = time.perf_counter() - pack_start_s
        finally:
            session.close()
        bench.log(f"  packed in {pack_s:.1f} s")
        for leftover in backend.pack_leftovers(packed_path):
            leftover.unlink(missing_ok=True)
        (folder / "packed.done").write_text(f"{pack_s}\n")
    return packed_path, None


# --- 2. open time ------------------------------------------------------------


def time_open_ms(backend: Backend, path: Path, runs: int, expected_count: int) -> float:
    """Median ms to open ``path`` and load its root; the storage is closed between runs."""
    timings_ms = []
    for run in range(runs + 1):
        start_s = time.perf_counter()
        session = backend.open(path)
        count = session.root.get("count")  # loads the root's state
        elapsed_ms = (time.perf_counter() - start_s) * 1e3
        session.close()
        if count != expected_count:
            raise AssertionError(f"{backend.name} root count {count!r} != {expected_count}")
        if run:  # the first open only warms the page cache
            timings_ms.append(elapsed_ms)
    return statistics.median(timings_ms)


def _open_cells(bench: Bench, backend: Backend) -> dict[str, Cell]:
    cells: dict[str, Cell] = {}
    for packed, key in ((False, "unpacked_ms"), (True, "packed_ms")):
        path, built_s = cached_database(bench, backend, packed)
        if built_s is not None:
            cells["build_s"] = built_s
        cells[key] = time_open_ms(backend, path, bench.sizes.open_runs, bench.sizes.open_objects)
        cells[key.replace("_ms", "_mb")] = (
            sum(f.stat().st_size for f in backend.db_files(path) if f.exists()) / 1e6
        )
    return cells


def open_time(bench: Bench) -> Figure:
    """Figure 2: median ms to open a FileStorage of many small objects and load its root."""
    bench.log(f"figure 2: open time ({bench.sizes.open_objects} objects)")
    rows = _system_rows(bench, _open_cells)
    _relative_to_zodb(rows, "unpacked_ms", "unpacked_vs_zodb")
    _relative_to_zodb(rows, "packed_ms", "packed_vs_zodb")
    values = [_dhruva_cell(rows, "unpacked_ms"), _dhruva_cell(rows, "packed_ms")]
    met = None
    if all(isinstance(v, float) for v in values):
        met = all(isinstance(v, float) and v <= 10.0 for v in values)
    sizes = bench.sizes
    return Figure(
        key="open_time",
        title=f"2. Open FileStorage({sizes.open_objects:,} objects) + load root "
        f"(median ms, lower is better)",
        columns=[
            ("unpacked_ms", "unpacked ms"),
            ("unpacked_vs_zodb", "x ZODB"),
            ("packed_ms", "packed ms"),
            ("packed_vs_zodb", "x ZODB"),
            ("unpacked_mb", "file MB"),
            ("packed_mb", "packed MB"),
        ],
        rows=rows,
        target="dhruva <= 10 ms, unpacked and packed",
        target_met=met,
        notes=[
            f"built in {math.ceil(sizes.open_objects / sizes.open_per_commit)} commits of "
            f"{sizes.open_per_commit:,}; median of {sizes.open_runs} opens after one "
            "warm-up (warm page cache); ZODB opens with its saved .index"
        ],
    )


# --- 3. durable commits ------------------------------------------------------


#: Figure 3 alternates the system and the bare loop this many times, so a
#: change in disk or CPU load (other processes, the device's cache) hits both.
COMMIT_ROUNDS = 5


def _bare_appends_s(fd: int, payload: bytes, count: int) -> float:
    """Seconds for ``count`` appends of ``payload``, each followed by fdatasync."""
    start_s = time.perf_counter()
    for _ in range(count):
        os.write(fd, payload)
        os.fdatasync(fd)
    return time.perf_counter() - start_s


def _commits_s(session: Any, obj: Any, first: int, count: int) -> tuple[float, float]:
    """Wall and CPU seconds for ``count`` commits, each setting one attribute of ``obj``.

    The CPU time (this process, user + system) does not include waiting for
    the disk, so it shows the storage's own cost per commit; it is less
    sensitive than the wall-clock rate to what else runs, though a busy
    machine (cache misses, stolen time) still inflates it.
    """
    start_s = time.perf_counter()
    start_cpu_s = time.process_time()
    for number in range(first, first + count):
        obj.a = number
        session.commit()
    return time.perf_counter() - start_s, time.process_time() - start_cpu_s


def _commit_cells(bench: Bench, backend: Backend) -> dict[str, Cell]:
    """Commit rate of ``backend`` and of a bare append loop of the same size.

    The commit size is measured on 20 untimed warm-up commits.  Then, in
    ``COMMIT_ROUNDS`` rounds, the bare loop and the system each do their
    share of the commits, in the same directory, one after the other.
    """
    count = bench.sizes.commit_count
    per_round = max(1, count // COMMIT_ROUNDS)
    path = bench.work_dir / f"commit-{backend.name}.db"
    bare_path = bench.work_dir / f"bare-append-{backend.name}.log"
    remove_database(backend, path)
    session = backend.open(path)
    fd = -1
    try:
        session.root["obj"] = backend.new_item(0)
        session.commit()
        obj = session.root["obj"]
        size_before = committed_bytes(path)
        warm_count = 20
        _commits_s(session, obj, -warm_count, warm_count)  # warm-up, untimed
        commit_bytes = (committed_bytes(path) - size_before) / warm_count
        payload = b"\x5a" * max(1, round(commit_bytes))
        fd = os.open(bare_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
        _bare_appends_s(fd, payload, warm_count)
        system_s = bare_s = cpu_s = 0.0
        for round_index in range(COMMIT_ROUNDS):
            bare_s += _bare_appends_s(fd, payload, per_round)
            wall_s, round_cpu_s = _commits_s(session, obj, round_index * per_round, per_round)
            system_s += wall_s
            cpu_s += round_cpu_s
    finally:
        if fd >= 0:
            os.close(fd)
            bare_path.unlink()
        session.close()
    last = COMMIT_ROUNDS * per_round - 1
    check = backend.open(path)
    try:
        if check.root["obj"].a != last:
            raise AssertionError(f"{backend.name} lost commits: a={check.root['obj'].a}")
    finally:
        check.close()
        remove_database(backend, path)
    total = COMMIT_ROUNDS * per_round
    return {
        "per_s": total / system_s,
        "bare_per_s": total / bare_s,
        "vs_bare": bare_s / system_s,
        "cpu_us": cpu_s / total * 1e6,
        "bytes": commit_bytes,
        "fsync": "yes" if backend.durable else "NO",
    }


def durable_commits(bench: Bench) -> Figure:
    """Figure 3: one-attribute commits/s against a bare append+fdatasync loop."""
    bench.log("figure 3: durable one-object commits")
    count = bench.sizes.commit_count
    rows = []
    for backend, reason in bench.usable():
        if reason:
            if backend.name in SYSTEMS:
                rows.append(_skip_row(backend, reason))
            continue
        rows.append(
            bench.run(Row(backend.name, backend.label), partial(_commit_cells, bench, backend))
        )
    dhruva_ratio = _dhruva_cell(rows, "vs_bare")
    return Figure(
        key="durable_commits",
        title="3. Durable one-object commits (commits/s, higher is better)",
        columns=[
            ("per_s", "commits/s"),
            ("bare_per_s", "bare/s"),
            ("vs_bare", "x bare"),
            ("cpu_us", "CPU us/commit"),
            ("bytes", "bytes/commit"),
            ("fsync", "fsync"),
        ],
        rows=rows,
        target="dhruva >= 0.8x bare append+fdatasync",
        target_met=None if not isinstance(dhruva_ratio, float) else dhruva_ratio >= 0.8,
        notes=[
            f"{count} commits after 20 warm-up, each sets one attribute of one object; "
            f"bare = os.write of the same bytes/commit + os.fdatasync on an O_APPEND file "
            f"in the same directory, alternated with the system in {COMMIT_ROUNDS} rounds",
            "Durus's default FileStorage never fsyncs, so its rate is not durable; "
            "Durus FileStorage2 and ZODB FileStorage fsync each commit",
            "CPU us/commit is this process's CPU time (user + system) per commit, "
            "without the wait for the disk; less sensitive to other load than the rates",
        ],
    )


# --- 4. bulk insert and 5. cold load -----------------------------------------


def _bulk_path(bench: Bench, backend: Backend) -> Path:
    return bench.work_dir / f"bulk-{backend.name}.db"


def _bulk_cells(bench: Bench, backend: Backend) -> dict[str, Cell]:
    sizes = bench.sizes
    path = _bulk_path(bench, backend)
    remove_database(backend, path)
    cpu_s: list[float] = []
    elapsed_s = build_objects(backend, path, sizes.bulk_objects, sizes.bulk_per_commit, cpu_s)
    return {"per_s": sizes.bulk_objects / elapsed_s, "seconds": elapsed_s, "cpu_s": cpu_s[0]}


def _relative_to_zodb(rows: list[Row], key: str, out_key: str) -> None:
    zodb = next((r for r in rows if r.system == "zodb" and r.error is None), None)
    for row in rows:
        row.cells[out_key] = _ratio(row.cells.get(key), zodb.cells.get(key) if zodb else None)


def bulk_insert(bench: Bench) -> Figure:
    """Figure 4: small persistent objects created and committed per second."""
    sizes = bench.sizes
    bench.log(f"figure 4: bulk insert ({sizes.bulk_objects} objects)")
    rows = _system_rows(bench, _bulk_cells)
    _relative_to_zodb(rows, "per_s", "vs_zodb")
    dhruva_ratio = _dhruva_cell(rows, "vs_zodb")
    return Figure(
        key="bulk_insert",
        title=f"4. Bulk insert of {sizes.bulk_objects:,} objects in commits of "
        f"{sizes.bulk_per_commit:,} (objects/s, higher is better)",
        columns=[
            ("per_s", "objects/s"),
            ("vs_zodb", "x ZODB"),
            ("seconds", "seconds"),
            ("cpu_s", "CPU s"),
        ],
        rows=rows,
        target="dhruva >= 3x ZODB",
        target_met=None if not isinstance(dhruva_ratio, float) else dhruva_ratio >= 3.0,
        notes=[
            "each object has 3 attributes (int, short str, float); the timing covers "
            "making the objects and every commit"
        ],
    )


def _cold_cells(bench: Bench, backend: Backend) -> dict[str, Cell]:
    sizes = bench.sizes
    path = _bulk_path(bench, backend)
    if not path.exists():  # figure 4 was not run (or failed) this time
        build_objects(backend, path, sizes.bulk_objects, sizes.bulk_per_commit)
    bucket_count = math.ceil(sizes.bulk_objects / sizes.bulk_per_commit)
    timings_s = []
    cpu_timings_s = []
    try:
        for _ in range(sizes.cold_runs):
            start_s = time.perf_counter()
            start_cpu_s = time.process_time()
            session = backend.open(path)
            touched = 0
            root = session.root
            for bucket_index in range(bucket_count):
                for item in root[f"b{bucket_index}"].items:
                    item.a  # noqa: B018 -- the read is what loads the object
                    touched += 1
            timings_s.append(time.perf_counter() - start_s)
            cpu_timings_s.append(time.process_time() - start_cpu_s)
            cached = session.cache_count()
            session.close()
            if touched != sizes.bulk_objects:
                raise AssertionError(f"{backend.name} touched {touched} objects")
    finally:
        remove_database(backend, path)
    median_s = statistics.median(timings_s)
    return {
        "per_s": sizes.bulk_objects / median_s,
        "seconds": median_s,
        "cpu_s": statistics.median(cpu_timings_s),
        "cached": cached,
    }


def cold_load(bench: Bench) -> Figure:
    """Figure 5: open a database and read one attribute of every object."""
    sizes = bench.sizes
    bench.log(f"figure 5: cold load ({sizes.bulk_objects} objects)")
    rows = _system_rows(bench, _cold_cells)
    _relative_to_zodb(rows, "per_s", "vs_zodb")
    return Figure(
        key="cold_load",
        title=f"5. Cold load: open + touch all {sizes.bulk_objects:,} objects "
        "(objects/s, higher is better)",
        columns=[
            ("per_s", "objects/s"),
            ("vs_zodb", "x ZODB"),
            ("seconds", "seconds"),
            ("cpu_s", "CPU s"),
            ("cached", "objects cached"),
        ],
        rows=rows,
        target="(no target; reported)",
        notes=[
            f"median of {sizes.cold_runs} runs on the database figure 4 wrote; a new "
            "Connection each run (empty object cache), warm OS page cache"
        ],
    )


#: Figure functions by the name ``--only`` accepts, in run order.
FIGURES: dict[str, Callable[[Bench], Figure]] = {
    "attr": attribute_read,
    "open": open_time,
    "commit": durable_commits,
    "bulk": bulk_insert,
    "cold": cold_load,
}
