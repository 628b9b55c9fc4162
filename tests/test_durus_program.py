"""A Durus program runs unchanged after renaming its imports (issue 14).

``tests/fixtures/durus_program.py`` is written against Durus 4.3's public API
with ``durus`` imports.  The test renames the word ``durus`` to ``dhruva``
(nothing else) and runs the result in a fresh interpreter, so nothing this
test process imported helps it.  The narrower tests below pin each piece.
"""

from __future__ import annotations

import io
import logging
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from dhruva import logger as dhruva_logger
from dhruva.btree import BTree
from dhruva.client_storage import ClientStorage
from dhruva.connection import Connection, touch_every_reference
from dhruva.error import DhruvaKeyError, DurusKeyError, EmptyBTreeError
from dhruva.file_storage import TempFileStorage
from dhruva.persistent import Persistent
from dhruva.persistent_dict import PersistentDict
from dhruva.persistent_list import PersistentList
from dhruva.persistent_set import PersistentSet
from dhruva.server.storage_server import StorageServer
from dhruva.storage import (
    MemoryStorage,
    gen_oid_class,
    gen_referring_oid_record,
    get_census,
    get_reference_index,
)
from dhruva.utils import int8_to_str

PROGRAM = Path(__file__).parent / "fixtures" / "durus_program.py"


class Tagged(PersistentDict[str, int]):
    """A container subclass without __slots__: it has a __dict__ (DM-013)."""


@pytest.mark.req(
    "CONN-031",
    "CONN-032",
    "CONN-033",
    "DM-013",
    "DM-014",
    "DM-016",
    "BT-024",
    "BT-025",
    "SAPI-084",
    "SAPI-085",
    "SAPI-086",
    "SRV-088",
)
def test_the_durus_program_runs_with_its_imports_renamed(tmp_path: Path) -> None:
    source = PROGRAM.read_text()
    # The program imports Durus's modules only; the rename is the sole change.
    assert "from durus." in source and not re.search(r"^\s*(from|import) dhruva", source, re.M)
    renamed = re.sub(r"\bdurus\b", "dhruva", source)
    script = tmp_path / "program.py"
    script.write_text(renamed)
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "dhruva program: ok"


def test_durus_key_error_is_dhruva_key_error() -> None:
    assert DurusKeyError is DhruvaKeyError
    with pytest.raises(DurusKeyError):
        MemoryStorage().load(int8_to_str(5))


@pytest.mark.req("CONN-031")
def test_connection_attributes_follow_its_state() -> None:
    connection = Connection(MemoryStorage(), 10, PersistentDict)
    assert connection.get_cache_size() == 10
    root = connection.root
    assert root is connection.get_root() and connection.storage is connection.get_storage()
    assert dict(connection.changed) == {}
    root["x"] = 1
    assert dict(connection.changed) == {root._p_oid: root}
    with pytest.raises(TypeError):
        connection.changed[b"\0" * 8] = root  # type: ignore[index]
    with pytest.raises(AttributeError):
        connection.root = None  # type: ignore[misc]
    connection.commit()
    assert len(connection.changed) == 0


@pytest.mark.req("CONN-032")
def test_touch_every_reference_marks_exactly_the_matching_records() -> None:
    connection = Connection(MemoryStorage())
    root = connection.get_root()
    root["a"] = Persistent()
    root["b"] = Persistent()
    root["b"].c = PersistentList()
    connection.commit()
    touch_every_reference(connection, b"PersistentList")
    assert root["b"]._p_is_unsaved() and root["b"].c._p_is_unsaved()
    assert not root._p_is_unsaved() and not root["a"]._p_is_unsaved()
    connection.abort()
    touch_every_reference(connection, "no such word")
    assert len(connection.changed) == 0


@pytest.mark.req("SAPI-084", "SAPI-085")
def test_storage_helpers() -> None:
    connection = Connection(MemoryStorage())
    root = connection.get_root()
    root["a"] = PersistentSet()
    root["b"] = Persistent()
    root["b"].a = root["a"]
    connection.commit()
    storage = connection.get_storage()
    one, two = int8_to_str(1), int8_to_str(2)
    assert get_reference_index(storage) == {one: [int8_to_str(0), two], two: [int8_to_str(0)]}
    assert [oid for oid, _ in gen_referring_oid_record(storage, one)] == [int8_to_str(0), two]
    assert list(gen_referring_oid_record(storage, int8_to_str(9))) == []
    assert get_census(storage) == {
        "dhruva.persistent_dict.PersistentDict": 1,
        "dhruva.persistent_set.PersistentSet": 1,
        "dhruva.persistent.Persistent": 1,
    }
    assert list(gen_oid_class(storage, "dhruva.persistent.Persistent")) == [
        (two, "dhruva.persistent.Persistent")
    ]
    storage.begin()
    storage.store(int8_to_str(3), b"Xgarbage", b"")
    storage.end()
    assert get_census(storage)["?"] == 1


