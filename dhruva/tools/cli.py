"""The ``dhruva`` command: ``dhruva -s`` (server), ``dhruva -c`` (console), subcommands.

Spec: ``spec/server.md`` ("The dhruva command", ``CLI-*``).

Structure.  The command is a set of subcommands (``server``, ``console``, and
whatever later tools register with :func:`register_subcommand`, such as
``pack`` or ``verify``).  The Durus-style flags ``-s`` and ``-c`` are kept:
``dhruva -s ARGS`` means ``dhruva server ARGS`` and ``dhruva -c ARGS`` means
``dhruva console ARGS`` [CLI-001].

Errors users can cause (address in use, no server running, file locked, a
file that is not a dhruva database) print one line on standard error and exit
with status 1 [CLI-010]; no traceback.
"""

from __future__ import annotations

import argparse
import code
import logging
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any

from dhruva.client_storage import ServerConnectionError
from dhruva.error import AuthenticationError, DhruvaError
from dhruva.serialize import SERIALIZER_NAMES
from dhruva.server.address import format_address
from dhruva.server.storage_server import StorageServer
from dhruva.storage import Storage
from dhruva.tools import admin, dbtools, mcp_server
from dhruva.tools import config as dconfig
from dhruva.tools.common import (
    CLIENT_SECURITY_KEYS,
    CommandError,
    add_address_options,
    connect_client,
    open_client,
    settings_from,
)

if TYPE_CHECKING:
    from dhruva.connection import Connection

PROG = "dhruva"


@dataclass(frozen=True)
class Subcommand:
    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


_SUBCOMMANDS: dict[str, Subcommand] = {}


def register_subcommand(
    name: str,
    help: str,
    configure: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace], int],
) -> None:
    """Add ``dhruva NAME``: ``configure`` adds its options, ``run`` returns the exit status.

    Raise :class:`CommandError` from ``run`` for a one-line error.
    """
    _SUBCOMMANDS[name] = Subcommand(name, help, configure, run)


_SERVER_SECURITY_KEYS = [
    "secret_file",
    "tls_cert",
    "tls_key",
    "tls_ca",
    "tls_require_client_cert",
    "tls_client_cert",
    "tls_client_key",
    "tls_server_name",
]
_SERVING_KEYS = ["gcinterval", "readonly", "log_file", "log_level", "log_format"]
_LIMIT_KEYS = [
    "handshake_timeout_s",
    "idle_timeout_s",
    "max_frame_bytes",
    "max_pending_requests",
    "max_pending_bytes",
    "max_staged_bytes",
    "max_staged_blob_bytes",
    "max_staged_blobs",
]


def open_file_storage(path: str, readonly: bool = False) -> Storage:
    """Open the FileStorage at ``path``; user errors become CommandError."""
    from dhruva.file_storage import FileStorage

    try:
        storage: Storage = FileStorage(path, readonly=readonly)
    except DhruvaError as error:
        # [CLI-010] Locked, damaged or foreign files: one line, status 1.
        raise CommandError(f"cannot open {path}: {error}") from None
    except OSError as error:
        detail = error.strerror or str(error)
        if error.filename and error.filename != path:
            # A side file failed (PATH.index, PATH.lock): name it, not PATH.
            detail = f"{error.filename}: {detail}"
        raise CommandError(f"cannot open {path}: {detail}") from None
    return storage


def add_postgres_option(parser: argparse.ArgumentParser, what: str) -> None:
    """Add ``--postgres DSN``: use a PostgreSQL database instead of a file (PG, CLI)."""
    parser.add_argument(
        "--postgres",
        metavar="DSN",
        default=None,
        help=f"{what} the dhruva database in PostgreSQL at this libpq connection string "
        "(needs pip install 'dhruva[postgres]')",
    )


def open_postgres_storage(dsn: str, readonly: bool = False) -> Storage:
    """Open PostgresStorage on ``dsn``; every failure becomes a one-line CommandError."""
    from dhruva.postgres_storage import PostgresStorage

    try:
        return PostgresStorage(dsn, readonly=readonly)
    except DhruvaError as error:
        # [CLI-010] Unreachable, refused, foreign or missing extra: one line, status 1.
        raise CommandError(f"cannot open the PostgreSQL database: {error}") from None


