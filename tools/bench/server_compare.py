"""Section 9: dhruva's storage server side by side with Durus 4.3's and ZEO.

Theory of operation: each system's server runs as its own subprocess on a
free port of 127.0.0.1 with a FileStorage in a temporary directory (the way a
user starts it: ``dhruva -s --file``, Durus's ``StorageServer`` as ``durus
-s`` builds it, ZEO's ``runzeo``), and is stopped by its pid afterwards
(SIGTERM, then SIGKILL if it does not exit).  The benchmark process is only
ever a client, so every system pays the same loopback round trips and none
shares the GIL with its server.

One run, the same for every system (``objects`` records of 100 opaque bytes,
no references):

1. a writer stores every object in one commit (not timed);
2. a new client loads every object once, one request per object: **cold
   loads/s** (the server has the file in its page cache, the client has
   nothing);
3. another new client loads them all again with the system's batched load
   (``bulk_load``; ZEO has none that returns data, so that cell is empty);
4. one client makes ``commits`` commits of one object each: **commits/s**;
5. ``clients`` clients (threads of this process) do the same at once: total
   commits/s.

Durus's FileStorage writes and flushes a commit but never fsyncs it, so its
commit rates are not durable; dhruva's FileStorage and ZEO's FileStorage
fsync every commit.  The targets (issue 3, Speed): one client's cold loads
through dhruva's server at least 3x Durus's single-object load rate (batching
is allowed, so dhruva's best of its two load cells counts), and dhruva's
durable commits/s at least Durus's non-durable rate.

Run alone (in the bench venv): ``python tools/bench/server_compare.py [N]``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

PAYLOAD_BYTES = 100
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0

#: Durus's ``durus -s`` without its option parsing: a FileStorage served on
#: the host and port given.  The gcbytes default (0) means no automatic pack.
DURUS_SERVER = """
import sys
from durus.file_storage import FileStorage
from durus.storage_server import StorageServer
StorageServer(FileStorage(sys.argv[1]), host="127.0.0.1", port=int(sys.argv[2])).serve()
"""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def _wait_for_port(port: int, process: subprocess.Popen[bytes], log_path: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            with open(log_path, errors="replace") as log:
                tail = log.read()[-2000:]
            raise RuntimeError(f"server exited with status {process.returncode}: {tail.strip()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1.0):
            return
        time.sleep(0.05)
    raise RuntimeError(f"server did not listen on 127.0.0.1:{port} in {START_TIMEOUT_S:.0f} s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Stop the server we started, by its pid: SIGTERM, then SIGKILL."""
    if process.poll() is not None:
        return
    os.kill(process.pid, signal.SIGTERM)
    try:
        process.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()


@contextlib.contextmanager
def running_server(argv: list[str], port: int, directory: str) -> Iterator[None]:
    """Start ``argv`` as a subprocess, wait until ``port`` accepts, stop it after."""
    log_path = os.path.join(directory, "server.log")
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=directory
        )
    try:
        _wait_for_port(port, process, log_path)
        yield
    finally:
        _stop(process)


@dataclass
class ServerSystem:
    """One system's server command and client operations.

    ``store_all(client, oids)`` commits every oid in one transaction;
    ``commit_one(client, state)`` commits one object, keeping what it needs
    (its oid, ZEO's serial) in the ``state`` dict.
    """

    name: str
    label: str
    module: str  # what must import for the system to be usable
    durable: bool
    server_argv: Callable[[str, int], list[str]]
    connect: Callable[[int], Any]
    new_oids: Callable[[Any, int], list[bytes]]
    store_all: Callable[[Any, list[bytes]], None]
    load: Callable[[Any, bytes], Any]
    bulk_load: Callable[[Any, list[bytes]], int] | None
    commit_one: Callable[[Any, dict[str, Any]], None]
    close: Callable[[Any], None]
    distribution: str = ""
    notes: list[str] = field(default_factory=list)

    def available(self) -> str | None:
        try:
            __import__(self.module)
        except ImportError as error:
            return f"not installed ({error})"
        return None

    def version(self) -> str:
        try:
            return metadata.version(self.distribution or self.module)
        except metadata.PackageNotFoundError:
            return "?"


PAYLOAD = b"x" * PAYLOAD_BYTES


# dhruva ---------------------------------------------------------------------


