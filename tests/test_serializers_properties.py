"""Round-trip properties of every serializer (Hypothesis; spec: object-encoding.md).

For each serializer: any state built from the supported types, spread over a
graph of persistent objects with arbitrary references between them (cycles
and self-references included), reads back from a fresh connection with the
same values, the same types and the same object identities.
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import sys
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dhruva.connection import Connection
from dhruva.persistent import Persistent
from dhruva.storage import MemoryStorage


class Node(Persistent):
    pass


class Shade(enum.Enum):
    LIGHT = 1
    DARK = "dark"
    MIXED = (1, "x")


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


def _available(package: str) -> bool:
    try:
        __import__(package)
    except ImportError:
        return False
    return True


SERIALIZERS = [
    pytest.param("pickle", id="pickle"),
    pytest.param("pickle-restricted", id="pickle-restricted"),
    pytest.param(
        "msgspec",
        id="msgspec",
        marks=pytest.mark.skipif(not _available("msgspec"), reason="msgspec is not installed"),
    ),
    pytest.param(
        "dill",
        id="dill",
        marks=pytest.mark.skipif(not _available("dill"), reason="dill is not installed"),
    ),
]

offsets = st.integers(min_value=-23 * 60, max_value=23 * 60).map(
    lambda minutes: dt.timezone(dt.timedelta(minutes=minutes))
)
time_zones = st.none() | st.just(dt.UTC) | offsets

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**200), max_value=2**200),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.binary(max_size=20),
    st.datetimes(timezones=time_zones),
    st.dates(),
    st.times(timezones=time_zones),
    st.timedeltas(),
    st.decimals(allow_nan=False),
    st.uuids(),
    st.sampled_from(Shade),
    st.sampled_from(Level),
    st.complex_numbers(allow_nan=False, allow_infinity=False),
)
hashables = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.text(max_size=10),
    st.binary(max_size=10),
    st.dates(),
    st.uuids(),
    st.sampled_from(Shade),
    st.tuples(st.integers(), st.text(max_size=5)),
)
values = st.recursive(
    scalars | st.binary(max_size=5).map(bytearray),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.lists(children, max_size=4).map(tuple),
        st.dictionaries(st.text(max_size=8), children, max_size=4),
        st.dictionaries(hashables, children, max_size=4),
        st.sets(hashables, max_size=4),
        st.frozensets(hashables, max_size=4),
    ),
    max_leaves=12,
)


@st.composite
def graphs(draw: st.DrawFn) -> tuple[list[Any], list[list[int]]]:
    """A list of attribute values and, per node, the indices of the nodes it references."""
    count = draw(st.integers(min_value=1, max_value=5))
    payloads = [draw(values) for _ in range(count)]
    links = [
        draw(st.lists(st.integers(min_value=0, max_value=count - 1), max_size=4))
        for _ in range(count)
    ]
    return payloads, links


def same(a: Any, b: Any) -> bool:
    """Equal and of the same type, recursively (``==`` alone says 1 == 1.0 == True)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (dt.datetime, dt.time)):
        return a == b and a.utcoffset() == b.utcoffset() and a.fold == b.fold
    if isinstance(a, decimal.Decimal):
        return str(a) == str(b)
    return bool(a == b)


def open_reader(storage: MemoryStorage, serializer: str) -> Connection:
    if serializer == "pickle-restricted":
        return Connection(storage, allowed_classes=[sys.modules[__name__]])
    return Connection(storage)


@pytest.mark.req("OBJ-003", "OBJ-004", "OBJ-030", "OBJ-037", "OBJ-040")
@pytest.mark.parametrize("serializer", SERIALIZERS)
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(graph=graphs())
def test_states_and_references_round_trip(
    serializer: str, graph: tuple[list[Any], list[list[int]]]
) -> None:
    payloads, links = graph
    storage = MemoryStorage()
    writer = Connection(storage, serializer=serializer)
    nodes = [Node() for _ in payloads]
    for node, payload, targets in zip(nodes, payloads, links, strict=True):
        node.payload = payload
        node.links = [nodes[t] for t in targets]
        node.myself = node
    writer.get_root()["nodes"] = nodes
    writer.commit()
    loaded = open_reader(storage, serializer).get_root()["nodes"]
    assert len(loaded) == len(nodes)
    for node, payload, targets in zip(loaded, payloads, links, strict=True):
        assert same(node.payload, payload), (node.payload, payload)
        assert node.myself is node
        assert [loaded.index(t) for t in node.links] == targets
        assert all(t is loaded[i] for t, i in zip(node.links, targets, strict=True))


@pytest.mark.parametrize("serializer", SERIALIZERS)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(first=values, second=values)
def test_changed_states_round_trip_after_reload(serializer: str, first: Any, second: Any) -> None:
    storage = MemoryStorage()
    writer = Connection(storage, serializer=serializer)
    node = Node()
    node.value = first
    writer.get_root()["node"] = node
    writer.commit()
    node.value = second
    writer.commit()
    assert same(open_reader(storage, serializer).get_root()["node"].value, second)
