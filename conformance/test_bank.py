"""The bank: concurrent transfers and audits on every back-end (spec CONF-060..063).

Several client processes share one database.  Each runs transfers between
random accounts (read two balances, move an amount, log the transfer in
its own log) and, between them, read-only audits that sum every balance.
Under snapshot reads and serializable commits (spec/connection.md,
"Isolation"):

* no audit fails and every audit sees the conserved total (CONN-040, CONN-041);
* every transfer whose commit returned is in the final state, and the
  final balances are exactly the initial ones plus the logged transfers
  (no lost and no partial transfer);
* conflicts happen only between transfers, and only as retries.

The database is served to the clients by a storage server in a *host*
process of its own, on the back-end under test; a back-end whose storage
objects have other writers of their own (PostgreSQL) is also shared
directly, each client opening its own storage object.  In the crash
variant the host is killed with SIGKILL in the middle and started again,
and the clients reconnect.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from dhruva_conformance.backends import CAP_REOPEN, StorageFactory, backend_names
from dhruva_conformance.bank import Account
from dhruva_conformance.faults import child_environment

from dhruva.client_storage import ClientStorage
from dhruva.connection import Connection
from dhruva.persistent_dict import PersistentDict
from dhruva.persistent_list import PersistentList
from dhruva.storage import CAP_SNAPSHOTS, Storage

ACCOUNTS = 12
START_BALANCE = 100
CLIENTS = 4
TRANSFERS = 30
AUDIT_EVERY = 2
READY_TIMEOUT_S = 60.0
RUN_TIMEOUT_S = 240.0

HOST = """
import logging, os, sys, threading
from dhruva_conformance.backends import create_backend
from dhruva_conformance.server_backends import ServedStorage
from dhruva.server.storage_server import StorageServer

name, directory, socket_path, reopen = sys.argv[1:5]
# The server's account of its clients (connects, drops and why) goes to
# the host's log file, which a failing test shows.
logging.basicConfig(level=logging.INFO, format="%(created).3f host: %(message)s")
storage = create_backend(name, directory).open(reopen=reopen == "1")
if isinstance(storage, ServedStorage):
    # The back-end is already a server: its clients use its socket.
    print("ready", os.path.join(directory, "server.sock"), flush=True)
    threading.Event().wait()
server = StorageServer(storage, socket_path)
print("ready", socket_path, flush=True)
server.serve()
"""

CLIENT = """
import random, sys, time
from dhruva.client_storage import ClientStorage, ServerConnectionError
from dhruva.connection import Connection
from dhruva.error import ConflictError, DhruvaError, ReadConflictError

mode, where, name, directory, ident, transfers, audit_every, count, seed = sys.argv[1:10]
transfers, audit_every, count = int(transfers), int(audit_every), int(count)
LOST = (ServerConnectionError, OSError)

def lost(during, error):
    # Counted by the test from stdout; told with its cause on stderr, which
    # a failing test shows.
    print("lost", during, flush=True)
    print(f"{time.time():.3f} lost during {during}: {error!r}", file=sys.stderr, flush=True)

def connect():
    deadline = time.monotonic() + 60
    while True:
        try:
            if mode == "direct":
                from dhruva_conformance.backends import create_backend
                storage = create_backend(name, directory).open(reopen=True)
            else:
                storage = ClientStorage(where)
            return Connection(storage)
        except LOST:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)

def logged(connection):
    connection.abort()
    return {entry[0] for entry in connection.root["log"][ident]}

def reconnect(during):
    # A new connection can be lost at its first reads: the client may have
    # connected just before the kill (at its start, too, if it started
    # late).  Connect once more, as an application would.  Returns the
    # connection and this client's log.
    while True:
        connection = connect()
        try:
            return connection, logged(connection)
        except LOST as error:
            lost(during, error)

rng = random.Random(int(seed))
connection, _seen = reconnect("start")
done = 0
while done < transfers:
    transfer_id = f"{ident}-{done}"
    a, b = rng.sample(range(count), 2)
    amount = rng.randint(1, 9)
    while True:
        try:
            connection.abort()
            accounts = connection.root["accounts"]
            accounts[a].balance -= amount
            accounts[b].balance += amount
            connection.root["log"][ident].append((transfer_id, a, b, amount))
            connection.commit()
            print("ack", transfer_id, flush=True)
            done += 1
            break
        except ConflictError as conflict:
            kind = "read" if isinstance(conflict, ReadConflictError) else "write"
            print("conflict", kind, flush=True)
        except LOST as error:
            # In doubt: the commit may or may not have happened; the log says.
            lost("transfer", error)
            connection, seen = reconnect("recovery")
            if transfer_id in seen:
                print("recovered", transfer_id, flush=True)
                done += 1
                break
    if done % audit_every == 0:
        try:
            connection.abort()
            total = sum(account.balance for account in connection.root["accounts"])
            connection.commit()
            print("audit", total, flush=True)
        except LOST as error:
            lost("audit", error)
            connection, _seen = reconnect("recovery")
        except DhruvaError as error:
            print("auditfail", type(error).__name__, flush=True)
