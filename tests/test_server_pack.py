"""Packing through the server while clients work (spec: server.md, "Packing")."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dhruva import wire
from dhruva.client_storage import ClientStorage
from dhruva.error import DhruvaError, DhruvaKeyError, PackNotSupportedError
from dhruva.file_storage import FileStorage, FileStorage2
from dhruva.server.pack import PackDriver
from dhruva.server.storage_server import StorageServer
from dhruva.storage import MemoryStorage, Storage
from dhruva.utils import ROOT_OID

Serve = Callable[..., StorageServer]


class SlowPackMixin:
    """A FileStorage2 whose pack does not finish before ``hold_for`` commits were made.

    The walk itself runs normally; only its last ``pack_step`` keeps saying
    "not done" until enough commits happened during the pack, so that the
    test does not depend on timing.
    """

    hold_for = 0
    commits_during_pack = 0
    steps = 0
    finishes = 0
    fail_step = False

    def pack_step(self, budget: int = 50_000) -> bool:
        self.steps += 1
        if self.fail_step:
            raise DhruvaError("disk on fire (simulated)")
        done: bool = super().pack_step(budget)  # type: ignore[misc]
        return done and self.commits_during_pack >= self.hold_for

    def pack_finish(self) -> Any:
        self.finishes += 1
        return super().pack_finish()  # type: ignore[misc]

    def end(self) -> None:
        super().end()  # type: ignore[misc]
        if self.packing:  # type: ignore[attr-defined]
            self.commits_during_pack += 1


class SlowPack(SlowPackMixin, FileStorage2):
    """SlowPackMixin on FileStorage2 (no sidecar index)."""


class SlowPackIndexed(SlowPackMixin, FileStorage):
    """SlowPackMixin on FileStorage (with its sidecar index)."""


def fill(client: ClientStorage, live: int) -> tuple[list[bytes], bytes]:
    """Commit a root referencing ``live`` objects, plus one garbage object."""
    oids = [client.new_oid() for _ in range(live + 2)]
    assert oids[0] == ROOT_OID
    children, garbage = oids[1:-1], oids[-1]
    client.begin()
    client.store(ROOT_OID, b"root", b"".join(children))
    for index, oid in enumerate(children):
        client.store(oid, b"object %d" % index, b"")
    client.store(garbage, b"garbage", b"")
    client.end()
    return children, garbage


@pytest.mark.req("SRV-051", "SRV-052", "WIRE-085")
@pytest.mark.parametrize("cls", [SlowPack, SlowPackIndexed])
def test_commits_during_a_server_pack_survive_it(
    serve: Serve, tmp_path: Path, cls: type[SlowPackMixin]
) -> None:
    storage = cls(str(tmp_path / "db.dhruva"))  # type: ignore[call-arg]
    assert isinstance(storage, SlowPackMixin)
    storage.hold_for = 30
    server = serve(storage, pack_step_budget=500, pack_progress_interval_s=0.0)
    writer = ClientStorage(server.address)
    children, garbage = fill(writer, 5000)

    packer = ClientStorage(server.address)
    progress: list[tuple[int, int]] = []
    errors: list[BaseException] = []

    def pack() -> None:
        try:
            packer.pack(progress=lambda copied, total: progress.append((copied, total)))
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=pack)
    thread.start()
    # Commit while the pack runs: new objects hung from the root, and
    # rewrites of existing ones.  The pack cannot end before 30 of them.
    committed: dict[bytes, bytes] = {}
    root_refs = b"".join(children)
    reader = ClientStorage(server.address)
    count = 0
    while thread.is_alive():
        count += 1
        oid = writer.new_oid()
        old = children[count % len(children)]
        root_refs += oid
        writer.begin()
        writer.store(oid, b"new %d" % count, b"")
        writer.store(old, b"rewritten %d" % count, b"")
        writer.store(ROOT_OID, b"root", root_refs)
        writer.end()
        committed[oid] = b"new %d" % count
        committed[old] = b"rewritten %d" % count
        # Loads are served during the pack too.
        reader.sync()
        assert reader.load(oid).data == committed[oid]
    thread.join()
    assert not errors
    assert storage.commits_during_pack >= 30 and storage.finishes == 1
    assert storage.steps > 1
    assert progress and all(total >= copied >= 0 for copied, total in progress)
    # Every commit made during the pack is in the packed database, and the
    # garbage is gone: the pack did finish.
    check = ClientStorage(server.address)
    for oid, data in committed.items():
        assert check.load(oid).data == data
    for index, oid in enumerate(children):
        assert check.load(oid).data == committed.get(oid, b"object %d" % index)
    with pytest.raises(DhruvaKeyError):
        check.load(garbage)
    for client in (writer, packer, reader, check):
        client.close()


@pytest.mark.req("SRV-051")
def test_pack_survives_reopen(serve: Serve, tmp_path: Path) -> None:
    path = str(tmp_path / "db.dhruva")
    storage = SlowPack(path)
    server = serve(storage, pack_step_budget=100)
    client = ClientStorage(server.address)
    children, garbage = fill(client, 1000)
    client.pack()
    assert storage.steps > 1
    client.close()
    server.stop()
    storage.close()
    reopened = FileStorage2(path)
    try:
        assert reopened.load(children[-1]).data == b"object 999"
        with pytest.raises(DhruvaKeyError):
            reopened.load(garbage)
    finally:
        reopened.close()


@pytest.mark.req("SRV-052")
def test_second_pack_request_joins_the_running_pack(serve: Serve, tmp_path: Path) -> None:
    storage = SlowPack(str(tmp_path / "db.dhruva"))
    storage.hold_for = 3
    server = serve(storage, pack_step_budget=50)
    writer = ClientStorage(server.address)
    fill(writer, 500)
    first, second = ClientStorage(server.address), ClientStorage(server.address)
    threads = [threading.Thread(target=c.pack) for c in (first, second)]
    for thread in threads:
        thread.start()
    while any(t.is_alive() for t in threads):
        writer.begin()
        writer.store(ROOT_OID, b"root", b"")
        writer.end()
    for thread in threads:
        thread.join()
    assert storage.finishes == 1
    # Both clients were answered, and their later requests are served.
    assert first.get_size() == second.get_size() == writer.get_size()
    for client in (writer, first, second):
        client.close()


@pytest.mark.req("SRV-053")
def test_failed_pack_step_answers_storage_failure_and_keeps_serving(
    serve: Serve, tmp_path: Path
) -> None:
    storage = SlowPack(str(tmp_path / "db.dhruva"))
    storage.fail_step = True
    server = serve(storage)
    client = ClientStorage(server.address)
    _children, garbage = fill(client, 10)
    with pytest.raises(DhruvaError, match="pack failed"):
        client.pack()
    assert not storage.packing
    assert not (tmp_path / "db.dhruva.pack").exists()
    assert client.load(garbage).data == b"garbage"
    storage.fail_step = False
    client.pack()
    with pytest.raises(DhruvaKeyError):
        client.load(garbage)
    client.close()


@pytest.mark.req("SRV-050", "SRV-051")
def test_gcinterval_packs_stepwise_and_logs_progress(
    serve: Serve, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    storage = SlowPack(str(tmp_path / "db.dhruva"))
    caplog.set_level(logging.INFO, logger="dhruva.server")
    server = serve(storage, gcinterval=0.05, pack_step_budget=20, pack_progress_interval_s=0.0)
    client = ClientStorage(server.address)
    _children, garbage = fill(client, 200)
    # Wait (without a clock) for a pack to remove the garbage.
    for _ in range(100_000):
        try:
            client.load(garbage)
        except DhruvaKeyError:
            break
        client.sync()
    else:
        pytest.fail("gcinterval never packed")
    client.close()
    events = [getattr(r, "event", None) for r in caplog.records]
    assert "pack-start" in events and "pack-progress" in events and "pack-end" in events
    assert storage.steps > 1


def test_storage_without_steps_packs_in_one_call(serve: Serve) -> None:
    server = serve(MemoryStorage())
    client = ClientStorage(server.address)
    _children, garbage = fill(client, 3)
    client.pack()
    with pytest.raises(DhruvaKeyError):
        client.load(garbage)
    client.close()


class NoPack(MemoryStorage):
    """A storage that cannot pack: it keeps Storage's default pack()."""

    def pack(self) -> None:
        Storage.pack(self)


