"""PersistentDict behaves as dict and records every change (dhruva/persistent_dict.py)."""

from __future__ import annotations

import copy
import pickle
from collections.abc import Mapping, MutableMapping
from types import MappingProxyType
from typing import Any

import pytest
from _persistent_fakes import PRIOR_STATES, FakeConnection, Op, check_against_builtin
from hypothesis import given, settings
from hypothesis import strategies as st

from dhruva.persistent import Persistent, PersistentObject
from dhruva.persistent_dict import PersistentDict

keys = st.sampled_from([0, 1, 2, 3, "a", "b"])
values = st.integers(0, 9)
dicts = st.dictionaries(keys, values, max_size=6)
pairs = st.lists(st.tuples(keys, values), max_size=4)
str_kwargs = st.dictionaries(st.sampled_from(["a", "b", "c"]), values, max_size=2)


def _ior(other: Any) -> Any:
    def apply(c: Any) -> Any:
        c |= other
        return c

    return apply


def _ior_self(c: Any) -> Any:
    c |= c
    return c


READ_OPS = st.one_of(
    st.just(Op("len", len)),
    st.just(Op("bool", bool)),
    st.just(Op("iter", iter)),
    st.just(Op("reversed", reversed)),
    st.just(Op("keys", lambda c: c.keys())),
    st.just(Op("values", lambda c: c.values())),
    st.just(Op("items", lambda c: c.items())),
    st.just(Op("copy", lambda c: c.copy())),
    st.just(Op("eq copy", lambda c: c == c.copy())),
    keys.map(lambda k: Op(f"getitem {k!r}", lambda c: c[k])),
    keys.map(lambda k: Op(f"get {k!r}", lambda c: c.get(k))),
    keys.map(lambda k: Op(f"get {k!r} default", lambda c: c.get(k, "default"))),
    keys.map(lambda k: Op(f"contains {k!r}", lambda c: k in c)),
    dicts.map(lambda d: Op(f"eq {d}", lambda c: c == d)),
    dicts.map(lambda d: Op(f"ne {d}", lambda c: c != d)),
    dicts.map(lambda d: Op(f"eq PersistentDict({d})", lambda c: c == PersistentDict(d))),
    dicts.map(lambda d: Op(f"eq mappingproxy({d})", lambda c: c == MappingProxyType(d))),
    dicts.map(lambda d: Op(f"or {d}", lambda c: c | d)),
    dicts.map(lambda d: Op(f"{d} or", lambda c: d | c)),
    dicts.map(lambda d: Op(f"or PersistentDict({d})", lambda c: c | PersistentDict(d))),
    st.just(Op("or list", lambda c: c | [(1, 2)])),
)

WRITE_OPS = st.one_of(
    st.tuples(keys, values).map(
        lambda kv: Op(f"setitem {kv}", lambda c: c.__setitem__(*kv), mutating=True)
    ),
    keys.map(lambda k: Op(f"delitem {k!r}", lambda c: c.__delitem__(k), mutating=True)),
    keys.map(lambda k: Op(f"pop {k!r}", lambda c: c.pop(k), mutating=True)),
    keys.map(lambda k: Op(f"pop {k!r} default", lambda c: c.pop(k, None), mutating=True)),
    keys.map(lambda k: Op(f"setdefault {k!r}", lambda c: c.setdefault(k), mutating=True)),
    st.tuples(keys, values).map(
        lambda kv: Op(f"setdefault {kv}", lambda c: c.setdefault(*kv), mutating=True)
    ),
    st.just(Op("popitem", lambda c: c.popitem(), mutating=True)),
    st.just(Op("clear", lambda c: c.clear(), mutating=True)),
    dicts.map(lambda d: Op(f"update {d}", lambda c: c.update(d), mutating=True)),
    pairs.map(lambda p: Op(f"update {p}", lambda c: c.update(p), mutating=True)),
    str_kwargs.map(lambda kw: Op(f"update **{kw}", lambda c: c.update(**kw), mutating=True)),
    st.tuples(pairs, str_kwargs).map(
        lambda a: Op(f"update {a[0]} **{a[1]}", lambda c: c.update(a[0], **a[1]), mutating=True)
    ),
    dicts.map(
        lambda d: Op(
            f"update PersistentDict({d})", lambda c: c.update(PersistentDict(d)), mutating=True
        )
    ),
    st.just(Op("update self", lambda c: c.update(c), mutating=True)),
    st.just(Op("update 5", lambda c: c.update(5), mutating=True)),
    st.just(Op("update two args", lambda c: c.update({}, {}), mutating=True)),
    dicts.map(lambda d: Op(f"ior {d}", _ior(d), mutating=True)),
    pairs.map(lambda p: Op(f"ior {p}", _ior(p), mutating=True)),
    dicts.map(lambda d: Op(f"ior PersistentDict({d})", _ior(PersistentDict(d)), mutating=True)),
    st.just(Op("ior self", _ior_self, mutating=True)),
    st.just(Op("ior 5", _ior(5), mutating=True)),
)

