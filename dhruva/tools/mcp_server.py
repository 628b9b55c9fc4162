"""``dhruva mcp``: a database served to AI agents over the Model Context Protocol.

Spec: ``spec/mcp.md`` (``MCP-*``).  Guide: ``docs/guide/mcp.md``.

Theory of operation.  :func:`open_browser` opens the source -- a database
file (read-only unless writes are allowed) or a running storage server
through ClientStorage -- in one Connection, and wraps it in an
:class:`~dhruva.tools.object_browser.ObjectBrowser`, which answers every question
with JSON.  :func:`build_server` registers one MCP tool per browser method
with the official MCP Python SDK (an optional extra: ``pip install
'dhruva[mcp]'``); the write tools exist only when writes are allowed.
:func:`serve` runs the server over stdio, or over streamable HTTP on
127.0.0.1 behind a bearer-token check (:class:`BearerTokenGuard`).

The SDK is imported only when a server is built, so ``import
dhruva.tools.mcp_server`` works without it, and a missing SDK is one line naming
the command that installs it (MCP-002).
"""

from __future__ import annotations

import argparse
import hmac
import importlib
import importlib.util
import json
import os
import secrets
import signal
import socket
import sys
import threading
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from types import FrameType
from typing import Any

from dhruva.class_registry import ClassRegistry
from dhruva.error import DhruvaError
from dhruva.storage import Storage
from dhruva.tools.object_browser import DEFAULT_MAX_OBJECTS, ObjectBrowser
from dhruva.utils import ROOT_OID

__all__ = [
    "HELP",
    "BearerTokenGuard",
    "MissingSDKError",
    "build_server",
    "configure",
    "main",
    "open_browser",
    "register",
    "run",
    "serve",
]

HELP = "serve a database to AI agents over the Model Context Protocol (MCP)"
INSTALL_HINT = "pip install 'dhruva[mcp]'"
HTTP_HOST = "127.0.0.1"
HTTP_PATH = "/mcp"
TOKEN_ENV = "DHRUVA_MCP_TOKEN"

INSTRUCTIONS = """\
Tools for one dhruva object database.  Paths start at 'root' (or '@OID' for
the object with that oid) followed by steps: '/NAME' is a string key of a
mapping or else an attribute, '[JSON]' is a key or a list index, e.g.
root/users/alice/orders[3] or root/tree[42] or root["a/b"].  Values: JSON
scalars as themselves, persistent objects as {"$ref": OID, "class": ...},
anything else as {"$type": ..., "$repr": ...}.  Start with browse('root').
"""

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class MissingSDKError(DhruvaError):
    """The MCP Python SDK is not installed."""


class CommandFailed(DhruvaError):
    """A user-facing failure of ``dhruva mcp``: one line on stderr, exit status 1."""


# --- the source --------------------------------------------------------------------------


def parse_address(text: str) -> tuple[str, int] | str:
    """``host:port`` becomes a TCP address; anything with a ``/`` is a Unix socket path."""
    if "/" in text:
        return text
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise CommandFailed(f"--address {text!r} is neither HOST:PORT nor a socket path")
    return host, int(port)


def open_browser(
    path: str | None = None,
    *,
    address: tuple[str, int] | str | None = None,
    allow_writes: bool = False,
    allowed_classes: Sequence[str] | None = None,
    class_map: dict[str, str] | None = None,
) -> ObjectBrowser:
    """Open the database at ``path`` or the server at ``address`` for browsing.

    A file is opened read-only unless ``allow_writes`` (MCP-041).
    ``allowed_classes`` (None: unrestricted) is the allow-list every record
    is read through (MCP-050).  ``class_map`` maps old class paths to new ones
    (OBJ-050, MCP-064).  Raises CommandFailed with a one-line reason.
    """
    from dhruva.connection import Connection

    if (path is None) == (address is None):
        raise CommandFailed("give a database FILE or --address, not both or neither")
    if path is not None and not allow_writes and not os.path.exists(path):
        raise CommandFailed(f"cannot open {path}: no such file")
    storage: Storage
    try:
        if path is not None:
            from dhruva.file_storage import FileStorage

            # [MCP-041] Without --allow-writes the file is opened read-only.
            storage = FileStorage(path, readonly=not allow_writes)
            source = path
        else:
            from dhruva.client_storage import ClientStorage
            from dhruva.server.address import format_address

            assert address is not None
            storage = ClientStorage(address)
            source = format_address(address)
    except DhruvaError as error:
        raise CommandFailed(f"cannot open {path or address}: {error}") from None
    except OSError as error:
        raise CommandFailed(f"cannot open {path or address}: {error.strerror or error}") from None
    registry = None if allowed_classes is None else ClassRegistry(list(allowed_classes))
    try:
        if not allow_writes:
            # A Connection creates a missing root; a read-only session must not.
            storage.load(ROOT_OID)
        connection = Connection(storage, allowed_classes=registry, class_map=class_map)
    except DhruvaError as error:
        storage.close()
        raise CommandFailed(f"cannot read {source}: {error}") from None
    return ObjectBrowser(connection, allow_writes=allow_writes, registry=registry, source=source)