def _dhruva_connect(port: int) -> Any:
    from dhruva.client_storage import ClientStorage

    return ClientStorage(("127.0.0.1", port), oid_batch_size=1024)


def _dhruva_store_all(client: Any, oids: list[bytes]) -> None:
    client.begin()
    for oid in oids:
        client.store(oid, PAYLOAD, b"")
    client.end()


def _dhruva_commit_one(client: Any, state: dict[str, Any]) -> None:
    if "oid" not in state:
        state["oid"] = client.new_oid()
    client.begin()
    client.store(state["oid"], PAYLOAD, b"")
    client.end()


DHRUVA = ServerSystem(
    name="dhruva",
    label="dhruva server, FileStorage",
    module="dhruva.server.storage_server",
    distribution="dhruva",
    durable=True,
    server_argv=lambda path, port: [
        sys.executable,
        "-m",
        "dhruva",
        "-s",
        "--file",
        path,
        "--port",
        str(port),
        "--loglevel",
        "WARNING",
    ],
    connect=_dhruva_connect,
    new_oids=lambda client, count: [client.new_oid() for _ in range(count)],
    store_all=_dhruva_store_all,
    load=lambda client, oid: client.load(oid),
    bulk_load=lambda client, oids: sum(1 for _ in client.bulk_load(oids)),
    commit_one=_dhruva_commit_one,
    close=lambda client: client.close(),
)


# Durus 4.3 ------------------------------------------------------------------


def _durus_connect(port: int) -> Any:
    from durus.client_storage import ClientStorage

    return ClientStorage(host="127.0.0.1", port=port)


def _durus_no_invalidations(oids: list[bytes]) -> None:
    """Durus calls this with other clients' changes; the bench has no cache to drop."""


def _durus_store_all(client: Any, oids: list[bytes]) -> None:
    from durus.serialize import pack_record

    client.begin()
    for oid in oids:
        client.store(oid, pack_record(oid, PAYLOAD, b""))
    client.end(_durus_no_invalidations)


def _durus_commit_one(client: Any, state: dict[str, Any]) -> None:
    from durus.serialize import pack_record

    if "oid" not in state:
        state["oid"] = client.new_oid()
    client.begin()
    client.store(state["oid"], pack_record(state["oid"], PAYLOAD, b""))
    client.end(_durus_no_invalidations)


DURUS = ServerSystem(
    name="durus",
    label="Durus 4.3 server, FileStorage",
    module="durus.storage_server",
    distribution="durus",
    durable=False,
    server_argv=lambda path, port: [sys.executable, "-c", DURUS_SERVER, path, str(port)],
    connect=_durus_connect,
    new_oids=lambda client, count: [client.new_oid() for _ in range(count)],
    store_all=_durus_store_all,
    load=lambda client, oid: client.load(oid),
    bulk_load=lambda client, oids: sum(1 for _ in client.bulk_load(oids)),
    commit_one=_durus_commit_one,
    close=lambda client: client.close(),
)


# ZEO ------------------------------------------------------------------------


def _zeo_connect(port: int) -> Any:
    from ZEO.ClientStorage import ClientStorage

    return ClientStorage(("127.0.0.1", port), wait_timeout=START_TIMEOUT_S)


def _zeo_commit(client: Any, writes: list[tuple[bytes, bytes]]) -> bytes:
    """One ZODB two-phase commit of ``(oid, previous serial)`` pairs; returns the tid."""
    from ZODB.Connection import TransactionMetaData

    transaction = TransactionMetaData()
    client.tpc_begin(transaction)
    for oid, serial in writes:
        client.store(oid, serial, PAYLOAD, "", transaction)
    client.tpc_vote(transaction)
    tid: bytes = client.tpc_finish(transaction)
    return tid


def _zeo_store_all(client: Any, oids: list[bytes]) -> None:
    from ZODB.utils import z64

    _zeo_commit(client, [(oid, z64) for oid in oids])


def _zeo_commit_one(client: Any, state: dict[str, Any]) -> None:
    from ZODB.utils import z64

    if "oid" not in state:
        state["oid"] = client.new_oid()
        state["serial"] = z64
    state["serial"] = _zeo_commit(client, [(state["oid"], state["serial"])])