print("done", flush=True)
"""


def _start_host(factory: StorageFactory, socket_path: str, logs: Path) -> tuple[Any, str]:
    """Start the host process serving the back-end; return it and its socket path.

    The host's stderr, its server's log included, goes to a new
    ``host-N.err`` in ``logs`` (see ``_host_logs``).
    """
    # A back-end that cannot reopen is created afresh in the host (memory).
    reopen = "1" if CAP_REOPEN in factory.capabilities else "0"
    directory = str(factory.directory)  # type: ignore[attr-defined]
    log_path = logs / f"host-{len(list(logs.glob('host-*.err')))}.err"
    with open(log_path, "w") as errors:
        host = subprocess.Popen(
            [sys.executable, "-c", HOST, factory.name, directory, socket_path, reopen],
            stdout=subprocess.PIPE,
            stderr=errors,
            env=child_environment(),
            text=True,
        )
    assert host.stdout is not None
    line = host.stdout.readline().split()
    if not line or line[0] != "ready":
        _stop(host)
        pytest.fail(f"the host did not start: {log_path.read_text()}")
    return host, line[1]


def _host_logs(logs: Path) -> str:
    """What the hosts started in ``logs`` wrote, oldest first, for a failure message."""
    paths = sorted(logs.glob("host-*.err"), key=lambda path: int(path.stem.split("-")[1]))
    return "".join(f"\n--- {path.name}\n{path.read_text()}" for path in paths)


def _stop(process: Any) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGKILL)
    process.wait()
    for stream in (process.stdout, process.stderr):
        if stream is not None:
            stream.close()


def _setup(storage: Storage) -> None:
    """Create the accounts and one log per client."""
    connection = Connection(storage)
    root = connection.root
    root["accounts"] = PersistentList(Account(START_BALANCE) for _ in range(ACCOUNTS))
    root["log"] = PersistentDict({str(n): PersistentList() for n in range(CLIENTS)})
    connection.commit()


def _check_final(storage: Storage, results: list[list[str]]) -> dict[str, Any]:
    connection = Connection(storage)
    root = connection.root
    balances = [account.balance for account in root["accounts"]]
    expected = [START_BALANCE] * ACCOUNTS
    seen: set[str] = set()
    for ident in range(CLIENTS):
        for transfer_id, a, b, amount in root["log"][str(ident)]:
            assert transfer_id not in seen, f"transfer {transfer_id} applied twice"
            seen.add(transfer_id)
            expected[a] -= amount
            expected[b] += amount
    acked = {line.split()[1] for lines in results for line in lines if line.startswith("ack ")}
    missing = sorted(acked - seen)
    assert not missing, f"acknowledged transfers lost: {missing}"
    assert balances == expected, "the balances are not the initial ones plus the logged transfers"
    assert sum(balances) == START_BALANCE * ACCOUNTS
    counts: Counter[str] = Counter()
    for lines in results:
        for line in lines:
            word = line.split()[0]
            counts[word if word != "conflict" else " ".join(line.split()[:2])] += 1
    connection.close()
    return dict(counts)


def _run_clients(
    mode: str,
    where: str,
    factory: StorageFactory,
    logs: Path,
    kill: Callable[[], None] | None = None,
) -> list[list[str]]:
    """Run the clients to the end; ``kill`` runs once client 0 has 5 acknowledged transfers."""
    directory = str(factory.directory)  # type: ignore[attr-defined]
    clients = []
    for n in range(CLIENTS):
        arguments = [mode, where, factory.name, directory, str(n), str(TRANSFERS)]
        arguments += [str(AUDIT_EVERY), str(ACCOUNTS), str(1000 + n)]
        with open(logs / f"client-{n}.err", "w") as errors:
            clients.append(
                subprocess.Popen(
                    [sys.executable, "-c", CLIENT, *arguments],
                    stdout=subprocess.PIPE,
                    stderr=errors,
                    env=child_environment(),
                    text=True,
                )
            )
    try:
        first: list[str] = []
        if kill is not None:
            stream = clients[0].stdout
            assert stream is not None
            for line in stream:
                first.append(line.strip())
                if sum(1 for seen in first if seen.startswith("ack ")) >= 5:
                    break
            assert "done" not in first, "client 0 finished before the kill"
            kill()
        results = []
        deadline = time.monotonic() + RUN_TIMEOUT_S
        for n, client in enumerate(clients):
            stream = client.stdout
            assert stream is not None
            # Read through the same buffered file object as above (a raw
            # read would miss what its read-ahead buffer holds).
            rest = stream.read()
            client.wait(timeout=max(1.0, deadline - time.monotonic()))
            errors = (logs / f"client-{n}.err").read_text()
            lines = (first if n == 0 else []) + [line for line in rest.split("\n") if line]
            assert client.returncode == 0, f"client {n} failed: {errors}{_host_logs(logs)}"
            assert "done" in lines, f"client {n} did not finish: {errors}{_host_logs(logs)}"
            results.append(lines)
        return results
    finally:
        for client in clients:
            _stop(client)


def _check_audits(results: list[list[str]]) -> None:
    audits = [line for lines in results for line in lines if line.startswith("audit")]
    failed = [line for line in audits if line.startswith("auditfail")]
    assert not failed, f"audits failed: {failed}"
    wrong = [line for line in audits if int(line.split()[1]) != START_BALANCE * ACCOUNTS]
    assert not wrong, f"audits saw a wrong total: {wrong}"
    assert audits, "no audit ran"


def _needs_registered(factory: StorageFactory) -> None:
    if getattr(factory, "directory", None) is None or factory.name not in backend_names():
        pytest.skip(f"back-end {factory.name!r} is not registered by name with a directory")


def _open_client(where: str) -> ClientStorage:
    storage = ClientStorage(where)
    if CAP_SNAPSHOTS not in storage.capabilities:
        storage.close()
        pytest.skip("the storage server does not offer snapshots")
    return storage


@pytest.mark.req("CONF-060", "CONF-061", "CONN-040", "CONN-041", "CONN-043", "CONN-044")
def test_bank_through_the_server(storage_factory: StorageFactory, tmp_path: Path) -> None:
    _needs_registered(storage_factory)
    storage_factory.open().close()
    host, where = _start_host(storage_factory, str(tmp_path / "bank.sock"), tmp_path)
    try:
        storage = _open_client(where)
        _setup(storage)
        storage.close()
        results = _run_clients("server", where, storage_factory, tmp_path)
        _check_audits(results)
        counts = _check_final(_open_client(where), results)
    finally:
        _stop(host)
    print(f"bank through the server on {storage_factory.name}: {counts}")
    # [CONF-061] Transfers conflict on what they write, never on what they only read.
    assert counts.get("conflict read", 0) == 0, counts


@pytest.mark.needs("reopen", "durable")
@pytest.mark.req("CONF-062")
def test_bank_survives_sigkill_of_the_server(
    storage_factory: StorageFactory, tmp_path: Path
) -> None:
    _needs_registered(storage_factory)
    storage_factory.open().close()
    socket_path = str(tmp_path / "bank.sock")
    host, where = _start_host(storage_factory, socket_path, tmp_path)
    hosts = [host]
    try:
        storage = _open_client(where)
        _setup(storage)
        storage.close()

        def kill_and_restart() -> None:
            _stop(hosts[-1])  # SIGKILL, by pid
            if os.path.exists(where):
                os.unlink(where)  # the dead server's socket file
            hosts.append(_start_host(storage_factory, socket_path, tmp_path)[0])

        results = _run_clients("server", where, storage_factory, tmp_path, kill=kill_and_restart)
        _check_audits(results)
        counts = _check_final(_open_client(where), results)
    finally:
        for process in hosts:
            _stop(process)
    print(f"bank with SIGKILL on {storage_factory.name}: {counts}")
    assert counts.get("lost", 0) >= 1, "no client noticed the server's death"


@pytest.mark.req("CONF-063", "SAPI-091", "SAPI-095")
def test_bank_directly_on_a_shared_back_end(
    storage_factory: StorageFactory, tmp_path: Path
) -> None:
    _needs_registered(storage_factory)
    storage = storage_factory.open()
    try:
        if isinstance(storage, ClientStorage) or type(storage).note_reads is Storage.note_reads:
            pytest.skip(f"back-end {storage_factory.name!r} has one writer per database")
        if CAP_SNAPSHOTS not in storage.capabilities:
            pytest.skip(f"back-end {storage_factory.name!r} has no snapshots")
        _setup(storage)
    finally:
        storage.close()
    results = _run_clients("direct", "-", storage_factory, tmp_path)
    _check_audits(results)
    counts = _check_final(storage_factory.open(reopen=True), results)
    print(f"bank directly on {storage_factory.name}: {counts}")
