"""``dhruva mcp`` (spec: ``spec/mcp.md``): the browser in-process, the server end to end.

End-to-end tests spawn ``dhruva.tools.mcp_server.main`` in a subprocess and talk to
it with the MCP SDK's own client, over stdio and over streamable HTTP on
127.0.0.1.  They are skipped, with the reason, when the SDK is not installed.
Every process started here is stopped by its pid.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest

from dhruva.btree import BTree
from dhruva.connection import Connection
from dhruva.error import DhruvaError
from dhruva.file_storage import FileStorage
from dhruva.persistent import GHOST, Persistent
from dhruva.persistent_dict import PersistentDict
from dhruva.persistent_list import PersistentList
from dhruva.persistent_set import PersistentSet
from dhruva.tools.mcp_server import BearerTokenGuard, bind_localhost, open_browser, parse_address
from dhruva.tools.object_browser import (
    BrowseError,
    ObjectBrowser,
    describe,
    format_path,
    parse_path,
)

HAVE_SDK = find_spec("mcp") is not None
needs_sdk = pytest.mark.skipif(
    not HAVE_SDK, reason="the MCP Python SDK is not installed (pip install 'dhruva[mcp]')"
)
MAIN = "import sys; from dhruva.tools.mcp_server import main; sys.exit(main(sys.argv[1:]))"


class Item(Persistent):
    """A user class: restricted sessions must refuse to load it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.tags = {"colour": "red"}


def make_database(path: Path) -> None:
    """users/alice/orders (a list of dicts), a BTree of 40 ints, odd values."""
    with Connection(FileStorage(str(path))) as connection:
        root = connection.get_root()
        orders = PersistentList([{"n": i, "total": i * 10} for i in range(5)])
        root["users"] = PersistentDict(alice=PersistentDict(orders=orders, age=41))
        tree = BTree()
        for i in range(40):
            tree[i] = f"value {i}"
        root["tree"] = tree
        root["a/b"] = "x" * 500
        root["odd"] = [b"\x00bytes", math.nan, (1, 2), {3, 4}, None, True, 2.5]
        root["set"] = PersistentSet({1, 2})
        connection.commit()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    path = tmp_path / "shop.dhruva"
    make_database(path)
    return path


@pytest.fixture
def browser(db_path: Path) -> Iterator[ObjectBrowser]:
    b = open_browser(str(db_path))
    yield b
    b.connection.close()


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def strict_json(value: Any) -> Any:
    """Round-trip through JSON that refuses NaN: proves ``value`` is JSON-safe."""
    return json.loads(json.dumps(value, allow_nan=False))


# --- paths ------------------------------------------------------------------------------------


@pytest.mark.req("MCP-010")
@pytest.mark.parametrize(
    "text",
    ["root", "@7", "root/users/alice/orders[3]", 'root["a/b"]', "root/tree[-1]", "@5/x[null]"],
)
def test_paths_round_trip(text: str) -> None:
    start, steps = parse_path(text)
    assert format_path(start, steps) == text


@pytest.mark.req("MCP-010")
@pytest.mark.parametrize("text", ["users", "root/", "root[", "root[1", "root[[1]]", "root]x", "@x"])
def test_malformed_paths_are_refused(text: str) -> None:
    with pytest.raises(BrowseError, match="path"):
        parse_path(text)


@pytest.mark.req("MCP-011", "MCP-012")
def test_names_and_items_resolve(browser: ObjectBrowser) -> None:
    assert browser.resolve("root/users/alice/age")[0] == 41
    assert browser.resolve("root/users/alice/orders[3]/total")[0] == 30
    assert browser.resolve("root/users/alice/orders[-1]/n")[0] == 4
    assert browser.resolve("root/tree[7]")[0] == "value 7"
    assert browser.resolve('root["a/b"]')[0] == "x" * 500
    # /NAME falls back to the attribute of the state when there is no such key.
    assert browser.resolve("root/users/data")[0] == {
        "alice": browser.resolve("root/users/alice")[0]
    }
    with pytest.raises(BrowseError, match=r"index a sequence with \[3\]"):
        browser.resolve("root/users/alice/orders/3")
    with pytest.raises(BrowseError, match="no key"):
        browser.resolve('root/tree["7"]')
    with pytest.raises(BrowseError, match="out of range"):
        browser.resolve("root/users/alice/orders[5]")