@pytest.mark.req("SRV-087")
def test_pack_of_a_storage_that_cannot_pack_answers_not_supported(serve: Serve) -> None:
    with pytest.raises(PackNotSupportedError):
        NoPack().pack()
    driver: PackDriver[str] = PackDriver(NoPack(), step_budget=10, progress_interval_s=1.0)
    ((waiter, answer),) = driver.start("client")
    assert waiter == "client" and isinstance(answer, wire.Error)
    assert answer.code == wire.ErrorCode.NOT_SUPPORTED and not driver.packing
    # Through a server: a plain error answer, and the session goes on.
    server = serve(NoPack())
    client = ClientStorage(server.address)
    with pytest.raises(DhruvaError, match="does not support pack"):
        client.pack()
    assert client.get_size() == 0
    client.close()


def test_pack_progress_round_trip() -> None:
    message = wire.PackProgress(12, 34)
    encoded = message.encode()
    assert encoded.hex() == "0000001189000000000000000c0000000000000022"
    assert wire.decode_message(encoded[4:]) == message


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("DHRUVA_"):
            monkeypatch.delenv(name)


@pytest.mark.req("SRV-051", "WIRE-085")
@pytest.mark.usefixtures("clean_env")
def test_dhruva_pack_through_a_running_server(
    serve: Serve,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from dhruva.tools import admin

    monkeypatch.setattr(admin, "PROGRESS_INTERVAL_S", 0.0)
    storage = SlowPack(str(tmp_path / "db.dhruva"))
    server = serve(storage, pack_step_budget=10, pack_progress_interval_s=0.0)
    client = ClientStorage(server.address)
    _children, garbage = fill(client, 100)
    assert isinstance(server.address, str)
    assert admin.main(["pack", "--address", server.address]) == 0
    err = capsys.readouterr().err
    assert "objects copied" in err
    assert f"server at {server.address}: 102 -> 101 objects" in err
    assert storage.steps > 1
    with pytest.raises(DhruvaKeyError):
        client.load(garbage)
    assert admin.main(["pack", "--address", server.address, "--quiet"]) == 0
    assert capsys.readouterr().err == ""
    client.close()


@pytest.mark.usefixtures("clean_env")
def test_dhruva_pack_server_errors_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from dhruva.tools import admin

    missing = str(tmp_path / "nobody.sock")
    assert admin.main(["pack", "--address", missing]) == 1
    err = capsys.readouterr().err
    assert err.startswith("dhruva pack: ") and err.count("\n") == 1
    assert "cannot connect" in err
    db = str(tmp_path / "db.dhruva")
    FileStorage2(db).close()
    assert admin.main(["pack", db, "--address", missing]) == 1
    assert "not both" in capsys.readouterr().err


@pytest.mark.req("SRV-051")
def test_dhruva_command_packs_a_server_over_tcp(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    storage = SlowPack(str(tmp_path / "db.dhruva"))
    server = StorageServer(storage, ("127.0.0.1", 0), pack_step_budget=10)
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    try:
        assert isinstance(server.address, tuple)
        host, port = server.address
        client = ClientStorage((host, port))
        _children, garbage = fill(client, 50)
        env = {k: v for k, v in os.environ.items() if not k.startswith("DHRUVA_")}
        result = subprocess.run(
            [sys.executable, "-m", "dhruva", "pack", "--host", host, "--port", str(port)],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        assert f"server at {host}:{port}: 52 -> 51 objects" in result.stderr
        with pytest.raises(DhruvaKeyError):
            client.load(garbage)
        client.close()
    finally:
        server.stop()
        thread.join()
        storage.close()