# --- the MCP server -------------------------------------------------------------------------


def _sdk() -> tuple[type[Any], type[Exception]]:
    """Return ``(server class, ToolError)`` of the installed SDK (2.x MCPServer or 1.x FastMCP)."""
    # The SDK is imported by name: it is optional, and type checking dhruva
    # must not need it.
    if importlib.util.find_spec("mcp") is None:
        # [MCP-002] One line naming what to install.
        raise MissingSDKError(
            f"dhruva mcp needs the MCP Python SDK, which is not installed: {INSTALL_HINT}"
        )
    try:
        mcpserver = importlib.import_module("mcp.server.mcpserver")
        exceptions = importlib.import_module("mcp.server.mcpserver.exceptions")
        return mcpserver.MCPServer, exceptions.ToolError
    except ImportError:
        pass
    try:
        # mcp 1.x called the server FastMCP.
        fastmcp = importlib.import_module("mcp.server.fastmcp")
        exceptions = importlib.import_module("mcp.server.fastmcp.exceptions")
        return fastmcp.FastMCP, exceptions.ToolError
    except ImportError as error:
        # Installed but unusable (too old, or at odds with its dependencies).
        raise MissingSDKError(
            f"the installed MCP Python SDK cannot be used ({error}); "
            f"upgrade it: {INSTALL_HINT.replace('pip install', 'pip install -U')}"
        ) from None


def build_server(browser: ObjectBrowser, *, name: str = "dhruva") -> Any:
    """Return an MCP server (the SDK's MCPServer/FastMCP) with the browser's tools.

    The read tools are always registered; ``set_value``, ``delete``,
    ``commit`` and ``abort`` only when ``browser.allow_writes`` (MCP-040).
    Raises MissingSDKError when the SDK is not installed.
    """
    server_class, tool_error = _sdk()
    server = server_class(name, instructions=INSTRUCTIONS)

    def call(method: Callable[..., dict[str, Any]], *args: Any, **kwargs: Any) -> dict[str, Any]:
        try:
            return method(*args, **kwargs)
        except (DhruvaError, LookupError, TypeError, ValueError) as error:
            # [MCP-003] An anticipated failure reaches the agent as its message.
            raise tool_error(str(error) or type(error).__name__) from error

    def browse(path: str = "root", offset: int = 0, limit: int = 50) -> dict[str, Any]:
        """Describe the value at PATH and list a page of its keys, items or attributes,
        each with the path that reaches it."""
        return call(browser.browse, path, offset, limit)

    def inspect(path: str | None = None, oid: int | None = None, limit: int = 50) -> dict[str, Any]:
        """One persistent object by PATH or by OID: class, oid, attributes, the oids and
        classes it references, and its record size in bytes."""
        return call(browser.inspect, path, oid, limit)

    def find_instances(
        class_name: str,
        limit: int = 20,
        max_objects: int = DEFAULT_MAX_OBJECTS,
        start: str = "root",
    ) -> dict[str, Any]:
        """Objects of a class ('module.Class' or 'Class') reachable from START, walking at
        most MAX_OBJECTS records; says whether the walk was complete."""
        return call(browser.find_instances, class_name, limit, max_objects, start)

    def census(max_objects: int = DEFAULT_MAX_OBJECTS) -> dict[str, Any]:
        """Objects reachable from the root counted by class, with their record bytes."""
        return call(browser.census, max_objects)

    def stats() -> dict[str, Any]:
        """The storage, object count, file size, serializer and this session's mode."""
        return call(browser.stats)

    def list_transactions(limit: int = 20, offset: int = 0) -> dict[str, Any]:
        """Committed transactions, newest first: tid, time, offset and length (files only)."""
        return call(browser.list_transactions, limit, offset)

    read_tools: list[Callable[..., dict[str, Any]]] = [
        browse,
        inspect,
        find_instances,
        census,
        stats,
        list_transactions,
    ]
    for tool in read_tools:
        server.add_tool(tool)
    if not browser.allow_writes:
        return server

    def set_value(path: str, value: Any, persistent: bool = False) -> dict[str, Any]:
        """Set the key, index or attribute at PATH to a JSON VALUE ({"$ref": OID} links an
        existing object; PERSISTENT makes objects/arrays PersistentDict/List).
        Nothing is written until commit."""
        return call(browser.set_value, path, value, persistent)

    def delete(path: str) -> dict[str, Any]:
        """Delete the key, index or attribute at PATH.  Nothing is written until commit."""
        return call(browser.delete, path)

    def commit() -> dict[str, Any]:
        """Write every change since the last commit or abort, atomically."""
        return call(browser.commit)

    def abort() -> dict[str, Any]:
        """Drop every change since the last commit or abort."""
        return call(browser.abort)

    write_tools: list[Callable[..., dict[str, Any]]] = [set_value, delete, commit, abort]
    for tool in write_tools:
        server.add_tool(tool)
    return server