@pytest.mark.req("MCP-013")
def test_every_listed_path_reaches_its_entry(browser: ObjectBrowser) -> None:
    for path in ["root", "root/users/alice", "root/users/alice/orders", "root/tree", "root/odd"]:
        listing = browser.browse(path, limit=100)
        for entry in listing["entries"]:
            assert entry["path"] is not None, entry
            assert describe(browser.resolve(entry["path"])[0]) == entry["value"]


# --- values -----------------------------------------------------------------------------------


@pytest.mark.req("MCP-020")
def test_every_answer_is_json(browser: ObjectBrowser) -> None:
    answers = [
        browser.browse("root"),
        browser.browse("root/odd"),
        browser.browse("root/set"),
        browser.browse('root["a/b"]'),
        browser.inspect("root"),
        browser.census(),
        browser.stats(),
        browser.list_transactions(),
        browser.find_instances("PersistentList"),
    ]
    for answer in answers:
        strict_json(answer)  # raises on NaN, bytes, tuples as keys, ...
    odd = {e["index"]: e["value"] for e in browser.browse("root/odd")["entries"]}
    assert odd[0]["$type"] == "builtins.bytes"
    assert odd[1] == {"$type": "builtins.float", "$repr": "nan"}
    assert odd[2]["$type"] == "builtins.tuple" and odd[2]["length"] == 2
    assert [odd[4], odd[5], odd[6]] == [None, True, 2.5]
    long = browser.browse('root["a/b"]')["value"]
    assert long["length"] == 500 and len(long["$repr"]) <= 120


@pytest.mark.req("MCP-021")
def test_references_are_described_without_loading(browser: ObjectBrowser) -> None:
    listing = browser.browse("root")
    users = {e["key"]: e["value"] for e in listing["entries"]}["users"]
    assert users["class"] == "dhruva.persistent_dict.PersistentDict"
    child = browser.connection.get(users["$ref"])
    assert child._p_status == GHOST


@pytest.mark.req("MCP-022")
def test_browse_pages(browser: ObjectBrowser) -> None:
    first = browser.browse("root/tree", offset=0, limit=15)
    assert first["kind"] == "mapping" and first["length"] == 40 and first["more"] is True
    assert [e["key"] for e in first["entries"]] == list(range(15))
    last = browser.browse("root/tree", offset=30, limit=15)
    assert [e["key"] for e in last["entries"]] == list(range(30, 40)) and last["more"] is False
    assert browser.browse("root/users/alice/orders")["kind"] == "sequence"
    assert browser.browse("root/set")["kind"] == "set"
    with pytest.raises(BrowseError, match="limit"):
        browser.browse("root", limit=0)


@pytest.mark.req("MCP-023")
def test_inspect_by_path_and_by_oid(browser: ObjectBrowser) -> None:
    by_path = browser.inspect("root/users")
    by_oid = browser.inspect(oid=by_path["oid"])
    assert by_oid["oid"] == by_path["oid"] and by_oid["class"] == by_path["class"]
    assert by_path["record_size"] > 0 and by_path["serializer"] == "P"
    assert [r["oid"] for r in by_path["references"]] == [browser.inspect("root/users/alice")["oid"]]
    assert by_path["references"][0]["class"] == "dhruva.persistent_dict.PersistentDict"
    with pytest.raises(BrowseError, match="not a persistent object"):
        browser.inspect("root/users/alice/age")
    with pytest.raises(BrowseError, match="exactly one"):
        browser.inspect()


# --- walks ------------------------------------------------------------------------------------


@pytest.mark.req("MCP-030", "MCP-031")
def test_census_counts_by_class_and_reports_limits(browser: ObjectBrowser) -> None:
    full = browser.census()
    counts = {c["class"]: c["count"] for c in full["classes"]}
    assert counts["dhruva.persistent_dict.PersistentDict"] == 3
    assert counts["dhruva.persistent_list.PersistentList"] == 1
    assert full["complete"] is True and full["reachable"] == full["stored"]
    cut = browser.census(max_objects=2)
    assert cut["reachable"] == 2 and cut["complete"] is False and cut["unreachable"] is None