# --- dhruva -s ----------------------------------------------------------------------


def _configure_server(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--file",
        metavar="PATH",
        help="the database file to serve (default: a temporary file removed at stop)",
    )
    add_postgres_option(parser, "serve")
    add_address_options(parser)
    dconfig.add_config_option(parser)
    dconfig.add_setting_flags(parser, _SERVING_KEYS, "serving")
    parser.add_argument(
        "--stop",
        action="store_true",
        help="stop the server running at the given address instead of starting one",
    )
    dconfig.add_setting_flags(parser, _SERVER_SECURITY_KEYS, "authentication and TLS")
    dconfig.add_setting_flags(parser, _LIMIT_KEYS, "per-connection limits")


def _stop_server(settings: dconfig.Settings) -> int:
    address = settings.server_address()
    try:
        # [CLI-022] --stop speaks TLS and authenticates with the server's settings.
        client = open_client(settings)
    except AuthenticationError as error:
        raise CommandError(f"cannot stop the server: {error}") from None
    except dconfig.ConfigError as error:
        raise CommandError(str(error)) from None
    except DhruvaError as error:
        if "cannot connect" in str(error):
            # [CLI-011] Stopping a server that is not running is an error.
            raise CommandError(
                f"no dhruva server is running at {format_address(address)}"
            ) from None
        raise CommandError(f"cannot stop the server: {error}") from None
    client.stop_server()
    return 0


def run_server(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    address = settings.server_address()
    if args.stop:
        return _stop_server(settings)
    try:
        dconfig.configure_logging(settings)
        tls = settings.server_tls_context()
        secret = settings.secret_bytes()
        limits = settings.limits()
    except dconfig.ConfigError as error:
        raise CommandError(str(error)) from None
    if settings.secret_file and not settings.secret:
        from dhruva.server.security import secret_file_is_private

        if not secret_file_is_private(settings.secret_file):
            logging.getLogger("dhruva.server").warning(
                "the secret file %s may be read by other users; chmod 600 it",
                settings.secret_file,
            )
    temp_dir: str | None = None
    if getattr(args, "postgres", None):
        storage = open_postgres_storage(args.postgres, readonly=settings.readonly)
        described = f"PostgreSQL {storage!r}"
    elif settings.file:
        storage = open_file_storage(settings.file, readonly=settings.readonly)
        described = settings.file
    else:
        if settings.readonly:
            raise CommandError("--readonly needs --file: a new temporary file would stay empty")
        # [CLI-020] Without --file the server uses a temporary file removed at stop.
        temp_dir = tempfile.mkdtemp(prefix="dhruva-")
        temp_path = os.path.join(temp_dir, "temp.dhruva")
        storage = open_file_storage(temp_path)
        described = f"the temporary file {temp_path} (removed at stop)"
    try:
        try:
            server = StorageServer(
                storage,
                address,
                gcinterval=settings.gcinterval,
                readonly=settings.readonly,
                tls=tls,
                secret=secret,
                limits=limits,
            )
        except OSError as error:
            raise CommandError(
                f"cannot listen on {format_address(address)}: {error.strerror or error}"
                " (is another server running there? choose another --port or --address)"
            ) from None

        def on_signal(signum: int, frame: FrameType | None) -> None:
            server.stop()

        # [CLI-021] Control-C and SIGTERM stop the server cleanly.
        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        logging.getLogger("dhruva.server").info("serving %s", described)
        try:
            server.serve()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    finally:
        storage.close()
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)
    return 0


# --- dhruva -c ----------------------------------------------------------------------


