"""Section 10 ("everyday"): issue 13's workload, dhruva beside Durus 4.3 and ZODB.

The database: ``root["items"]`` is a persistent mapping of ``chunks``
persistent mappings of ``per_chunk`` Items each (``bench_models``'
``*EverydayItem``: an int, a short str, a float and a list of 3 ints),
pickle serializer, each system's FileStorage.  Four figures:

(c) **bulk insert**: building it, one commit per chunk (``per_chunk`` new
    Items and the chunk), objects/s counting Items;
(a) **cold random load**: a new process opens the file, loads the root and
    every chunk, then reads one attribute of ``touches`` Items picked at
    random without repetition (each a load); us per load;
(b) **memory**: a new process opens the file, loads the chunks, then loads
    every Item; the growth of its resident set (RSS) between the two points,
    MB; a plain-object row (the same Items as plain objects in plain dicts)
    is the floor;
(d) **server**: the file served by the system's own server (dhruva's
    ``dhruva -s``, Durus's ``StorageServer``, ZEO) as a subprocess on
    127.0.0.1, one client in a new process doing (a)'s random cold loads
    through a Connection; loads/s.

Each round also measures the **floor** of each figure, the same work with no
database, in its own process: pread and ``pickle.loads`` of one Item's state
at a known offset (a); plain objects in plain dicts (b); ``pickle.dumps`` of
each state and an append with one fdatasync per chunk (c); a one-process
record server answering an 8-byte number with the state, one round trip per
load (d).  The table prints dhruva's cost as a multiple of the floor's: the
machine's speed moves between moments, that multiple much less.

Theory of operation: every measurement runs in a process of its own
(``python everyday_bench.py --worker SPEC``, printing one JSON object), so
"cold" means an empty object cache and a fresh interpreter, and RSS is not
polluted by earlier work.  The parent interleaves the systems: each of
``rounds`` rounds runs every system's build, cold, memory and server
measurement in turn, so a noisy moment on the shared machine hits all of
them; the table shows the median of the rounds.  A system whose package is
missing gets a row saying so; with ``strict`` any failure propagates.

Run alone (in the bench venv): ``python tools/bench/everyday_bench.py [--quick]``.
"""

from __future__ import annotations

import gc
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

WORKER_TIMEOUT_S = 600.0

#: Issue 13's targets for dhruva's row.
TARGET_COLD_US = 5.0
TARGET_MEMORY_MB = 60.0
TARGET_BULK_PER_S = 150_000.0
TARGET_SERVER_PER_S = 30_000.0


@dataclass(frozen=True)
class EverydaySizes:
    """The database's shape and how much each figure does."""

    chunks: int  # persistent mappings under root["items"]
    per_chunk: int  # Items per chunk (and per build commit)
    touches: int  # random cold loads in (a) and (d)
    rounds: int  # interleaved rounds; the median counts


FULL_SIZES = EverydaySizes(100, 1000, 10_000, 3)
QUICK_SIZES = EverydaySizes(20, 1000, 2_000, 2)
TINY_SIZES = EverydaySizes(3, 20, 20, 1)


# --- the systems (used inside the worker processes) ---------------------------


@dataclass(frozen=True)
class EverydaySystem:
    """How one system is installed, served and named in the table."""

    name: str
    label: str
    module: str  # must import for the system to be usable
    class_prefix: str  # of bench_models' classes
    server: str  # server_compare's system name

    def available(self) -> str | None:
        try:
            __import__(self.module)
            import bench_models
        except ImportError as error:
            return f"not installed ({error})"
        if getattr(bench_models, self.class_prefix + "EverydayItem", None) is None:
            return f"bench_models has no {self.class_prefix}EverydayItem"
        return None


SYSTEMS = [
    EverydaySystem("dhruva", "dhruva FileStorage", "dhruva.connection", "Dhruva", "dhruva"),
    EverydaySystem("durus", "Durus 4.3 FileStorage", "durus.connection", "Durus", "durus"),
    EverydaySystem("zodb", "ZODB FileStorage (ZEO)", "ZODB", "Zodb", "zeo"),
]


class _Session:
    """An open database in a worker: its root, commit and close."""

    def __init__(self, root: Any, commit: Callable[[], None], close: Callable[[], None]) -> None:
        self.root = root
        self.commit = commit
        self.close = close