@pytest.mark.req("MCP-030")
def test_find_instances_reports_how_far_it_got(browser: ObjectBrowser) -> None:
    found = browser.find_instances("dhruva.persistent_list.PersistentList")
    assert len(found["matches"]) == 1 and found["complete"] is True
    oid = found["matches"][0]["oid"]
    assert browser.inspect("root/users/alice/orders")["oid"] == oid
    assert found["matches"][0]["referrer"] == browser.inspect("root/users/alice")["oid"]
    short = browser.find_instances("PersistentList", max_objects=1)
    assert short["matches"] == [] and short["max_objects_reached"] is True
    assert short["complete"] is False


@pytest.mark.req("MCP-033")
def test_transactions_newest_first(browser: ObjectBrowser) -> None:
    answer = browser.list_transactions()
    tids = [t["tid"] for t in answer["transactions"]]
    assert tids == sorted(tids, reverse=True) and answer["total"] == len(tids) >= 2
    assert answer["transactions"][0]["time"].endswith("+00:00")


# --- restricted reading -----------------------------------------------------------------------


@pytest.mark.req("MCP-050", "MCP-032", "MCP-043")
def test_restricted_session_never_loads_other_classes(tmp_path: Path) -> None:
    path = tmp_path / "items.dhruva"
    with Connection(FileStorage(str(path))) as connection:
        connection.get_root()["item"] = Item("lamp")
        connection.commit()
    restricted = open_browser(str(path), allowed_classes=[])
    try:
        with pytest.raises(DhruvaError, match="Item"):
            restricted.browse("root/item")
        census = restricted.census()
        assert any(c["class"].startswith("<unreadable") for c in census["classes"])
    finally:
        restricted.connection.close()
    allowed = open_browser(str(path), allowed_classes=[f"{__name__}.Item"], allow_writes=True)
    try:
        assert allowed.resolve("root/item/name")[0] == "lamp"
        for name in ("__class__", "_p_oid", "not a name"):
            with pytest.raises(BrowseError, match="may be set"):
                allowed.set_value(f"root/item/{name}", 1)
        allowed.set_value("root/item/tags/colour", "blue")  # a plain dict inside Item
        allowed.set_value("root/item/name", "desk")
        allowed.commit()
    finally:
        allowed.connection.close()
    with Connection(FileStorage(str(path), readonly=True)) as connection:
        item = connection.get_root()["item"]
        assert (item.name, item.tags) == ("desk", {"colour": "blue"})


# --- writes -----------------------------------------------------------------------------------


@pytest.mark.req("MCP-040", "MCP-041")
def test_read_only_browser_refuses_writes_and_keeps_the_file(db_path: Path) -> None:
    before = file_digest(db_path)
    b = open_browser(str(db_path))
    try:
        for write in (lambda: b.set_value("root/x", 1), lambda: b.delete("root/odd"), b.commit):
            with pytest.raises(BrowseError, match="--allow-writes"):
                write()
        # Opened read-only: a second reader can open the file at the same time.
        FileStorage(str(db_path), readonly=True).close()
    finally:
        b.connection.close()
    assert file_digest(db_path) == before