ZEO_SYSTEM = ServerSystem(
    name="zeo",
    label="ZEO server, FileStorage",
    module="ZEO.ClientStorage",
    distribution="ZEO",
    durable=True,
    server_argv=lambda path, port: [
        sys.executable,
        "-m",
        "ZEO.runzeo",
        "-a",
        f"127.0.0.1:{port}",
        "-f",
        path,
    ],
    connect=_zeo_connect,
    new_oids=lambda client, count: [client.new_oid() for _ in range(count)],
    store_all=_zeo_store_all,
    load=lambda client, oid: client.load(oid),
    bulk_load=None,
    commit_one=_zeo_commit_one,
    close=lambda client: client.close(),
)

SYSTEMS = [DHRUVA, DURUS, ZEO_SYSTEM]


def _commit_loop(system: ServerSystem, port: int, commits: int) -> None:
    client = system.connect(port)
    try:
        state: dict[str, Any] = {}
        system.commit_one(client, state)  # allocates the oid; not counted
        for _ in range(commits):
            system.commit_one(client, state)
    finally:
        system.close(client)


def measure_system(
    system: ServerSystem, objects: int, commits: int, clients: int
) -> dict[str, float]:
    """Run the workload against ``system``'s server; return rates per second."""
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix=f"bench-server-{system.name}-") as directory:
        port = free_port()
        path = os.path.join(directory, "bench.db")
        with running_server(system.server_argv(path, port), port, directory):
            writer = system.connect(port)
            try:
                oids = system.new_oids(writer, objects)
                system.store_all(writer, oids)
            finally:
                system.close(writer)

            reader = system.connect(port)
            try:
                started = time.perf_counter()
                for oid in oids:
                    system.load(reader, oid)
                results["loads_per_s"] = objects / (time.perf_counter() - started)
            finally:
                system.close(reader)

            if system.bulk_load is not None:
                reader = system.connect(port)
                try:
                    started = time.perf_counter()
                    count = system.bulk_load(reader, oids)
                    results["bulk_loads_per_s"] = count / (time.perf_counter() - started)
                finally:
                    system.close(reader)

            started = time.perf_counter()
            _commit_loop(system, port, commits)
            results["commits_per_s"] = commits / (time.perf_counter() - started)

            errors: list[BaseException] = []

            def client_thread() -> None:
                try:
                    _commit_loop(system, port, commits)
                except BaseException as error:  # reported after join
                    errors.append(error)

            threads = [threading.Thread(target=client_thread) for _ in range(clients)]
            started = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            elapsed_s = time.perf_counter() - started
            if errors:
                raise errors[0]
            results["commits_per_s_n_clients"] = clients * commits / elapsed_s
    return results


def bench_server_compare(
    objects: int,
    commits: int,
    clients: int,
    systems: list[str] | None = None,
    strict: bool = False,
    in_process: bool = True,
) -> dict[str, Any]:
    """Measure every installed system's server; JSON-ready rows with ratios to Durus.

    ``systems`` names the servers to run (``dhruva``, ``durus``, ``zeo``;
    default all).  With ``in_process`` a last row comes from
    ``server_bench.run_server_bench``: dhruva's server in a thread of this
    process, which shares the GIL with its clients (reported, not judged).
    A system that is not installed, or whose run raises (unless ``strict``),
    gets a row with ``error`` instead of numbers.
    """
    rows: list[dict[str, Any]] = []
    for system in SYSTEMS:
        if systems is not None and system.name not in systems:
            continue
        row: dict[str, Any] = {
            "system": system.name,
            "label": system.label,
            "durable": system.durable,
            "error": None,
        }
        reason = system.available()
        if reason is not None:
            row["error"] = reason
        else:
            row["version"] = system.version()
            try:
                row.update(measure_system(system, objects, commits, clients))
            except Exception as error:
                if strict:
                    raise
                row["error"] = f"{type(error).__name__}: {error}"
        rows.append(row)
    if in_process and (systems is None or "dhruva" in systems):
        rows.append(_in_process_row(objects, commits, clients, strict))
    result: dict[str, Any] = {
        "objects": objects,
        "commits": commits,
        "clients": clients,
        "payload_bytes": PAYLOAD_BYTES,
        "rows": rows,
    }
    _add_ratios(result)
    return result