@pytest.mark.req("DM-013")
def test_containers_have_slots_and_subclasses_keep_their_attributes() -> None:
    for container in (PersistentDict(), PersistentList(), PersistentSet()):
        with pytest.raises(AttributeError):
            container.bogus = 1  # type: ignore[union-attr]
        assert not hasattr(container, "__dict__")

    storage = MemoryStorage()
    connection = Connection(storage)
    tagged = Tagged(a=1)
    tagged.label = "x"  # type: ignore[attr-defined]
    connection.get_root()["t"] = tagged
    connection.commit()
    fresh = Connection(storage).get_root()["t"]
    assert fresh == {"a": 1} and fresh.label == "x"


@pytest.mark.req("DM-013")
def test_records_of_dict_based_containers_still_load() -> None:
    # The record a PersistentDict wrote when its state lived in __dict__:
    # the same class pickle and the same {"data": {...}} state.
    import pickle

    storage = MemoryStorage()
    Connection(storage)
    data = (
        b"P"
        + pickle.dumps(PersistentDict, protocol=5)
        + pickle.dumps({"data": {"k": [1, 2]}}, protocol=5)
    )
    storage.begin()
    storage.store(int8_to_str(0), data, b"")
    storage.end()
    assert Connection(storage).get_root() == {"k": [1, 2]}


@pytest.mark.req("DM-015")
def test_persistent_set_equals_a_set_with_the_same_elements() -> None:
    ps = PersistentSet([1, 2])
    assert ps == {1, 2} and ps == frozenset({1, 2}) and {1, 2} == ps
    assert ps != {1} and ps != [1, 2]


@pytest.mark.req("DM-016")
def test_persistent_dict_durus_names() -> None:
    pd = PersistentDict({1: "a", 2: "b"})
    assert pd.has_key(1) and not pd.has_key(3)
    assert list(pd.iteritems()) == [(1, "a"), (2, "b")]
    assert list(pd.iterkeys()) == [1, 2] and list(pd.itervalues()) == ["a", "b"]


@pytest.mark.req("BT-024")
def test_empty_btree_min_max_raise_value_and_assertion_error() -> None:
    for method in (BTree().get_min_item, BTree().get_max_item):
        with pytest.raises(EmptyBTreeError) as caught:
            method()
        assert isinstance(caught.value, ValueError) and isinstance(caught.value, AssertionError)


@pytest.mark.req("BT-025")
def test_btree_views_behave_as_durus_lists() -> None:
    tree = BTree()
    assert tree.keys() == [] and tree.values() == () and tree.items() == []
    for n in range(40):
        tree[n] = -n
    assert tree.keys() == list(range(40)) and tree.keys() != list(range(39))
    assert tree.keys() == set(range(40))
    assert tree.values() == [-n for n in range(40)]
    assert tree.items()[0] == (0, 0) and tree.items()[-1] == (39, -39)
    assert tree.keys()[5:8] == [5, 6, 7] and tree.values()[39] == -39
    with pytest.raises(IndexError):
        tree.keys()[40]


@pytest.mark.req("SAPI-086")
def test_temp_file_storage_get_filename() -> None:
    storage = TempFileStorage()
    try:
        assert Path(storage.get_filename()).is_file()
    finally:
        storage.close()
    assert not Path(storage.get_filename()).exists()


@pytest.mark.req("SRV-088")
def test_host_and_port_keywords() -> None:
    with pytest.raises(TypeError):
        StorageServer(MemoryStorage(), ("127.0.0.1", 0), host="127.0.0.1")
    with pytest.raises(TypeError):
        ClientStorage(("127.0.0.1", 1), port=1)
    server = StorageServer(MemoryStorage(), host="127.0.0.1", port=0)
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    try:
        assert server.address[0] == "127.0.0.1" and server.address[1] != 0
        client = ClientStorage(host="127.0.0.1", port=server.address[1])
        client.close()
    finally:
        server.stop()
        thread.join(10)


@pytest.mark.req("CONN-033")
def test_direct_output_uses_the_standard_logging_module() -> None:
    logger = logging.getLogger("dhruva")
    saved = (logger.handlers[:], logger.propagate, logger.level)
    stdout, stderr = sys.stdout, sys.stderr
    try:
        first, second = io.StringIO(), io.StringIO()
        dhruva_logger.direct_output(first)
        handler = dhruva_logger.direct_output(second)
        dhruva_logger.log(logging.INFO, "n=%d", 3)
        logging.getLogger("dhruva.server").warning("child")
        assert first.getvalue() == "" and second.getvalue() == "n=3\nchild\n"
        assert handler in logger.handlers and logger.propagate is False
        assert dhruva_logger.logger is logger and dhruva_logger.is_logging(logging.INFO)
        assert sys.stdout is stdout and sys.stderr is stderr
    finally:
        logger.handlers[:], logger.propagate = saved[0], saved[1]
        logger.setLevel(saved[2])