def _open(system: str, path: str | None, port: int | None) -> _Session:
    """Open ``path`` (a file) or the server on ``port`` the way a user of ``system`` does."""
    if system == "dhruva":
        from dhruva.connection import Connection

        if port is None:
            from dhruva.file_storage import FileStorage

            storage: Any = FileStorage(path)
        else:
            from dhruva.client_storage import ClientStorage

            storage = ClientStorage(("127.0.0.1", port))
        connection = Connection(storage)
        return _Session(connection.get_root(), connection.commit, storage.close)
    if system == "durus":
        import logging

        from durus.connection import Connection as DurusConnection

        logging.getLogger("durus").setLevel(logging.WARNING)
        if port is None:
            from durus.file_storage import FileStorage as DurusFileStorage

            storage = DurusFileStorage(path)
        else:
            from durus.client_storage import ClientStorage as DurusClientStorage

            storage = DurusClientStorage(host="127.0.0.1", port=port)
        connection = DurusConnection(storage)
        return _Session(connection.get_root(), connection.commit, storage.close)
    import transaction
    import ZODB

    if port is None:
        from ZODB.FileStorage import FileStorage as ZodbFileStorage

        storage = ZodbFileStorage(path)
    else:
        from ZEO.ClientStorage import ClientStorage as ZeoClientStorage

        storage = ZeoClientStorage(("127.0.0.1", port), wait_timeout=60)
    db = ZODB.DB(storage)
    manager = transaction.TransactionManager()
    connection = db.open(transaction_manager=manager)

    def close() -> None:
        manager.abort()
        connection.close()
        db.close()

    return _Session(connection.root(), manager.commit, close)


def _classes(system: str) -> tuple[type, type]:
    """(Item class, chunk mapping class) of ``system``."""
    import bench_models

    prefix = {"dhruva": "Dhruva", "durus": "Durus", "zodb": "Zodb"}[system]
    item = getattr(bench_models, prefix + "EverydayItem")
    if system == "dhruva":
        from dhruva.persistent_dict import PersistentDict

        return item, PersistentDict
    if system == "durus":
        from durus.persistent_dict import PersistentDict as DurusDict

        return item, DurusDict
    from persistent.mapping import PersistentMapping

    return item, PersistentMapping


def _new_item(item_class: type, number: int) -> Any:
    return item_class(number, f"item{number}", number * 0.5, [number, number + 1, number + 2])


def _build(spec: dict[str, Any]) -> dict[str, Any]:
    item_class, mapping_class = _classes(spec["system"])
    chunks, per_chunk = spec["chunks"], spec["per_chunk"]
    session = _open(spec["system"], spec["path"], None)
    try:
        session.root["items"] = mapping_class()
        session.commit()
        items = session.root["items"]
        start_s = time.perf_counter()
        start_cpu_s = time.process_time()
        for chunk_index in range(chunks):
            first = chunk_index * per_chunk
            chunk = mapping_class()
            for key in range(per_chunk):
                chunk[key] = _new_item(item_class, first + key)
            items[chunk_index] = chunk
            session.commit()
        elapsed_s = time.perf_counter() - start_s
        cpu_s = time.process_time() - start_cpu_s
    finally:
        session.close()
    # The CPU rate leaves out the waits for fdatasync: steadier on a busy machine.
    return {
        "bulk_per_s": chunks * per_chunk / elapsed_s,
        "bulk_cpu_per_s": chunks * per_chunk / cpu_s,
    }


def _load_chunks(session: _Session, chunks: int) -> list[Any]:
    """Every chunk mapping, loaded (its Items stay ghosts)."""
    items = session.root["items"]
    loaded = [items[index] for index in range(chunks)]
    for chunk in loaded:
        len(chunk.keys())  # reads the chunk's state
    return loaded


