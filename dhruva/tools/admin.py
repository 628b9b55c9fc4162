"""Administration subcommands: ``dhruva pack``, ``history``, ``restore``, ``backup``.

Spec: ``spec/pack.md`` and ``spec/point-in-time.md``; user guide:
``docs/guide/pack-history-backup.md``.

:func:`register` adds the four subcommands to the ``dhruva`` command's
subparsers (``dhruva/tools/cli.py`` calls it); each sets ``run`` to a function that
takes the parsed arguments and returns the exit status, printing user errors
as one line on standard error (status 1) and never a traceback.  :func:`main`
runs them without the rest of the command, for tests and for
``python -m dhruva.tools.admin``.

Progress of a long pack goes to standard error, one line per step at most
every ``PROGRESS_INTERVAL_S`` seconds; ``--quiet`` silences it and the
summary line.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from dhruva.error import DhruvaError
from dhruva.tools import common
from dhruva.tools import config as dconfig

PROG = "dhruva"
PROGRESS_INTERVAL_S = 1.0

Run = Callable[[argparse.Namespace], int]


class AdminError(Exception):
    """A user-facing failure: printed as one line, exit status 1."""


def _fail_softly(name: str, run: Callable[[argparse.Namespace], int]) -> Run:
    """Wrap ``run`` so that user errors print one line and return status 1."""

    def wrapped(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except AdminError as error:
            message = str(error)
        except DhruvaError as error:
            message = str(error)
        except FileNotFoundError as error:
            message = f"{error.filename}: no such file"
        except OSError as error:
            message = f"{error.filename or ''}: {error.strerror or error}".lstrip(": ")
        print(f"{PROG} {name}: {message}", file=sys.stderr)
        return 1

    return wrapped


def _require_file(path: str) -> None:
    """Raise AdminError unless ``path`` exists (the commands never create their input)."""
    if not os.path.exists(path):
        raise AdminError(f"{path}: no such file")
    if os.path.isdir(path):
        # Reading a directory fails with an OSError that does not name it.
        raise AdminError(f"{path} is a directory, not a database file")


def _quiet_option(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument("-q", "--quiet", action="store_true", help=help_text)


def _mebibytes(count: int) -> str:
    return f"{count / (1 << 20):.1f} MiB"


# --- dhruva pack ----------------------------------------------------------------------


def _server_named(args: argparse.Namespace) -> bool:
    return any(getattr(args, name, None) is not None for name in ("host", "port", "address"))


def run_pack_through_server(args: argparse.Namespace) -> int:
    """Ask the running server the options name to pack (spec: server.md, SRV-051).

    The server packs while it keeps serving its clients; progress comes back
    as PACK_PROGRESS frames and is printed like a file pack's.
    """
    from dhruva.server.address import format_address

    quiet: bool = args.quiet
    try:
        settings = common.settings_from(args)
        client = common.connect_client(settings)
    except common.CommandError as error:
        raise AdminError(str(error)) from None
    where = format_address(settings.server_address())
    stream: TextIO = sys.stderr
    last_report = [time.monotonic()]

    def report(copied: int, total: int) -> None:
        now = time.monotonic()
        if quiet or now - last_report[0] < PROGRESS_INTERVAL_S:
            return
        last_report[0] = now
        bound = f"at most {total}" if total else "an unknown number of"
        print(f"{PROG} pack: {copied} of {bound} objects copied", file=stream, flush=True)

    try:
        objects_before = client.get_size()
        started = time.monotonic()
        client.pack(progress=report)
        seconds = time.monotonic() - started
        objects_after = client.get_size()
    finally:
        client.close()
    if not quiet:
        print(
            f"{PROG} pack: server at {where}: {objects_before} -> {objects_after} objects"
            f" in {seconds:.2f} s",
            file=stream,
        )
    return 0


def run_pack(args: argparse.Namespace) -> int:
    """Pack the file database at ``args.path``, or the database of a running server."""
    from dhruva.file_pack import PackProgress
    from dhruva.file_storage import FileStorage, FileStorage2

    if args.path is None:
        return run_pack_through_server(args)
    if _server_named(args):
        raise AdminError(
            "give a database PATH or a server address (--host/--port/--address), not both"
        )
    path: str = args.path
    quiet: bool = args.quiet
    _require_file(path)
    # Keep the kind of storage the database is used with: a sidecar index
    # is written only where there is one already (or when asked).
    use_index = args.index or os.path.exists(path + ".index")
    cls = FileStorage if use_index else FileStorage2
    stream: TextIO = sys.stderr
    last_report = [time.monotonic()]

    def report(progress: PackProgress) -> None:
        now = time.monotonic()
        if quiet or progress.phase == "done" or now - last_report[0] < PROGRESS_INTERVAL_S:
            return
        last_report[0] = now
        print(
            f"{PROG} pack: {progress.records_copied} of at most {progress.objects_before} "
            f"objects copied ({_mebibytes(progress.bytes_copied)}, {progress.seconds:.1f} s)",
            file=stream,
            flush=True,
        )

    storage = cls(path)
    try:
        size_before = os.path.getsize(path)
        objects_before = storage.get_size()
        started = time.monotonic()
        storage.pack(progress=report)
        seconds = time.monotonic() - started
        objects_after = storage.get_size()
    finally:
        storage.close()
    if not quiet:
        print(
            f"{PROG} pack: {path}: {objects_before} -> {objects_after} objects, "
            f"{_mebibytes(size_before)} -> {_mebibytes(os.path.getsize(path))} "
            f"in {seconds:.2f} s",
            file=stream,
        )
    return 0


def _configure_pack(parser: argparse.ArgumentParser) -> None:

    parser.add_argument(
        "path",
        metavar="PATH",
        nargs="?",
        help="the data file of a FileStorage not in use; without PATH, pack the database of"
        " the running server named by --host/--port/--address (or the configuration)",
    )
    common.add_address_options(parser)
    dconfig.add_config_option(parser)
    dconfig.add_setting_flags(parser, common.CLIENT_SECURITY_KEYS, "authentication and TLS")
    parser.add_argument(
        "--index",
        action="store_true",
        help="write a sidecar index (PATH.index) for the packed file even if there is none",
    )
    _quiet_option(parser, "print nothing but errors")


# --- dhruva history --------------------------------------------------------------------


def _format_time(time_us: int) -> str:
    moment = dt.datetime.fromtimestamp(time_us / 1e6, tz=dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def run_history(args: argparse.Namespace) -> int:
    """List the committed transactions of ``args.path``."""
    from dhruva.history import iter_transactions

    out: TextIO = sys.stdout
    _require_file(args.path)
    if args.last is not None and args.last < 0:
        raise AdminError(f"--last {args.last}: give 0 or more transactions")
    transactions = iter_transactions(args.path)
    if args.last is not None:
        from collections import deque

        transactions = iter(deque(transactions, maxlen=args.last))
    if not args.quiet:
        print(f"{'tid':>10}  {'time (UTC)':<24}  {'bytes':>12}  {'records':>8}", file=out)
    for txn in transactions:
        print(
            f"{txn.tid:>10}  {_format_time(txn.time_us):<24}  {txn.size_bytes:>12}  "
            f"{txn.record_count:>8}",
            file=out,
        )
    return 0


def _configure_history(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", metavar="PATH", help="the data file of a FileStorage")
    parser.add_argument("--last", type=int, metavar="N", help="list only the last N transactions")
    _quiet_option(parser, "omit the heading line")


# --- dhruva restore --------------------------------------------------------------------


def run_restore(args: argparse.Namespace) -> int:
    """Write ``args.output``, the database ``args.path`` as of transaction ``args.at``."""
    from dhruva.history import restore

    _require_file(args.path)
    result = restore(args.path, args.at, args.output)
    if not args.quiet:
        print(
            f"{PROG} restore: wrote {result.path} as of tid {result.last_tid} "
            f"({result.transactions} transactions, {_mebibytes(result.size_bytes)})",
            file=sys.stderr,
        )
    return 0


def _configure_restore(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", metavar="PATH", help="the data file to read (not modified)")
    parser.add_argument(
        "--at",
        type=int,
        required=True,
        metavar="TID",
        help="the transaction id to restore to (see 'dhruva history PATH')",
    )
    parser.add_argument(
        "--output",
        "-o",
        required=True,
        metavar="NEWPATH",
        help="the new data file to write (must not exist)",
    )
    _quiet_option(parser, "print nothing but errors")


# --- dhruva backup ---------------------------------------------------------------------


def run_backup(args: argparse.Namespace) -> int:
    """Copy ``args.source`` to ``args.dest`` consistently, also while it is written to."""
    from dhruva.backup import backup

    _require_file(args.source)
    with open(args.source, "rb") as source_file:
        head = source_file.read(16)
    if head == b"SQLite format 3\x00":
        # SQLite databases are copied with SQLite's own online backup API.
        from dhruva import sqlite_storage

        sqlite_storage.backup(args.source, args.dest)
        if not args.quiet:
            print(f"{PROG} backup: wrote {args.dest} (SQLite online backup)", file=sys.stderr)
        return 0
    result = backup(args.source, args.dest)
    if not args.quiet:
        note = ""
        if result.dropped_tail_bytes:
            note = f"; left out {result.dropped_tail_bytes} bytes of a commit in progress"
        print(
            f"{PROG} backup: wrote {result.path} up to tid {result.last_tid} "
            f"({result.transactions} transactions, {_mebibytes(result.size_bytes)}){note}",
            file=sys.stderr,
        )
    return 0


def _configure_backup(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="SOURCE", help="the data file to copy (may be in use)")
    parser.add_argument("dest", metavar="DEST", help="the new data file to write (must not exist)")
    _quiet_option(parser, "print nothing but errors")


# --- registration ----------------------------------------------------------------------

SUBCOMMANDS: tuple[tuple[str, str, str, Callable[[argparse.ArgumentParser], None], Run], ...] = (
    (
        "pack",
        "remove unreachable objects and old revisions from a file database",
        "Rewrite PATH keeping only the objects reachable from the root. The database "
        "must not be open in another process (use the server's pack for a running "
        "server). A crash at any point leaves the old or the new database. History "
        "before the pack is gone afterwards: take a backup first to keep it.",
        _configure_pack,
        run_pack,
    ),
    (
        "history",
        "list the committed transactions of a file database",
        "Print tid, commit time (UTC), size and record count of every transaction "
        "in PATH, oldest first. Reads without the lock, so it works while a server "
        "has the database open.",
        _configure_history,
        run_history,
    ),
    (
        "restore",
        "write a new database as of a chosen transaction",
        "Write NEWPATH holding the transactions of PATH up to and including TID: the "
        "database as it was after that commit, with its history. PATH is not modified.",
        _configure_restore,
        run_restore,
    ),
    (
        "backup",
        "copy a file database consistently, also while a server writes to it",
        "Copy SOURCE to DEST up to the last complete transaction, verify the copy, "
        "fsync it and rename it into place. Safe while a server commits to SOURCE: "
        "the copy holds a prefix of its commits.",
        _configure_backup,
        run_backup,
    ),
)


def register(subparsers: Any) -> None:
    """Add ``pack``, ``history``, ``restore`` and ``backup`` to ``subparsers``.

    ``subparsers`` is what ``ArgumentParser.add_subparsers()`` returned; each
    subcommand sets ``run`` (arguments -> exit status) as its default.
    """
    for name, help_text, description, configure, run in SUBCOMMANDS:
        parser = subparsers.add_parser(name, help=help_text, description=description)
        configure(parser)
        parser.set_defaults(run=_fail_softly(name, run))


def register_commands(
    register_subcommand: Callable[
        [str, str, Callable[[argparse.ArgumentParser], None], Run],
        None,
    ],
) -> None:
    """Register the four subcommands through ``dhruva.tools.cli.register_subcommand``.

    The same commands as :func:`register`, for the registry in ``dhruva/tools/cli.py``
    (which shows the one-line help as the description).
    """
    for name, help_text, _description, configure, run in SUBCOMMANDS:
        register_subcommand(name, help_text, configure, _fail_softly(name, run))


def build_parser() -> argparse.ArgumentParser:
    """A parser with only the administration subcommands (tests, ``python -m``)."""
    parser = argparse.ArgumentParser(prog=PROG, description="dhruva administration commands")
    register(parser.add_subparsers(dest="command", metavar="COMMAND"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one administration subcommand; return its exit status."""
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    run: Run | None = getattr(args, "run", None)
    if run is None:
        parser.print_help(sys.stderr)
        return 2
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