@pytest.mark.req("MCP-042")
def test_writes_wait_for_commit(db_path: Path) -> None:
    b = open_browser(str(db_path), allow_writes=True)
    try:
        b.set_value("root/users/alice/orders[3]/total", 99)  # inside a plain dict
        b.set_value("root/users/bob", {"orders": [1, 2]}, persistent=True)
        b.set_value("root/link", {"$ref": b.inspect("root/tree")["oid"]})
        b.delete("root/odd")
        b.set_value("root/dropped", 1)
        b.abort()
        assert "dropped" not in b.resolve("root")[0]
        assert b.resolve("root/users/alice/orders[3]/total")[0] == 30
        b.set_value("root/users/alice/orders[3]/total", 99)
        b.set_value("root/users/bob", {"orders": [1, 2]}, persistent=True)
        b.set_value("root/link", {"$ref": b.inspect("root/tree")["oid"]})
        b.delete("root/odd")
        assert b.commit()["committed"] == [
            "set root/users/alice/orders[3]/total",
            "set root/users/bob",
            "set root/link",
            "delete root/odd",
        ]
    finally:
        b.connection.close()
    with Connection(FileStorage(str(db_path), readonly=True)) as connection:
        root = connection.get_root()
        assert root["users"]["alice"]["orders"][3]["total"] == 99
        assert isinstance(root["users"]["bob"], PersistentDict)
        assert isinstance(root["users"]["bob"]["orders"], PersistentList)
        assert root["link"] is root["tree"]
        assert "odd" not in root


# --- command-line pieces ----------------------------------------------------------------------


def test_addresses() -> None:
    assert parse_address("127.0.0.1:2972") == ("127.0.0.1", 2972)
    assert parse_address("/tmp/dhruva.sock") == "/tmp/dhruva.sock"
    with pytest.raises(DhruvaError, match="HOST:PORT"):
        parse_address("nowhere")


@pytest.mark.req("MCP-060")
def test_http_listener_is_loopback_only() -> None:
    sock = bind_localhost(0)
    try:
        assert sock.getsockname()[0] == "127.0.0.1"
    finally:
        sock.close()


