"""Tests of the administration subcommands (dhruva.tools.admin): pack, history, restore, backup."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest
from _journal_storages import oid

from dhruva.file_storage import FileStorage, FileStorage2
from dhruva.file_storage2 import JournalStorage
from dhruva.history import list_transactions
from dhruva.tools import admin


def make_db(path: str, cls: type[JournalStorage] = FileStorage, commits: int = 4) -> None:
    with cls(path) as storage:
        for number in range(1, commits + 1):
            storage.begin()
            storage.store(oid(0), b"root %d" % number, oid(1))
            storage.store(oid(1), b"one %d" % number, b"")
            storage.store(oid(100 + number), b"garbage", b"")
            storage.end()


@pytest.fixture
def db(tmp_path: Path) -> str:
    path = str(tmp_path / "db.dhruva")
    make_db(path)
    return path


def test_register_adds_the_four_subcommands_with_help(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="dhruva")
    admin.register(parser.add_subparsers(dest="command"))
    for name in ("pack", "history", "restore", "backup"):
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args([name, "--help"])
        assert exit_info.value.code == 0
        assert f"usage: dhruva {name}" in capsys.readouterr().out
    args = parser.parse_args(["backup", "a", "b"])
    assert callable(args.run)


def test_history_lists_transactions(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert admin.main(["history", db]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:2] == ["tid", "time"]
    assert [line.split()[0] for line in lines[1:]] == ["1", "2", "3", "4"]
    assert lines[1].split()[1].endswith("Z") and lines[1].split()[3] == "3"
    assert admin.main(["history", db, "--last", "2", "--quiet"]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()] == ["3", "4"]


def test_restore_writes_the_chosen_state(
    db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = str(tmp_path / "at2.dhruva")
    assert admin.main(["restore", db, "--at", "2", "--output", output]) == 0
    assert "as of tid 2" in capsys.readouterr().err
    with FileStorage2(output, readonly=True) as storage:
        assert storage.load(oid(0)).data == b"root 2"


def test_backup_copies(db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dest = str(tmp_path / "copy.dhruva")
    assert admin.main(["backup", db, dest, "-q"]) == 0
    assert capsys.readouterr().err == ""
    assert [t.tid for t in list_transactions(dest)] == [1, 2, 3, 4]


@pytest.mark.parametrize("with_index", [True, False])
def test_pack_reports_and_keeps_the_kind_of_storage(
    tmp_path: Path,
    with_index: bool,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = str(tmp_path / "db.dhruva")
    make_db(path, FileStorage if with_index else FileStorage2, commits=30)
    # Small steps and no delay between reports, so that progress shows.
    original = JournalStorage.pack_step
    monkeypatch.setattr(JournalStorage, "pack_step", lambda self, budget=1: original(self, 1))
    monkeypatch.setattr(admin, "PROGRESS_INTERVAL_S", 0.0)
    assert admin.main(["pack", path]) == 0
    err = capsys.readouterr().err
    assert "objects copied" in err
    assert "32 -> 2 objects" in err
    assert os.path.exists(path + ".index") == with_index
    assert admin.main(["pack", path, "--quiet"]) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    "argv, message",
    [
        (["pack", "{missing}"], "no such file"),
        (["history", "{missing}"], "no such file"),
        (["restore", "{db}", "--at", "9", "-o", "{out}"], "no transaction 9"),
        (["backup", "{db}", "{db}"], "exists"),
        (["backup", "{foreign}", "{out}"], "not a dhruva data file"),
        (["pack", "{foreign}"], "not a dhruva data file"),
    ],
)
def test_errors_are_one_line_and_status_1(
    db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    foreign = tmp_path / "foreign"
    foreign.write_bytes(b"hello, this is not a database" * 3)
    names = {
        "missing": str(tmp_path / "missing"),
        "db": db,
        "out": str(tmp_path / "out"),
        "foreign": str(foreign),
    }
    assert admin.main([arg.format(**names) for arg in argv]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err
    assert err.startswith(f"dhruva {argv[0]}: ")


def test_pack_of_a_database_in_use_fails_cleanly(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with FileStorage(db):
        assert admin.main(["pack", db]) == 1
    assert "locked" in capsys.readouterr().err


def test_no_subcommand_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert admin.main([]) == 2
    assert "pack" in capsys.readouterr().err


def test_register_commands_uses_the_cli_registry_signature() -> None:
    registered: dict[str, object] = {}

    def register_subcommand(name: str, help: str, configure: object, run: object) -> None:
        registered[name] = run

    admin.register_commands(register_subcommand)
    assert sorted(registered) == ["backup", "history", "pack", "restore"]
    parser = argparse.ArgumentParser()
    parser.set_defaults(run=registered["history"], path="/nonexistent/db", last=None, quiet=False)
    args = parser.parse_args([])
    assert args.run(args) == 1