def _configure_console(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--file",
        metavar="PATH",
        help="open this database file directly and exclusively instead of a server",
    )
    add_postgres_option(parser, "open")
    add_address_options(parser)
    dconfig.add_config_option(parser)
    dconfig.add_setting_flags(parser, CLIENT_SECURITY_KEYS, "authentication and TLS")
    parser.add_argument(
        "--readonly", action="store_true", help="with --file: open the file read-only"
    )
    parser.add_argument(
        "--cache-size", type=int, default=None, help="the connection's object cache size"
    )
    parser.add_argument(
        "--serializer",
        choices=SERIALIZER_NAMES,
        default=None,
        help=(
            "write records with this serializer (default: the one that wrote the root; "
            "pickle for a new database)"
        ),
    )
    parser.add_argument(
        "--allow",
        action="append",
        metavar="NAME",
        default=None,
        help="restricted loading: allow this class, module or package.* (repeatable)",
    )
    _add_durus_console_options(parser)


def _add_durus_console_options(parser: argparse.ArgumentParser) -> None:
    # [CLI-034] A class map, as dhruva mcp and import-durus take.
    mcp_server.add_class_map_option(parser)
    # [CLI-031] Durus's ``durus -c --startup FILE``, with Durus's meaning.
    parser.add_argument(
        "--startup",
        metavar="FILE",
        default=None,
        help="run this Python file in the console's namespace before the first prompt",
    )


def _run_startup(path: str | None, namespace: dict[str, Any]) -> None:
    """Run the ``--startup`` file in the console namespace; a missing file is one line."""
    if path is None:
        return
    full = os.path.expanduser(path)
    try:
        with open(full, encoding="utf-8") as file:
            source = file.read()
    except OSError as error:
        raise CommandError(f"cannot read the startup file {full}: {error.strerror}") from None
    exec(compile(source, full, "exec"), namespace)


ConnectionFactory = Callable[[], "Connection"]
"""Opens the console's Connection on a new storage (may raise DhruvaError)."""