STEPS = st.lists(st.tuples(st.sampled_from(PRIOR_STATES), st.one_of(READ_OPS, WRITE_OPS)))


@settings(deadline=None, max_examples=300)
@given(dicts, STEPS)
def test_behaves_as_dict_and_marks_changes(initial: dict[Any, int], steps: list[Any]) -> None:
    check_against_builtin(initial, PersistentDict, lambda pd: pd.data, steps)


# -- construction, class methods, representation ----------------------------------------------


def test_constructor_accepts_what_dict_accepts() -> None:
    assert PersistentDict().data == {}
    assert PersistentDict({1: 2}).data == {1: 2}
    assert PersistentDict([(1, 2), (3, 4)]).data == {1: 2, 3: 4}
    assert PersistentDict({1: 2}, a=3).data == {1: 2, "a": 3}
    assert PersistentDict(a=1, b=2).data == {"a": 1, "b": 2}
    assert PersistentDict(PersistentDict({1: 2})).data == {1: 2}
    with pytest.raises(TypeError):
        PersistentDict(5)
    with pytest.raises(TypeError):
        PersistentDict({}, {})


def test_constructor_copies_its_argument() -> None:
    source = {1: 2}
    pd = PersistentDict(source)
    pd[3] = 4
    assert source == {1: 2}


def test_fromkeys_makes_an_instance_of_the_class() -> None:
    class Sub(PersistentDict[str, int]):
        pass

    made = Sub.fromkeys("ab", 0)
    assert type(made) is Sub
    assert made == {"a": 0, "b": 0}
    assert PersistentDict.fromkeys([1, 2]) == {1: None, 2: None}


def test_copy_is_an_independent_unsaved_instance() -> None:
    connection = FakeConnection()
    pd = PersistentDict({1: [2]})
    connection.make_saved(pd)
    for duplicate in (pd.copy(), copy.copy(pd)):
        assert type(duplicate) is PersistentDict
        assert duplicate == pd
        assert duplicate._p_is_unsaved() and duplicate._p_oid is None
        duplicate[5] = 6
        assert 5 not in pd
        assert duplicate[1] is pd[1]  # shallow, as dict.copy()
    deep = copy.deepcopy(pd)
    assert deep == pd and deep[1] is not pd[1]


def test_repr_shows_class_oid_and_contents() -> None:
    pd = PersistentDict({1: "x"})
    assert repr(pd) == "<PersistentDict None {1: 'x'}>"
    FakeConnection().make_ghost(pd)
    assert repr(pd) == "<PersistentDict 1 {1: 'x'}>"
    pd["self"] = pd
    assert "{...}" in repr(pd)


def test_missing_hook_of_subclasses_is_used_by_getitem() -> None:
    class Counter(PersistentDict[str, int]):
        def __missing__(self, key: str) -> int:
            return 0

    counts = Counter(a=1)
    assert counts["a"] == 1
    assert counts["b"] == 0
    assert "b" not in counts
    with pytest.raises(KeyError):
        PersistentDict()["b"]


def test_is_a_mutable_mapping_and_generic() -> None:
    pd: PersistentDict[str, int] = PersistentDict()
    assert isinstance(pd, MutableMapping) and isinstance(pd, Mapping)
    # As in Durus, the containers are PersistentObjects (slots), not Persistents.
    assert isinstance(pd, PersistentObject) and not isinstance(pd, Persistent)
    assert PersistentDict[str, int].__origin__ is PersistentDict  # type: ignore[attr-defined]