# --- HTTP: the token check and the listener ----------------------------------------------------


class BearerTokenGuard:
    """ASGI middleware: HTTP requests without ``Authorization: Bearer TOKEN`` get 401.

    Other scopes (the lifespan) pass through.  The token is compared in
    constant time (MCP-061).
    """

    def __init__(self, app: ASGIApp, token: str) -> None:
        if not token:
            raise ValueError("the bearer token must not be empty")
        self.app = app
        self._expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            given = b""
            for header, value in scope.get("headers", ()):
                if header.lower() == b"authorization":
                    given = value
                    break
            # [MCP-061] Refuse before the request reaches the MCP server.
            if not hmac.compare_digest(given, self._expected):
                await self._refuse(send)
                return
        await self.app(scope, receive, send)

    @staticmethod
    async def _refuse(send: Send) -> None:
        body = json.dumps({"error": "unauthorized", "message": "missing or wrong bearer token"})
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"www-authenticate", b'Bearer realm="dhruva"'),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body.encode()})


def bind_localhost(port: int) -> socket.socket:
    """Return a listening TCP socket on 127.0.0.1:``port`` (0 picks a free port)."""
    # [MCP-060] The HTTP transport listens on the loopback interface only.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((HTTP_HOST, port))
        sock.listen(64)
    except OSError as error:
        sock.close()
        raise CommandFailed(
            f"cannot listen on {HTTP_HOST}:{port}: {error.strerror or error}"
        ) from None
    return sock