def _lost_server_error(error: BaseException) -> ServerConnectionError | None:
    """The ServerConnectionError that ``error`` is or was raised from, if any (TOOL-060).

    The console decides by type, never by message text: a lost server can
    surface directly (a load, a commit) or as the cause or context of another
    error (a load inside ``__getattr__`` of a ghost).
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, ServerConnectionError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


class _Console(code.InteractiveConsole):
    """The ``dhruva -c`` console: quiet without a terminal, and it outlives a server restart.

    Theory of operation (TOOL-060..TOOL-062).  The console's namespace binds
    ``connection``, ``root`` and ``storage``.  When the code of a line raises
    :class:`ServerConnectionError` and ``open_connection`` is given (a
    console on a server), the console first asks its own storage for its
    size, one harmless round trip.  If that answers, the error came from a
    storage the user opened, which is theirs: the traceback is shown as for
    any error.  Otherwise the console's server is gone: the console prints
    one line saying so, opens a new storage and Connection with the same
    options, closes the old connection (its objects then raise "this
    connection is closed" rather than reconnecting again), rebinds the three
    names, and says how many uncommitted changes were dropped.  The line that
    failed is not run again: it may have done part of its work.  If the
    server does not answer yet, one line says so and ``reconnect()`` tries
    again.
    """

    def __init__(
        self,
        namespace: dict[str, Any],
        interactive: bool,
        connection: Connection,
        where: str,
        open_connection: ConnectionFactory | None = None,
    ) -> None:
        super().__init__(namespace)
        self._interactive = interactive
        self._connection = connection
        self._where = where
        self._open_connection = open_connection
        if open_connection is not None:
            namespace["reconnect"] = self.reconnect

    def raw_input(self, prompt: str = "") -> str:
        if self._interactive:
            return _read_interactive_line(self.locals, prompt)
        line = sys.stdin.readline()
        if not line:
            raise EOFError
        return line.rstrip("\n")

    def runcode(self, code: Any) -> None:
        try:
            exec(code, self.locals)
        except SystemExit:
            raise
        except BaseException as error:
            lost = _lost_server_error(error)
            if lost is None or self._open_connection is None:
                self.showtraceback()
            elif self._current_storage_answers():
                # [TOOL-062] A storage of the user's own lost its server, not the
                # console's: theirs to handle, with the usual traceback.
                self.showtraceback()
            else:
                # [TOOL-060] One line, then reconnect.
                self.write(f"{PROG}: lost the connection to {self._where}; reconnecting\n")
                self.reconnect()

    @property
    def storage(self) -> Storage:
        """The storage of the console's current connection."""
        return self._connection.storage

    def _current_storage_answers(self) -> bool:
        try:
            self._connection.storage.get_size()
        except (ServerConnectionError, OSError):
            return False
        except DhruvaError:
            return True  # it answered, if with an error: the server is there
        return True

    def reconnect(self) -> bool:
        """Open a new connection to the server and rebind ``connection``, ``root``, ``storage``.

        The console's ``reconnect()`` (TOOL-061): uncommitted changes of the
        old connection are dropped, and the console says how many.  Returns
        True when connected; when the server does not answer, prints one line
        and returns False, leaving the old names bound.
        """
        if self._open_connection is None:
            raise DhruvaError(
                "this console opened a file, not a server: there is nothing to reconnect"
            )
        namespace = self.locals
        old = self._connection
        dropped = len(old.changed)
        try:
            connection = self._open_connection()
            try:
                root = connection.get_root()
            except BaseException:
                connection.close()
                raise
        except DhruvaError as error:
            # [TOOL-061] Not back yet (or refusing us): one line, and how to retry.
            self.write(f"{PROG}: cannot reconnect: {error}\n")
            self.write("type reconnect() to try again\n")
            return False
        try:
            old.close()
        except DhruvaError:
            pass  # its storage is already broken; closing only frees the socket
        self._connection = connection
        namespace.update(connection=connection, root=root, storage=connection.storage)
        namespace["_dhruva_warned_eof"] = False
        # [TOOL-060] Say what was lost.
        self.write(
            f"reconnected to {self._where}; {dropped} uncommitted changes were dropped;"
            " connection and root are new: fetch objects kept in other variables again"
            " from root\n"
        )
        return True


UNCOMMITTED_WARNING = (
    "there are uncommitted changes to {count} objects: connection.commit() writes them; "
    "Ctrl-D again leaves without them"
)


def _read_interactive_line(namespace: Any, prompt: str) -> str:
    """Read one console line; the first Ctrl-D with uncommitted changes only warns (CLI-032).

    ``namespace`` is the console's; its ``connection`` tells whether changes are
    pending.  A second Ctrl-D in a row leaves the console as before (CLI-030:
    nothing is committed on the user's behalf).
    """
    try:
        line = input(prompt)
    except EOFError:
        connection = namespace.get("connection")
        pending = len(getattr(connection, "changed", ()))
        if pending and not namespace.get("_dhruva_warned_eof"):
            namespace["_dhruva_warned_eof"] = True
            print("\n" + UNCOMMITTED_WARNING.format(count=pending), file=sys.stderr)
            return ""
        raise
    namespace["_dhruva_warned_eof"] = False
    return line


HISTORY_ENV = "DHRUVA_HISTORY"
"""The environment variable naming the console's history file (default ~/.dhruva_history)."""


def _history_path() -> str:
    return os.environ.get(HISTORY_ENV) or os.path.expanduser("~/.dhruva_history")


def _load_history() -> str | None:
    """Load the console history into readline (CLI-033); return the file to save it to."""
    try:
        import readline
    except ImportError:
        return None
    path = _history_path()
    try:
        readline.read_history_file(path)
    except FileNotFoundError:
        pass
    except OSError as error:
        print(f"{PROG}: console history {path} not read: {error.strerror}", file=sys.stderr)
    readline.set_history_length(1000)
    return path


def _save_history(path: str | None) -> None:
    if path is None:
        return
    import readline

    try:
        readline.write_history_file(path)
    except OSError as error:
        print(f"{PROG}: console history {path} not saved: {error.strerror}", file=sys.stderr)


def _enable_completion(namespace: dict[str, Any]) -> None:
    try:
        import readline
        import rlcompleter
    except ImportError:
        return
    readline.set_completer(rlcompleter.Completer(namespace).complete)
    if "libedit" in (readline.__doc__ or ""):
        readline.parse_and_bind("bind ^I rl_complete")
    else:
        readline.parse_and_bind("tab: complete")


def run_console(args: argparse.Namespace) -> int:
    from dhruva.connection import Connection

    storage: Storage
    reopen: Callable[[], Storage] | None = None
    console: _Console | None = None
    if getattr(args, "postgres", None):
        storage = open_postgres_storage(args.postgres, readonly=args.readonly)
        where = f"PostgreSQL {storage!r}"
    elif args.file:
        storage = open_file_storage(args.file, readonly=args.readonly)
        where = args.file
    else:
        # The console opens a file only when --file is given: a config file's
        # "file" is the server's database, which the server holds locked.
        settings = settings_from(args)
        storage = connect_client(settings)
        where = f"the server at {format_address(settings.server_address())}"

        def reopen() -> Storage:
            # [TOOL-060] The same address, TLS and secret as the first time.
            try:
                return open_client(settings)
            except dconfig.ConfigError as error:
                raise DhruvaError(str(error)) from None

    try:
        options: dict[str, Any] = {}
        if args.cache_size is not None:
            options["cache_size"] = args.cache_size
        if args.serializer:
            options["serializer"] = args.serializer
        if args.allow is not None:
            options["allowed_classes"] = args.allow
        try:
            class_map = mcp_server.parse_class_map(args.map)
            if class_map:
                options["class_map"] = class_map
            connection = Connection(storage, **options)
            root = connection.get_root()
        except (DhruvaError, ValueError, TypeError) as error:
            # [CLI-010] A bad option value or a database without a root that a
            # read-only console cannot create: one line, not a traceback.
            raise CommandError(f"cannot open the console on {where}: {error}") from None
        namespace: dict[str, Any] = {
            "__name__": "__console__",
            "connection": connection,
            "root": root,
            "storage": storage,
        }
        open_connection: ConnectionFactory | None = None
        if reopen is not None:
            open_storage = reopen

            def open_connection() -> Connection:
                new_storage = open_storage()
                try:
                    return Connection(new_storage, **options)
                except BaseException:
                    new_storage.close()
                    raise

        interactive = sys.stdin.isatty()
        console = _Console(namespace, interactive, connection, where, open_connection)
        _run_startup(args.startup, namespace)
        if interactive:
            _enable_completion(namespace)
        banner = (
            f"dhruva console on {where}\n"
            "    root is the root object, connection its Connection:\n"
            "    connection.commit() writes your changes, connection.abort() drops them."
        )
        history = _load_history() if interactive else None
        try:
            # [CLI-030] Nothing is committed on exit: the console never writes on its own.
            console.interact(banner=banner if interactive else "", exitmsg="")
        finally:
            _save_history(history)
    finally:
        # The storage the console ends with: the first, or the last reconnect's
        # (each reconnect closed the one before).
        (console.storage if console is not None else storage).close()
    return 0


def _configure_config(parser: argparse.ArgumentParser) -> None:
    add_address_options(parser)
    dconfig.add_config_option(parser)
    parser.add_argument("--file", metavar="PATH", default=None, help="the database file")
    dconfig.add_setting_flags(parser, _SERVING_KEYS, "serving")
    dconfig.add_setting_flags(
        parser, sorted(set(_SERVER_SECURITY_KEYS) | {"tls"}), "authentication and TLS"
    )
    dconfig.add_setting_flags(parser, _LIMIT_KEYS, "per-connection limits")


def run_config(args: argparse.Namespace) -> int:
    """Print the effective settings and where each came from [CFG-010]."""
    print(dconfig.format_description(settings_from(args)))
    return 0


register_subcommand(
    "server", "run a storage server (also: dhruva -s)", _configure_server, run_server
)
register_subcommand(
    "config",
    "print the effective settings and where each came from (file, env, flag, default)",
    _configure_config,
    run_config,
)
register_subcommand(
    "console",
    "open an interactive Python console (also: dhruva -c)",
    _configure_console,
    run_console,
)


# The MCP server for AI agents (needs the optional ``mcp`` extra at run time).
register_subcommand("mcp", mcp_server.HELP, mcp_server.configure, mcp_server.run)

# Database tools (verify, dump, stats, convert, import-durus) register themselves.

dbtools.register_commands(register_subcommand)

# Pack, history, restore and backup of file databases.

admin.register_commands(register_subcommand)

_FLAG_ALIASES = {"-s": "server", "--server": "server", "-c": "console", "--client": "console"}


def _rewrite_flags(argv: list[str]) -> list[str]:
    """Turn Durus-style ``-s``/``-c`` into the subcommand they stand for [CLI-001]."""
    head = argv[: argv.index("--")] if "--" in argv else argv
    found = [arg for arg in head if arg in _FLAG_ALIASES]
    if not found:
        return argv
    if len({_FLAG_ALIASES[arg] for arg in found}) > 1:
        raise CommandError("use -s (server) or -c (console), not both")
    rest = [arg for arg in argv if arg not in _FLAG_ALIASES]
    return [_FLAG_ALIASES[found[0]], *rest]


# Durus 4.3's ``durus -s``/``durus -c`` flags that dhruva spells differently
# [CLI-031]: accepted under Durus's name when the meaning is the same, and
# otherwise refused with one line saying what to use instead.
_DURUS_FLAG_RENAMES = {"--cache_size": "--cache-size"}
_DURUS_FLAG_ADVICE = {
    "--logginglevel": (
        "--loglevel LEVEL (a name: DEBUG, INFO, WARNING, ERROR; Durus's 20 is INFO)"
    ),
    "--gcbytes": ("--gcinterval SECONDS (pack on a timer; dhruva does not count bytes written)"),
    "--storage-class": (
        "--file PATH for a FileStorage, or a configuration file (--config) for another back-end"
    ),
    "--repair": (
        "FileStorage(PATH, repair=True) in Python once, after 'dhruva verify PATH' "
        "shows the damage (the cut bytes are kept in PATH.trN)"
    ),
    "--owner": "a Unix socket in a directory with the owner you want (chown the directory)",
    "--group": "a Unix socket in a directory with the group you want (chgrp the directory)",
    "--umask": "'umask' in the shell before 'dhruva -s' (the socket file is created with it)",
}


def _translate_durus_flags(argv: list[str]) -> list[str]:
    """Rename the Durus flags dhruva accepts; refuse the others with advice [CLI-031]."""
    head = argv[: argv.index("--")] if "--" in argv else argv
    translated: list[str] = []
    for position, arg in enumerate(argv):
        name, equals, value = arg.partition("=")
        if position < len(head) and name in _DURUS_FLAG_RENAMES:
            arg = _DURUS_FLAG_RENAMES[name] + equals + value
        elif position < len(head) and name in _DURUS_FLAG_ADVICE:
            raise CommandError(
                f"{name} is Durus's option, which dhruva does not take; "
                f"use {_DURUS_FLAG_ADVICE[name]}"
            )
        translated.append(arg)
    return translated


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "dhruva, a persistent object database for Python. "
            "'dhruva -s' runs a storage server, 'dhruva -c' opens a console."
        ),
        epilog="Run 'dhruva COMMAND --help' for the options of one command.",
    )
    from dhruva import __version__

    parser.add_argument("--version", action="version", version=f"dhruva {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for sub in _SUBCOMMANDS.values():
        child = subparsers.add_parser(sub.name, help=sub.help, description=sub.help)
        sub.configure(child)
        child.set_defaults(run=sub.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``dhruva`` command; return its exit status."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    try:
        args_list = _translate_durus_flags(_rewrite_flags(args_list))
        parser = build_parser()
        args = parser.parse_args(args_list)
        if getattr(args, "run", None) is None:
            parser.print_help(sys.stderr)
            return 2
        status: int = args.run(args)
        return status
    except CommandError as error:
        print(f"{PROG}: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader of our output went away (``dhruva dump | head``): stop
        # quietly, and keep Python from complaining when it flushes stdout.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