def _random_ghosts(spec: dict[str, Any], loaded: list[Any]) -> list[tuple[int, Any]]:
    """``touches`` distinct Items picked at random (seeded), with their numbers."""
    per_chunk = spec["per_chunk"]
    picks = random.Random(13).sample(range(spec["chunks"] * per_chunk), spec["touches"])
    return [(n, loaded[n // per_chunk][n % per_chunk]) for n in picks]


def _timed_touches(picked: list[tuple[int, Any]]) -> float:
    """Seconds to read ``a`` of every picked Item; checks what was read."""
    start_s = time.perf_counter()
    for _number, item in picked:
        item.a  # noqa: B018 -- the read is what loads the Item
    elapsed_s = time.perf_counter() - start_s
    for number, item in picked:
        if item.a != number:
            raise AssertionError(f"item {number} read back a={item.a!r}")
    return elapsed_s


def _timed_touches_cpu(picked: list[tuple[int, Any]]) -> tuple[float, float]:
    """Wall and CPU seconds of :func:`_timed_touches` (CPU is steadier on a busy machine)."""
    start_cpu_s = time.process_time()
    elapsed_s = _timed_touches(picked)
    return elapsed_s, time.process_time() - start_cpu_s


def _cold(spec: dict[str, Any]) -> dict[str, Any]:
    session = _open(spec["system"], spec.get("path"), spec.get("port"))
    try:
        picked = _random_ghosts(spec, _load_chunks(session, spec["chunks"]))
        gc.collect()
        elapsed_s, cpu_s = _timed_touches_cpu(picked)
    finally:
        session.close()
    return {
        "us_per_load": elapsed_s / len(picked) * 1e6,
        "cpu_us_per_load": cpu_s / len(picked) * 1e6,
        "loads_per_s": len(picked) / elapsed_s,
    }


def rss_bytes() -> int:
    """This process's resident set size now (Linux /proc; else the peak from getrusage)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource

        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak_kb * (1 if sys.platform == "darwin" else 1024))


def _memory(spec: dict[str, Any]) -> dict[str, Any]:
    session = _open(spec["system"], spec["path"], None)
    try:
        loaded = _load_chunks(session, spec["chunks"])
        gc.collect()
        before = rss_bytes()
        touched = 0
        for chunk in loaded:
            for item in chunk.values():
                item.a  # noqa: B018 -- loads the Item
                touched += 1
        gc.collect()
        after = rss_bytes()
    finally:
        session.close()
    if touched != spec["chunks"] * spec["per_chunk"]:
        raise AssertionError(f"touched {touched} Items")
    return {"memory_mb": (after - before) / 1e6}


def _plain_memory(spec: dict[str, Any]) -> dict[str, Any]:
    """The floor of (b): the same Items as plain objects in plain dicts."""
    import bench_models

    class PlainEverydayItem(bench_models.PlainItem):
        def __init__(self, a: int, b: str, c: float, d: list[int]) -> None:
            super().__init__(a, b, c)
            self.d = d

    gc.collect()
    before = rss_bytes()
    chunks = []
    for chunk_index in range(spec["chunks"]):
        first = chunk_index * spec["per_chunk"]
        chunks.append(
            {key: _new_item(PlainEverydayItem, first + key) for key in range(spec["per_chunk"])}
        )
    gc.collect()
    after = rss_bytes()
    if sum(map(len, chunks)) != spec["chunks"] * spec["per_chunk"]:
        raise AssertionError("plain chunks are short")
    return {"memory_mb": (after - before) / 1e6}


# --- the floors: the same work with no database ------------------------------------
#
# What this machine does, in the same run, for each figure without any object
# database: the rows the systems are read against (issue 13's "floor" column;
# on a shared machine the speed moves by a factor of two between moments, the
# ratio to the floor much less).


def _item_states(spec: dict[str, Any]) -> list[bytes]:
    """Every Item's state (its attribute dict), pickled as the systems pickle it."""
    import pickle

    return [
        pickle.dumps(
            {"a": n, "b": f"item{n}", "c": n * 0.5, "d": [n, n + 1, n + 2]},
            pickle.HIGHEST_PROTOCOL,
        )
        for n in range(spec["chunks"] * spec["per_chunk"])
    ]


def _floor_file(spec: dict[str, Any], states: list[bytes]) -> tuple[str, list[tuple[int, int]]]:
    """Append every state to a new file, one fdatasync per chunk; (path, [(offset, length)])."""
    sync = getattr(os, "fdatasync", os.fsync)
    path = os.path.join(spec["directory"], "floor.records")
    places: list[tuple[int, int]] = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
    try:
        offset = 0
        per_chunk = spec["per_chunk"]
        for start in range(0, len(states), per_chunk):
            chunk = states[start : start + per_chunk]
            for state in chunk:
                places.append((offset, len(state)))
                offset += len(state)
            os.write(fd, b"".join(chunk))
            sync(fd)
    finally:
        os.close(fd)
    return path, places


def _floor_bulk(spec: dict[str, Any]) -> dict[str, Any]:
    """(c)'s floor: pickle each new Item's state and append the chunk, fdatasync per chunk."""
    import pickle

    start_s = time.perf_counter()
    states = [
        pickle.dumps(
            {"a": n, "b": f"item{n}", "c": n * 0.5, "d": [n, n + 1, n + 2]},
            pickle.HIGHEST_PROTOCOL,
        )
        for n in range(spec["chunks"] * spec["per_chunk"])
    ]
    _floor_file(spec, states)
    return {"bulk_per_s": len(states) / (time.perf_counter() - start_s)}


def _floor_picks(spec: dict[str, Any]) -> list[int]:
    return random.Random(13).sample(range(spec["chunks"] * spec["per_chunk"]), spec["touches"])


def _floor_cold(spec: dict[str, Any]) -> dict[str, Any]:
    """(a)'s floor: pread one state at a known offset and unpickle it, at random."""
    import pickle

    path, places = _floor_file(spec, _item_states(spec))
    picks = _floor_picks(spec)
    fd = os.open(path, os.O_RDONLY)
    try:
        start_s = time.perf_counter()
        for n in picks:
            offset, length = places[n]
            state = pickle.loads(os.pread(fd, length, offset))
        elapsed_s = time.perf_counter() - start_s
    finally:
        os.close(fd)
    if state["a"] != picks[-1]:
        raise AssertionError("the floor read back the wrong state")
    return {"cold_us": elapsed_s / len(picks) * 1e6}


def _floor_server(spec: dict[str, Any]) -> dict[str, Any]:
    """(d)'s floor: a record server process, one round trip per load (8-byte number in,
    4-byte length and the state out, read with pread), the client unpickling each answer
    and polling for it first, as dhruva's client does."""
    import pickle
    import socket
    import struct

    path, places = _floor_file(spec, _item_states(spec))
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    pid = os.fork()
    if pid == 0:  # the server: answer one client until it closes
        try:
            connection, _ = listener.accept()
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            fd = os.open(path, os.O_RDONLY)
            while True:
                request = connection.recv(8)
                if len(request) != 8:
                    break
                offset, length = places[int.from_bytes(request, "big")]
                connection.sendall(struct.pack(">I", length) + os.pread(fd, length, offset))
        finally:
            os._exit(0)
    try:
        client = socket.create_connection(listener.getsockname())
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        picks = _floor_picks(spec)
        dontwait = getattr(socket, "MSG_DONTWAIT", 0)

        def receive() -> bytes:
            # As dhruva's client does: poll for up to 0.5 ms before blocking
            # (a blocked process waits for the scheduler to wake it).
            if dontwait:
                deadline = time.perf_counter() + 0.0005
                while time.perf_counter() < deadline:
                    try:
                        return client.recv(65536, dontwait)
                    except BlockingIOError:
                        pass
            return client.recv(65536)

        start_s = time.perf_counter()
        for n in picks:
            client.sendall(n.to_bytes(8, "big"))
            answer = receive()
            while len(answer) < 4 or len(answer) < 4 + int.from_bytes(answer[:4], "big"):
                answer += receive()
            state = pickle.loads(answer[4:])
        elapsed_s = time.perf_counter() - start_s
        client.close()
    finally:
        listener.close()
        os.waitpid(pid, 0)
    if state["a"] != picks[-1]:
        raise AssertionError("the floor server answered the wrong state")
    return {"server_per_s": len(picks) / elapsed_s}


def _floors(spec: dict[str, Any]) -> dict[str, Any]:
    """Every floor, each in a process of its own as the systems' cells are."""
    found: dict[str, Any] = {}
    for mode in ("floor_bulk", "floor_cold", "floor_server"):
        found.update(_run_worker({**spec, "mode": mode}))
    found.update(_run_worker({**spec, "mode": "plain_memory"}))
    return found


WORKER_MODES: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "floor_bulk": _floor_bulk,
    "floor_cold": _floor_cold,
    "floor_server": _floor_server,
    "build": _build,
    "cold": _cold,
    "memory": _memory,
    "plain_memory": _plain_memory,
}


# --- the parent: interleaved rounds, medians, the table ------------------------


def _run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one measurement in a new interpreter; return its JSON result."""
    completed = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=WORKER_TIMEOUT_S,
        check=False,
    )
    if completed.returncode != 0:
        tail = completed.stderr.strip().splitlines()[-5:]
        raise RuntimeError(f"{spec['mode']} worker failed: {' | '.join(tail)}")
    result: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    return result


def _server_cold(system: EverydaySystem, spec: dict[str, Any], directory: str) -> dict[str, Any]:
    """(d): serve ``spec['path']`` with the system's server; a new client does (a)."""
    import server_compare

    server = next(s for s in server_compare.SYSTEMS if s.name == system.server)
    port = server_compare.free_port()
    with server_compare.running_server(server.server_argv(spec["path"], port), port, directory):
        return _run_worker({**spec, "mode": "cold", "port": port})


def _measure_round(
    system: EverydaySystem, sizes: EverydaySizes, directory: str, with_server: bool
) -> dict[str, float]:
    path = os.path.join(directory, f"everyday-{system.name}.db")
    for leftover in Path(directory).glob(f"everyday-{system.name}.db*"):
        leftover.unlink()
    spec: dict[str, Any] = {"system": system.name, "path": path, **asdict(sizes)}
    cells: dict[str, float] = {}
    cells.update(_run_worker({**spec, "mode": "build"}))
    cells["cold_us"] = _run_worker({**spec, "mode": "cold"})["us_per_load"]
    cells.update(_run_worker({**spec, "mode": "memory"}))
    if with_server:
        cells["server_per_s"] = _server_cold(system, spec, directory)["loads_per_s"]
    return cells


def bench_everyday(
    sizes: EverydaySizes,
    systems: list[str] | None = None,
    strict: bool = False,
    with_server: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Measure every chosen, installed system; JSON-ready rows and dhruva's verdicts.

    ``systems`` names ``dhruva``, ``durus`` and ``zodb`` (default all).  Each
    row holds the medians over ``sizes.rounds`` interleaved rounds of
    ``bulk_per_s``, ``cold_us``, ``memory_mb`` and (with ``with_server``)
    ``server_per_s``, and ``samples``: every round's values.
    """
    chosen = [s for s in SYSTEMS if systems is None or s.name in systems]
    rows: dict[str, dict[str, Any]] = {}
    for system in chosen:
        reason = system.available()
        rows[system.name] = {"system": system.name, "label": system.label, "error": reason}
        rows[system.name]["samples"] = []
    with tempfile.TemporaryDirectory(prefix="bench-everyday-") as directory:
        floor_samples = []
        for round_index in range(sizes.rounds):
            floor_samples.append(_floors({**asdict(sizes), "directory": directory}))
            for system in chosen:
                row = rows[system.name]
                if row["error"] is not None:
                    continue
                if log is not None:
                    log(f"  everyday round {round_index + 1}/{sizes.rounds}: {system.name}")
                try:
                    row["samples"].append(_measure_round(system, sizes, directory, with_server))
                except Exception as error:
                    if strict:
                        raise
                    row["error"] = f"{type(error).__name__}: {error}"
    for row in rows.values():
        samples = row["samples"]
        if row["error"] is None and samples:
            for key in samples[0]:
                row[key] = statistics.median(sample[key] for sample in samples)
    floors = {key: statistics.median(sample[key] for sample in floor_samples) for key in FIGURES}
    return {
        "sizes": asdict(sizes),
        "rows": list(rows.values()),
        "plain_memory_mb": floors["memory_mb"],
        "floors": floors,
        "floor_samples": floor_samples,
        "targets": _verdicts(rows.get("dhruva")),
    }


#: The four figures' keys, as in a row and in ``floors``.
FIGURES = ("cold_us", "memory_mb", "bulk_per_s", "server_per_s")


def cost_over_floor(row: dict[str, Any], floors: dict[str, Any], key: str) -> float:
    """``row``'s cost as a multiple of the floor's: time or MB, or the inverse of a rate."""
    if key.endswith("_per_s"):
        return float(floors[key]) / float(row[key])
    return float(row[key]) / float(floors[key])


def _verdicts(dhruva: dict[str, Any] | None) -> dict[str, bool | None]:
    verdicts: dict[str, bool | None] = {"cold": None, "memory": None, "bulk": None, "server": None}
    if dhruva is None or dhruva["error"] is not None or not dhruva["samples"]:
        return verdicts
    verdicts["cold"] = dhruva["cold_us"] <= TARGET_COLD_US
    verdicts["memory"] = dhruva["memory_mb"] <= TARGET_MEMORY_MB
    verdicts["bulk"] = dhruva["bulk_per_s"] >= TARGET_BULK_PER_S
    if "server_per_s" in dhruva:
        verdicts["server"] = dhruva["server_per_s"] >= TARGET_SERVER_PER_S
    return verdicts


def _cell(row: dict[str, Any], key: str, form: str) -> str:
    value = row.get(key)
    return "-" if value is None else format(value, form)


def format_table(result: dict[str, Any]) -> str:
    """The side-by-side table, the plain floor and dhruva's four verdicts."""
    sizes = result["sizes"]
    header = ["system", "cold us/load", "MB for all", "bulk objects/s", "server loads/s"]
    body: list[list[str]] = []
    errors: list[str] = []
    for row in result["rows"]:
        if row["error"] is not None:
            errors.append(f"  {row['label']}: {row['error']}")
            continue
        body.append(
            [
                row["label"],
                _cell(row, "cold_us", ".2f"),
                _cell(row, "memory_mb", ".1f"),
                _cell(row, "bulk_per_s", ",.0f"),
                _cell(row, "server_per_s", ",.0f"),
            ]
        )
    floors = result["floors"]
    body.append(
        [
            "floor (no database)",
            _cell(floors, "cold_us", ".2f"),
            _cell(floors, "memory_mb", ".1f"),
            _cell(floors, "bulk_per_s", ",.0f"),
            _cell(floors, "server_per_s", ",.0f"),
        ]
    )
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    total = sizes["chunks"] * sizes["per_chunk"]
    lines = [
        f"Everyday paths (issue 13): root['items'] = {sizes['chunks']} chunk dicts of "
        f"{sizes['per_chunk']} Items ({total:,}); {sizes['touches']:,} random cold loads; "
        f"median of {sizes['rounds']} interleaved rounds"
    ]
    for line in [header, ["-" * w for w in widths], *body]:
        cells = [f"{line[0]:<{widths[0]}}"] + [
            f"{cell:>{widths[i + 1]}}" for i, cell in enumerate(line[1:])
        ]
        lines.append("  " + "  ".join(cells))
    lines += errors
    verdict = {True: "MET", False: "NOT MET", None: "not evaluated"}
    targets = result["targets"]
    for key, text in (
        ("cold", f"cold load <= {TARGET_COLD_US:g} us"),
        ("memory", f"all Items <= {TARGET_MEMORY_MB:g} MB"),
        ("bulk", f"bulk insert >= {TARGET_BULK_PER_S:,.0f} objects/s"),
        ("server", f"server cold loads >= {TARGET_SERVER_PER_S:,.0f}/s"),
    ):
        lines.append(f"  target: dhruva {text} -> {verdict[targets[key]]}")
    dhruva = next((row for row in result["rows"] if row["system"] == "dhruva"), None)
    if dhruva is not None and dhruva["error"] is None and dhruva["samples"]:
        ratios = [
            f"{name} {cost_over_floor(dhruva, floors, key):.2f}x"
            for name, key in zip(("cold", "memory", "bulk", "server"), FIGURES, strict=True)
            if key in dhruva and floors.get(key)
        ]
        lines.append("  dhruva's cost / the floor's (time, MB, 1/rate): " + ", ".join(ratios))
    lines.append(
        "  note: floor = the same work without a database, in this run: pread + "
        "pickle.loads of a state (cold), plain objects in dicts (MB), pickle.dumps + "
        "append with one fdatasync per chunk (bulk), a one-process record server with "
        "one round trip per load, its client polling for the answer as dhruva's does (server)"
    )
    lines.append(
        "  note: each cell is a new process; cold = chunks loaded, Items ghosts; "
        "MB = RSS growth loading every Item; server = the system's own server "
        "(dhruva -s, Durus StorageServer, ZEO) on 127.0.0.1, one client"
    )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if argv[:1] == ["--worker"]:
        spec = json.loads(argv[1])
        print(json.dumps(WORKER_MODES[spec["mode"]](spec)))
        return 0
    sizes = QUICK_SIZES if "--quick" in argv else FULL_SIZES
    print(format_table(bench_everyday(sizes, log=lambda m: print(m, file=sys.stderr))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