def serve_http(
    server: Any, token: str, port: int = 0, announce: Callable[[str], None] | None = None
) -> None:
    """Serve ``server`` over streamable HTTP at ``http://127.0.0.1:PORT/mcp`` until stopped."""
    uvicorn = importlib.import_module("uvicorn")
    app = BearerTokenGuard(server.streamable_http_app(), token)
    sock = bind_localhost(port)
    url = f"http://{HTTP_HOST}:{sock.getsockname()[1]}{HTTP_PATH}"
    if announce is not None:
        announce(url)
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    previous = None
    if threading.current_thread() is threading.main_thread():
        # uvicorn shuts down gracefully on SIGTERM and then raises the signal
        # again with the handler found at start: make that an orderly exit,
        # so the caller's cleanup (closing the storage) still runs.
        previous = signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _exit_on_signal(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def serve(
    browser: ObjectBrowser,
    *,
    transport: str = "stdio",
    port: int = 0,
    token: str | None = None,
    err: Any = None,
) -> None:
    """Build the server for ``browser`` and serve it; close the browser's connection after."""
    err = sys.stderr if err is None else err
    try:
        server = build_server(browser)
        if transport == "stdio":
            server.run()
            return
        if token is None:
            token = secrets.token_urlsafe(32)
            # [MCP-062] A generated token is shown once, on stderr only.
            print(f"dhruva mcp: bearer token: {token}", file=err, flush=True)

        def announce(url: str) -> None:
            print(f"dhruva mcp: serving {browser.source} at {url}", file=err, flush=True)

        serve_http(server, token, port, announce)
    finally:
        browser.connection.close()


# --- the command ---------------------------------------------------------------------------


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``dhruva mcp`` to ``parser``."""
    parser.add_argument("file", nargs="?", metavar="FILE", help="the database file to serve")
    parser.add_argument(
        "--address",
        metavar="ADDR",
        help="serve a running storage server instead: HOST:PORT or a Unix socket path",
    )
    parser.add_argument(
        "--allow-writes",
        action="store_true",
        help="add the set_value, delete, commit and abort tools (read-only otherwise)",
    )
    parser.add_argument(
        "--allow",
        metavar="CLASS",
        action="append",
        default=None,
        help="read restricted: allow this class, module or 'package.*' (repeatable)",
    )
    parser.add_argument(
        "--restricted",
        action="store_true",
        help="read restricted: only dhruva's containers and plain values (implied by --allow)",
    )
    add_class_map_option(parser)
    parser.add_argument(
        "--transport", choices=("stdio", "http"), default="stdio", help="default: stdio"
    )
    parser.add_argument(
        "--http-port",
        type=int,
        default=0,
        metavar="PORT",
        help=f"port on {HTTP_HOST} for --transport http (default 0: a free port)",
    )
    parser.add_argument(
        "--token",
        default=None,
        help=f"bearer token for --transport http (default: ${TOKEN_ENV}, else a generated one)",
    )


def add_class_map_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--map OLD=NEW`` (repeatable) to ``parser``; ``dhruva -c`` shares it."""
    parser.add_argument(
        "--map",
        metavar="OLD=NEW",
        action="append",
        default=[],
        help="load records of class OLD (module.Class, or a bare module for all its "
        "classes) as class NEW; repeat as needed",
    )


def parse_class_map(items: Sequence[str]) -> dict[str, str] | None:
    """Turn ``--map OLD=NEW`` values into a class map; raise CommandFailed on a bad one."""
    class_map: dict[str, str] = {}
    for item in items:
        old, equals, new = item.partition("=")
        if not (equals and old.strip() and new.strip()):
            raise CommandFailed(f"--map {item!r}: write OLD.module.Class=NEW.module.Class")
        class_map[old.strip()] = new.strip()
    return class_map or None


def run(args: argparse.Namespace) -> int:
    """Run ``dhruva mcp`` with parsed ``args``; return the exit status.

    User errors raise ``dhruva.tools.common.CommandError`` (one line, status 1) when
    run from the ``dhruva`` command.
    """
    try:
        _run(args)
    except DhruvaError as error:
        from dhruva.tools.common import CommandError

        raise CommandError(str(error)) from None
    return 0


def _run(args: argparse.Namespace) -> None:
    _sdk()  # fail before opening anything when the SDK is missing
    allowed: list[str] | None = None
    if args.allow or args.restricted:
        allowed = list(args.allow or [])
    if args.transport == "stdio" and args.token:
        raise CommandFailed("--token is only for --transport http")
    if not 0 <= args.http_port <= 65535:
        # Checked before anything is opened or a token is printed.
        raise CommandFailed(f"--http-port {args.http_port}: a port is 0 to 65535")
    token = args.token or os.environ.get(TOKEN_ENV) or None
    address = parse_address(args.address) if args.address else None
    browser = open_browser(
        args.file,
        address=address,
        allow_writes=args.allow_writes,
        allowed_classes=allowed,
        class_map=parse_class_map(args.map),
    )
    serve(browser, transport=args.transport, port=args.http_port, token=token)


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``mcp`` subcommand to an argparse ``subparsers`` object; return its parser."""
    parser: argparse.ArgumentParser = subparsers.add_parser("mcp", help=HELP, description=HELP)
    configure(parser)
    parser.set_defaults(run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``dhruva mcp ARGS`` without the ``dhruva`` command: parse, run, return the exit status."""
    parser = argparse.ArgumentParser(prog="dhruva mcp", description=HELP)
    configure(parser)
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        _run(args)
    except DhruvaError as error:
        print(f"dhruva mcp: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