def _in_process_row(objects: int, commits: int, clients: int, strict: bool) -> dict[str, Any]:
    """``server_bench.run_server_bench``'s rates as a row of this table."""
    row: dict[str, Any] = {
        "system": "dhruva-thread",
        "label": "dhruva server thread in-process",
        "durable": True,
        "error": None,
    }
    try:
        from server_bench import run_server_bench

        rates = run_server_bench(objects, commits, clients)
    except Exception as error:
        if strict:
            raise
        row["error"] = f"{type(error).__name__}: {error}"
        return row
    row["loads_per_s"] = rates["cold_loads_per_s"]
    row["bulk_loads_per_s"] = rates["bulk_loads_per_s"]
    row["commits_per_s"] = rates["durable_commits_per_s"]
    row["commits_per_s_n_clients"] = rates[f"durable_commits_per_s_{clients}_clients"]
    return row


def _add_ratios(result: dict[str, Any]) -> None:
    """Ratios to Durus's rates, and the two targets of issue 3."""
    rows = {row["system"]: row for row in result["rows"] if row["error"] is None}
    durus = rows.get("durus")
    dhruva = rows.get("dhruva")
    if durus is None:
        result["targets"] = {"loads_3x_durus": None, "commits_ge_durus": None}
        return
    for row in rows.values():
        best = max(row["loads_per_s"], row.get("bulk_loads_per_s", 0.0))
        row["best_loads_vs_durus"] = best / durus["loads_per_s"]
        row["commits_vs_durus"] = row["commits_per_s"] / durus["commits_per_s"]
    targets: dict[str, bool | None] = {"loads_3x_durus": None, "commits_ge_durus": None}
    if dhruva is not None:
        targets["loads_3x_durus"] = dhruva["best_loads_vs_durus"] >= 3.0
        targets["commits_ge_durus"] = dhruva["commits_vs_durus"] >= 1.0
    result["targets"] = targets


def _number(row: dict[str, Any], key: str) -> str:
    value = row.get(key)
    return "-" if value is None else f"{value:,.0f}"


def _ratio(row: dict[str, Any], key: str) -> str:
    value = row.get(key)
    return "-" if value is None else f"{value:.2f}x"


def format_table(result: dict[str, Any]) -> str:
    """The side-by-side table with ratios and the two verdicts."""
    clients = result["clients"]
    header = [
        "system",
        "fsync",
        "loads/s",
        "bulk loads/s",
        "best x Durus",
        "commits/s",
        "x Durus",
        f"commits/s ({clients} clients)",
    ]
    body: list[list[str]] = []
    errors: list[str] = []
    for row in result["rows"]:
        if row["error"] is not None:
            errors.append(f"  {row['label']}: {row['error']}")
            continue

        body.append(
            [
                row["label"],
                "yes" if row["durable"] else "NO",
                _number(row, "loads_per_s"),
                _number(row, "bulk_loads_per_s"),
                _ratio(row, "best_loads_vs_durus"),
                _number(row, "commits_per_s"),
                _ratio(row, "commits_vs_durus"),
                _number(row, "commits_per_s_n_clients"),
            ]
        )
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = [
        f"Storage servers on loopback: {result['objects']:,} objects of "
        f"{result['payload_bytes']} bytes, {result['commits']:,} one-object commits per client"
    ]
    for line in [header, ["-" * w for w in widths], *body]:
        cells = [f"{line[0]:<{widths[0]}}"] + [
            f"{cell:>{widths[i + 1]}}" for i, cell in enumerate(line[1:])
        ]
        lines.append("  " + "  ".join(cells))
    lines += errors
    verdict = {True: "MET", False: "NOT MET", None: "not evaluated"}
    targets = result["targets"]
    lines.append(
        "  target: dhruva's cold loads (best of single and bulk) >= 3x Durus's loads/s -> "
        + verdict[targets["loads_3x_durus"]]
    )
    lines.append(
        "  target: dhruva's durable commits/s >= Durus's non-durable commits/s -> "
        + verdict[targets["commits_ge_durus"]]
    )
    lines.append(
        "  note: each server but the in-process row is a subprocess serving a FileStorage; "
        "Durus's FileStorage never fsyncs (fsync NO)"
    )
    lines.append(
        "  note: loads/s is one request per object; bulk is one request per batch "
        "(ZEO has no batched load that returns data)"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    print(format_table(bench_server_compare(count, 500, 4)))