def test_equality_with_other_types() -> None:
    pd = PersistentDict({1: 2})
    assert pd != [(1, 2)]
    assert pd != 5
    assert pd == {1: 2}
    assert {1: 2} == pd  # noqa: SIM300 -- the reflected comparison is the point
    assert pd == PersistentDict({1: 2})
    assert MappingProxyType({1: 2}) == pd
    assert (pd != {1: 2}) is False


def test_hashable_by_identity() -> None:
    a = PersistentDict({1: 2})
    b = PersistentDict({1: 2})
    assert a == b
    assert hash(a) == object.__hash__(a)
    cache = {a: "a", b: "b"}
    a[3] = 4  # mutation does not move the key
    assert cache[a] == "a" and cache[b] == "b"
    assert len({a, b}) == 2


# -- persistence bookkeeping ------------------------------------------------------------------


def test_state_layout_is_durus_layout() -> None:
    pd = PersistentDict({1: 2})
    assert pd.__getstate__() == {"data": {1: 2}}
    fresh = PersistentDict.__new__(PersistentDict)
    fresh.__setstate__({"data": {3: 4}})
    assert fresh == {3: 4}


def test_ghost_loads_on_first_read() -> None:
    connection = FakeConnection()
    pd = PersistentDict({1: 2})
    connection.make_ghost(pd)
    assert pd._p_is_ghost()
    with pytest.raises(AttributeError):
        object.__getattribute__(pd, "data")
    assert pd[1] == 2
    assert connection.loaded == [pd]
    assert pd._p_is_saved()
    assert len(pd) == 1
    assert connection.loaded == [pd] and connection.changed == []


def test_ghost_loads_on_first_mutation_and_is_marked_changed() -> None:
    connection = FakeConnection()
    pd = PersistentDict({1: 2})
    connection.make_ghost(pd)
    pd[3] = 4
    assert connection.loaded == [pd]
    assert connection.changed == [pd]
    assert pd._p_is_unsaved()
    assert pd == {1: 2, 3: 4}
    pd[5] = 6
    assert connection.changed == [pd]  # already unsaved: told once


@pytest.mark.parametrize(
    "no_op",
    [
        lambda pd: pd.setdefault(1, 9),
        lambda pd: pd.pop(7, None),
    ],
    ids=["setdefault-present", "pop-missing-with-default"],
)
def test_calls_without_effect_do_not_mark(no_op: Any) -> None:
    connection = FakeConnection()
    pd = PersistentDict({1: 2})
    connection.make_saved(pd)
    no_op(pd)
    assert pd._p_is_saved() and connection.changed == []


def test_clear_and_popitem_of_an_empty_dict_do_not_mark() -> None:
    connection = FakeConnection()
    pd: PersistentDict[int, int] = PersistentDict()
    connection.make_saved(pd)
    pd.clear()
    with pytest.raises(KeyError):
        pd.popitem()
    assert pd._p_is_saved() and connection.changed == []


def test_pop_of_a_missing_key_raises_without_marking() -> None:
    connection = FakeConnection()
    pd = PersistentDict({1: 2})
    connection.make_saved(pd)
    with pytest.raises(KeyError):
        pd.pop(7)
    assert pd._p_is_saved()


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pickle_round_trip(protocol: int) -> None:
    pd = PersistentDict({1: [2, 3], "k": PersistentDict(x=1)})
    copied = pickle.loads(pickle.dumps(pd, protocol))
    assert type(copied) is PersistentDict
    assert copied == pd and copied is not pd
    assert copied._p_is_unsaved() and copied._p_oid is None


def test_pickle_of_a_ghost_loads_it_and_copies_the_state() -> None:
    connection = FakeConnection()
    pd = PersistentDict({1: 2})
    connection.make_ghost(pd)
    copied = pickle.loads(pickle.dumps(pd))
    assert type(copied) is PersistentDict
    assert copied == {1: 2}
    assert copied._p_connection is None
