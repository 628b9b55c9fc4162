"""Write the Durus 4.3 fixture databases under tests/fixtures/durus/.

Run it with a Python that has Durus 4.3 installed (not dhruva's environment):

    python3 -m venv /tmp/durus43 && /tmp/durus43/bin/pip install durus==4.3
    /tmp/durus43/bin/python tools/make_durus_fixtures.py tests/fixtures/durus

It writes four small databases, each holding the same objects, in both of
Durus's FileStorage formats and in both of their layouts:

* ``shelf.durus``: ``durus.file_storage.FileStorage`` (the ``SHELF-1`` shelf
  format, Durus 4.3's default), several transactions, some garbage;
* ``shelf-packed.durus``: the same after ``pack()`` (records in the shelf's
  initial transaction, a filled offset map, then one more transaction);
* ``dfs20.durus``: ``durus.file_storage2.FileStorage2`` (``DFS20``), the
  older format: transactions after an empty index record;
* ``dfs20-packed.durus``: the same after ``pack()`` (packed transactions,
  then the index record, then one more transaction).

Beside each it writes ``NAME.expected.json``: every object reachable from
the root as Durus itself reads it back (:func:`canonical`), which
``tests/test_durus_import.py`` compares with what dhruva imports.

The user classes live in a module named ``durus_fixture_app`` that this
script creates in memory, so the records name ``durus_fixture_app.Item``
and friends; dhruva's tests map those names to classes of their own.
"""

from __future__ import annotations

import datetime
import decimal
import json
import os
import sys
import types
from typing import Any

APP_MODULE = "durus_fixture_app"


def canonical(connection: Any) -> list[dict[str, Any]]:
    """Return every object reachable from the root, by oid, as JSON-able data.

    Works on a Durus connection and on a dhruva connection alike (duck
    typing): each object is ``{"oid", "class", "state"}``, where class is the
    dotted name of the object's real class and state its ``__getstate__()``
    with persistent references written as ``{"$ref": oid}``.  ``_count``
    (dhruva's BTree size cache, which Durus does not have) is left out.
    """
    root = connection.get_root()
    found: dict[int, Any] = {}
    todo = [root]
    out: list[dict[str, Any]] = []
    while todo:
        obj = todo.pop()
        oid = int.from_bytes(obj._p_oid, "big")
        if oid in found:
            continue
        found[oid] = obj
        if obj._p_status == -1:  # a ghost, in both Durus and dhruva
            obj._p_load_state()
        cls = getattr(type(obj), "_p_class", type(obj))
        state = obj.__getstate__()
        refs: list[Any] = []
        encoded = _encode(state, refs)
        if isinstance(encoded, dict):
            encoded.pop("_count", None)
        out.append({"oid": oid, "class": f"{cls.__module__}.{cls.__qualname__}", "state": encoded})
        todo.extend(refs)
    out.sort(key=lambda item: item["oid"])
    return out


def _encode(value: Any, refs: list[Any]) -> Any:
    if hasattr(value, "_p_oid") and hasattr(value, "_p_status"):
        refs.append(value)
        return {"$ref": int.from_bytes(value._p_oid, "big")}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, bytes):
        return {"$bytes": value.hex()}
    if isinstance(value, list):
        return [_encode(item, refs) for item in value]
    if isinstance(value, tuple):
        return {"$tuple": [_encode(item, refs) for item in value]}
    if isinstance(value, set | frozenset):
        return {"$set": sorted(_encode(item, refs) for item in value)}
    if isinstance(value, dict):
        items = [[_encode(k, refs), _encode(v, refs)] for k, v in value.items()]
        items.sort(key=lambda pair: json.dumps(pair[0], sort_keys=True))
        return {"$dict": items}
    return {"$repr": repr(value)}


def _make_app_module() -> types.ModuleType:
    """Create ``durus_fixture_app`` with Durus persistent user classes."""
    from durus.persistent import Persistent, PersistentObject

    module = types.ModuleType(APP_MODULE)

    class Item(Persistent):
        def __init__(self, name: str, value: Any = None) -> None:
            self.name = name
            self.value = value
            self.partner: Any = None

    class Point(PersistentObject):
        __slots__ = ["x", "y"]

        def __init__(self, x: int, y: int) -> None:
            self.x = x
            self.y = y

    for cls in (Item, Point):
        cls.__module__ = APP_MODULE
        cls.__qualname__ = cls.__name__
        setattr(module, cls.__name__, cls)
    sys.modules[APP_MODULE] = module
    return module


def populate(connection: Any, app: types.ModuleType) -> None:
    """Fill a new Durus database over several commits, leaving some garbage."""
    from durus.btree import BNode4, BTree
    from durus.persistent_dict import PersistentDict
    from durus.persistent_list import PersistentList
    from durus.persistent_set import PersistentSet

    root = connection.get_root()
    root["dict"] = PersistentDict({"a": 1, "b": "two", "nested": {"x": [1, 2, 3]}})
    root["list"] = PersistentList([1, "x", b"\x00\xffbytes", 3.5, None, (1, 2)])
    root["set"] = PersistentSet({1, 2, 3})
    connection.commit()

    tree = BTree(BNode4)  # degree 4: 60 keys make a tree three levels deep
    for number in range(60):
        tree[number] = f"value {number}"
    root["tree"] = tree
    first, second = app.Item("first", 1), app.Item("second", [1, 2])
    first.partner, second.partner = second, first  # a cycle of two objects
    second.value = root  # and one through the root
    root["items"] = PersistentList([first, second])
    root["point"] = app.Point(3, 4)
    tree[100] = first  # a persistent value inside a BTree
    root["values"] = {
        "when": datetime.datetime(2024, 5, 17, 12, 30, 15),
        "price": decimal.Decimal("9.99"),
        "text": "unicode \u00e9\u4e2d " * 20,
        "frozen": frozenset({7, 8}),
    }
    connection.commit()

    # Superseded records and one unreachable object: garbage for pack.
    root["dict"]["a"] = 2
    root["dict"]._p_note_change()
    root["garbage"] = app.Item("garbage")
    connection.commit()
    del root["garbage"]
    del tree[5]
    connection.commit()


def write_all(directory: str) -> list[str]:
    """Write every fixture into ``directory``; return the paths written."""
    from durus.connection import Connection
    from durus.file_storage import FileStorage
    from durus.file_storage2 import FileStorage2

    app = _make_app_module()
    os.makedirs(directory, exist_ok=True)
    written = []
    for name, storage_class in (("shelf", FileStorage), ("dfs20", FileStorage2)):
        for packed in (False, True):
            stem = f"{name}-packed" if packed else name
            path = os.path.join(directory, f"{stem}.durus")
            for leftover in (path, path + ".pack", path + ".prepack"):
                if os.path.exists(leftover):
                    os.unlink(leftover)
            connection = Connection(storage_class(path))
            populate(connection, app)
            if packed:
                connection.pack()
                connection.get_root()["after_pack"] = app.Item("after pack", 42)
                connection.commit()
            expected = canonical(connection)
            connection.get_storage().close()
            for leftover in (path + ".prepack",):
                if os.path.exists(leftover):
                    os.unlink(leftover)
            with open(path[: -len(".durus")] + ".expected.json", "w", encoding="utf-8") as out:
                json.dump(expected, out, indent=1, sort_keys=True)
                out.write("\n")
            written.append(path)
    return written


def main(argv: list[str]) -> int:
    directory = argv[1] if len(argv) > 1 else os.path.join("tests", "fixtures", "durus")
    for path in write_all(directory):
        print(f"wrote {path} ({os.path.getsize(path)} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