@pytest.mark.req("MCP-002")
def test_missing_sdk_is_one_line(db_path: Path) -> None:
    code = "import sys; sys.modules['mcp'] = None; " + MAIN.split("; ", 1)[1]
    result = subprocess.run(
        [sys.executable, "-c", code, str(db_path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'dhruva[mcp]'" in lines[0], result.stderr


@needs_sdk
def test_missing_file_is_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", MAIN, str(tmp_path / "none.dhruva")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"dhruva mcp: cannot open {tmp_path / 'none.dhruva'}: no such file"
    ]


# --- end to end with the SDK's client ---------------------------------------------------------


def call_all(session_factory: Callable[[], Any], calls: list[tuple[str, dict[str, Any]]]) -> Any:
    """Run ``calls`` in one MCP session; return (tool names, results)."""
    import anyio

    async def go() -> Any:
        async with session_factory() as session:
            tools = await session.list_tools()
            results = [await session.call_tool(name, args) for name, args in calls]
            return sorted(t.name for t in tools.tools), results

    return anyio.run(go)


def stdio_session(*args: str) -> Any:
    from contextlib import asynccontextmanager

    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    params = StdioServerParameters(command=sys.executable, args=["-c", MAIN, *args])

    @asynccontextmanager
    async def factory() -> Any:
        async with (
            stdio_client(params, errlog=sys.stderr) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            yield session

    return factory


def structured(result: Any) -> Any:
    assert not is_error(result), result
    content = getattr(result, "structuredContent", None)
    if content is None:
        content = getattr(result, "structured_content", None)
    if content is None:
        content = json.loads(result.content[0].text)
    return content


def is_error(result: Any) -> bool:
    return bool(getattr(result, "is_error", getattr(result, "isError", False)))


READ_TOOLS = ["browse", "census", "find_instances", "inspect", "list_transactions", "stats"]


@needs_sdk
@pytest.mark.req("MCP-001", "MCP-003", "MCP-040", "MCP-041")
def test_stdio_read_only_session(db_path: Path) -> None:
    before = file_digest(db_path)
    tools, results = call_all(
        stdio_session(str(db_path)),
        [
            ("browse", {"path": "root/users/alice/orders[3]"}),
            ("inspect", {"oid": 0}),
            ("find_instances", {"class_name": "PersistentList"}),
            ("census", {}),
            ("list_transactions", {"limit": 1}),
            ("stats", {}),
            ("browse", {"path": "root/nope"}),
            ("set_value", {"path": "root/x", "value": 1}),
            ("commit", {}),
            ("browse", {"path": "root/users/alice/age"}),
        ],
    )
    assert tools == READ_TOOLS
    order = structured(results[0])
    assert order["kind"] == "mapping"
    assert {e["key"]: e["value"] for e in order["entries"]} == {"n": 3, "total": 30}
    assert structured(results[1])["class"] == "dhruva.persistent_dict.PersistentDict"
    assert len(structured(results[2])["matches"]) == 1
    assert structured(results[3])["complete"] is True
    assert len(structured(results[4])["transactions"]) == 1
    assert structured(results[5])["writes_allowed"] is False
    assert is_error(results[6]) and "nope" in results[6].content[0].text
    assert is_error(results[7]) and is_error(results[8])
    assert structured(results[9])["value"] == 41  # the session still serves after errors
    assert file_digest(db_path) == before


@needs_sdk
@pytest.mark.req("MCP-042")
def test_stdio_writes_with_allow_writes(db_path: Path) -> None:
    tools, results = call_all(
        stdio_session(str(db_path), "--allow-writes"),
        [
            ("set_value", {"path": "root/users/alice/age", "value": 42}),
            ("commit", {}),
            ("set_value", {"path": "root/users/alice/age", "value": 43}),
            ("abort", {}),
        ],
    )
    assert tools == sorted([*READ_TOOLS, "set_value", "delete", "commit", "abort"])
    assert structured(results[1])["committed"] == ["set root/users/alice/age"]
    assert structured(results[3])["aborted"] == ["set root/users/alice/age"]
    with Connection(FileStorage(str(db_path), readonly=True)) as connection:
        assert connection.get_root()["users"]["alice"]["age"] == 42


class HttpServer:
    """``dhruva mcp --transport http`` in a subprocess; stopped by pid."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", MAIN, *args, "--transport", "http"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=None if env is None else {**os.environ, **env},
        )
        self.token: str | None = None
        self.url = ""
        self.lines: list[str] = []
        ready = threading.Event()

        def read() -> None:
            assert self.process.stderr is not None
            for line in self.process.stderr:
                self.lines.append(line)
                if "bearer token:" in line:
                    self.token = line.split()[-1]
                if " at http://" in line:
                    self.url = line.split()[-1]
                    ready.set()
            ready.set()

        self.reader = threading.Thread(target=read, daemon=True)
        self.reader.start()
        ready.wait(60)  # a safety net only: the server announces itself when ready
        if not self.url:
            self.stop()
            raise AssertionError("the server did not start:\n" + "".join(self.lines))

    def stop(self) -> str:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        assert self.process.stdout is not None and self.process.stderr is not None
        with self.process.stdout:
            stdout = self.process.stdout.read()
        self.reader.join()
        self.process.stderr.close()
        return stdout

    def post(self, headers: dict[str, str]) -> int:
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping"}).encode()
        request = urllib.request.Request(
            self.url,
            data=body,
            method="POST",
            headers={
                "content-type": "application/json",
                "accept": "application/json, text/event-stream",
                **headers,
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return int(response.status)
        except urllib.error.HTTPError as error:
            error.close()
            return int(error.code)


def http_session(url: str, token: str) -> Any:
    from contextlib import asynccontextmanager

    from mcp import ClientSession
    from mcp.shared._httpx_utils import create_mcp_http_client

    try:
        from mcp.client.streamable_http import streamable_http_client as connect
    except ImportError:  # mcp 1.x
        from mcp.client.streamable_http import streamablehttp_client as connect

    @asynccontextmanager
    async def factory() -> Any:
        headers = {"Authorization": f"Bearer {token}"}
        async with (
            create_mcp_http_client(headers=headers) as client,
            connect(url, http_client=client) as streams,
            ClientSession(streams[0], streams[1]) as session,
        ):
            await session.initialize()
            yield session

    return factory


@needs_sdk
@pytest.mark.req("MCP-060", "MCP-061", "MCP-062")
def test_http_requires_the_generated_token(db_path: Path) -> None:
    server = HttpServer(str(db_path))
    try:
        assert server.url.startswith("http://127.0.0.1:") and server.url.endswith("/mcp")
        assert server.token
        assert server.post({}) == 401
        assert server.post({"Authorization": "Bearer wrong"}) == 401
        assert server.post({"Authorization": server.token}) == 401
        tools, results = call_all(
            http_session(server.url, server.token), [("browse", {"path": "root/tree[39]"})]
        )
        assert tools == READ_TOOLS
        assert structured(results[0])["value"] == "value 39"
    finally:
        stdout = server.stop()
    assert server.token not in stdout
    assert server.process.returncode == 0  # SIGTERM is an orderly stop


@needs_sdk
@pytest.mark.req("MCP-061", "MCP-063")
@pytest.mark.parametrize("how", ["option", "environment"])
def test_http_with_a_given_token(db_path: Path, how: str) -> None:
    if how == "option":
        server = HttpServer(str(db_path), "--token", "s3cret-token")
    else:
        server = HttpServer(str(db_path), env={"DHRUVA_MCP_TOKEN": "s3cret-token"})
    try:
        assert server.token is None  # a given token is never printed
        assert not any("s3cret-token" in line for line in server.lines)
        assert server.post({"Authorization": "Bearer s3cret"}) == 401
        _tools, results = call_all(http_session(server.url, "s3cret-token"), [("stats", {})])
        assert structured(results[0])["objects"] > 0
    finally:
        server.stop()


def test_token_guard_rejects_an_empty_token() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("never reached")

    with pytest.raises(ValueError, match="empty"):
        BearerTokenGuard(app, "")


# --- a running storage server as the source ---------------------------------------------------


@pytest.mark.req("MCP-001", "MCP-033")
def test_storage_server_source(db_path: Path, tmp_path: Path) -> None:
    from dhruva.client_storage import ClientStorage
    from dhruva.server.storage_server import StorageServer

    server = StorageServer(FileStorage(str(db_path)), str(tmp_path / "db.sock"))
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    reader = writer = None
    try:
        reader = open_browser(address=str(tmp_path / "db.sock"))
        assert reader.browse("root/users/alice/age")["value"] == 41
        with pytest.raises(BrowseError, match="does not list transactions"):
            reader.list_transactions()
        # Another client commits; the read-only session sees it at its next call.
        with Connection(ClientStorage(str(tmp_path / "db.sock"))) as other:
            other.get_root()["users"]["alice"]["age"] = 50
            other.commit()
        assert reader.browse("root/users/alice/age")["value"] == 50
        writer = open_browser(address=str(tmp_path / "db.sock"), allow_writes=True)
        writer.set_value("root/users/alice/age", 51)
        writer.commit()
        assert reader.browse("root/users/alice/age")["value"] == 51
    finally:
        for browser in (reader, writer):
            if browser is not None:
                browser.connection.close()
        server.stop()
        thread.join()


def _database_with_a_moved_class(path: Path) -> None:
    """A database whose object 1 names ``gone_module.Thing``, a module that does not exist."""
    import pickle

    from dhruva.connection import Connection as _Connection
    from dhruva.file_storage import FileStorage as _FileStorage
    from dhruva.utils import int8_to_str as _int8_to_str

    with _Connection(_FileStorage(str(path))) as connection:
        storage = connection.get_storage()
        storage.begin()
        data = b"P" + b"cgone_module\nThing\n." + pickle.dumps({"a": 41}, protocol=5)
        storage.store(_int8_to_str(1), data, b"")
        storage.end()


@pytest.mark.req("MCP-064")
def test_a_class_map_lets_the_browser_read_moved_classes(tmp_path: Path) -> None:
    path = tmp_path / "moved.dhruva"
    _database_with_a_moved_class(path)
    browser = open_browser(
        str(path), class_map={"gone_module.Thing": "dhruva.persistent.Persistent"}
    )
    try:
        assert browser.connection.get(1).a == 41
    finally:
        browser.connection.close()
    from dhruva.tools.mcp_server import CommandFailed, parse_class_map

    assert parse_class_map(["a.B=c.D", "m=n"]) == {"a.B": "c.D", "m": "n"}
    assert parse_class_map([]) is None
    with pytest.raises(CommandFailed):
        parse_class_map(["no-equals"])
