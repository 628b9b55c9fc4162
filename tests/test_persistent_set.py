"""PersistentSet behaves as set and records every change (dhruva/persistent_set.py)."""

from __future__ import annotations

import copy
import operator
import pickle
from collections.abc import MutableSet
from typing import Any

import pytest
from _persistent_fakes import PRIOR_STATES, FakeConnection, Op, check_against_builtin
from hypothesis import given, settings
from hypothesis import strategies as st

from dhruva.persistent import Persistent, PersistentObject
from dhruva.persistent_set import PersistentSet

elements = st.integers(0, 7)
sets = st.sets(elements, max_size=6)
several_sets = st.lists(sets, max_size=3)

BINARY = {"|": operator.or_, "&": operator.and_, "-": operator.sub, "^": operator.xor}
INPLACE = {"|=": operator.ior, "&=": operator.iand, "-=": operator.isub, "^=": operator.ixor}
COMPARE = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
# How an operand is presented: the builtin model always gets the plain set.
WRAPPERS = {
    "set": set,
    "frozenset": frozenset,
    "PersistentSet": PersistentSet,
    "keys": lambda s: dict.fromkeys(s).keys(),
    "list": list,
}


def _operand(wrapper: str, other: set[int], c: Any) -> Any:
    if wrapper == "PersistentSet" and not isinstance(c, PersistentSet):
        return set(other)
    return WRAPPERS[wrapper](other)


def _binary(symbol: str, wrapper: str, other: set[int], reflected: bool) -> Op:
    function = {**BINARY, **COMPARE}[symbol]
    # A list operand is not a set: == and != answer without reading the set.
    reads = wrapper != "list"
    if reflected:
        name = f"{wrapper}({sorted(other)}) {symbol} c"
        return Op(name, lambda c: function(_operand(wrapper, other, c), c), reads=reads)
    name = f"c {symbol} {wrapper}({sorted(other)})"
    return Op(name, lambda c: function(c, _operand(wrapper, other, c)), reads=reads)


def _inplace(symbol: str, wrapper: str, other: set[int]) -> Op:
    function = INPLACE[symbol]
    return Op(
        f"c {symbol} {wrapper}({sorted(other)})",
        lambda c: function(c, _operand(wrapper, other, c)),
        mutating=True,
    )


def _inplace_on_plain(symbol: str, other: set[int]) -> Op:
    """``plain op= c``: the result and whether ``plain`` kept its type."""
    function = INPLACE[symbol]

    def apply(c: Any) -> Any:
        result = function(set(other), c)
        return (type(result), result)

    return Op(f"{sorted(other)} {symbol} c", apply)


def _self_inplace(symbol: str) -> Op:
    function = INPLACE[symbol]
    return Op(f"c {symbol} c", lambda c: function(c, c), mutating=True)


def _named(method: str, *args: Any, mutating: bool = False) -> Op:
    return Op(f"{method}{args}", lambda c: getattr(c, method)(*args), mutating=mutating)


def _named_persistent(method: str, others: list[set[int]], mutating: bool = False) -> Op:
    """``c.method(*others)`` with PersistentSet arguments for the persistent side."""

    def apply(c: Any) -> Any:
        wrap = PersistentSet if isinstance(c, PersistentSet) else set
        return getattr(c, method)(*[wrap(other) for other in others])

    return Op(f"{method}(*PersistentSet{others})", apply, mutating=mutating)


wrappers = st.sampled_from(sorted(WRAPPERS))
READ_OPS = st.one_of(
    st.just(Op("len", len)),
    st.just(Op("bool", bool)),
    st.just(Op("sorted", sorted)),
    st.just(Op("copy", lambda c: c.copy())),
    st.just(Op("eq copy", lambda c: c == c.copy())),
    st.just(Op("c - c", lambda c: c - c)),
    st.just(Op("c <= c", lambda c: c <= c)),
    elements.map(lambda x: Op(f"contains {x}", lambda c: x in c)),
    st.builds(
        _binary, st.sampled_from(sorted({**BINARY, **COMPARE})), wrappers, sets, st.booleans()
    ),
    st.builds(_inplace_on_plain, st.sampled_from(sorted(INPLACE)), sets),
    st.builds(_named, st.sampled_from(["isdisjoint", "issubset", "issuperset"]), sets),
    st.builds(_named, st.sampled_from(["isdisjoint", "issubset", "issuperset"]), sets.map(list)),
    st.builds(_named, st.just("symmetric_difference"), sets),
    several_sets.flatmap(
        lambda others: st.sampled_from(
            [_named(method, *others) for method in ("union", "intersection", "difference")]
            + [_named_persistent(method, others) for method in ("union", "intersection")]
        )
    ),
    st.just(_named("union", [1, 2], (3,))),
    st.just(_named("issubset", 5)),
)

WRITE_OPS = st.one_of(
    elements.map(lambda x: _named("add", x, mutating=True)),
    elements.map(lambda x: _named("discard", x, mutating=True)),
    elements.map(lambda x: _named("remove", x, mutating=True)),
    st.just(Op("pop", lambda c: c.pop(), mutating=True, arbitrary=True)),
    st.just(_named("clear", mutating=True)),
    # Not "keys": ``plain_set |= keys_view`` rebinds to a new set, while a
    # PersistentSet updates itself in place (test_in_place_operators_with_views).
    st.builds(
        _inplace,
        st.sampled_from(sorted(INPLACE)),
        st.sampled_from(["frozenset", "list", "PersistentSet", "set"]),
        sets,
    ),
    st.builds(_self_inplace, st.sampled_from(sorted(INPLACE))),
    several_sets.flatmap(
        lambda others: st.sampled_from(
            [
                _named(method, *others, mutating=True)
                for method in ("update", "intersection_update", "difference_update")
            ]
            + [
                _named_persistent(method, others, mutating=True)
                for method in ("update", "intersection_update", "difference_update")
            ]
        )
    ),
    sets.map(lambda other: _named("symmetric_difference_update", other, mutating=True)),
    sets.map(lambda other: _named("symmetric_difference_update", list(other), mutating=True)),
    st.sampled_from(
        [
            Op(f"{method}(c)", lambda c, m=method: getattr(c, m)(c), mutating=True)
            for method in (
                "update",
                "intersection_update",
                "difference_update",
                "symmetric_difference_update",
            )
        ]
    ),
    st.just(_named("update", [1, 2], (3,), mutating=True)),
    st.just(_named("update", 5, mutating=True)),
)

STEPS = st.lists(st.tuples(st.sampled_from(PRIOR_STATES), st.one_of(READ_OPS, WRITE_OPS)))


@settings(deadline=None, max_examples=300)
@given(sets, STEPS)
def test_behaves_as_set_and_marks_changes(initial: set[int], steps: list[Any]) -> None:
    check_against_builtin(initial, PersistentSet, lambda ps: ps.s, steps)


# -- construction, types of results, representation -------------------------------------------


def test_constructor_accepts_what_set_accepts() -> None:
    assert PersistentSet().s == set()
    assert PersistentSet([1, 1, 2]).s == {1, 2}
    assert PersistentSet("ab").s == {"a", "b"}
    assert PersistentSet(PersistentSet([3])).s == {3}
    with pytest.raises(TypeError):
        PersistentSet(5)  # type: ignore[arg-type]


def test_constructor_copies_its_argument() -> None:
    source = {1}
    ps = PersistentSet(source)
    ps.add(2)
    assert source == {1}


def test_derived_sets_keep_the_class_unless_a_builtin_is_on_the_left() -> None:
    class Tags(PersistentSet[str]):
        pass

    tags = Tags("ab")
    for derived in (
        tags | {"c"},
        tags & {"a"},
        tags - {"a"},
        tags ^ {"a"},
        tags.union("c"),
        tags.intersection("a"),
        tags.difference("a"),
        tags.symmetric_difference("a"),
        tags.copy(),
        copy.copy(tags),
    ):
        assert type(derived) is Tags
    assert type({"c"} | tags) is set
    assert type(frozenset("c") | tags) is frozenset
    assert type({"c"} - tags) is set


def test_plain_set_in_place_operator_keeps_a_builtin_set() -> None:
    plain = {1}
    plain |= PersistentSet([2])
    assert type(plain) is set and plain == {1, 2}


def test_in_place_operators_with_views_update_in_place() -> None:
    ps = PersistentSet([1, 2])
    alias = ps
    ps |= {3: None}.keys()
    ps -= {1: None}.keys()
    assert ps is alias and ps == {2, 3}


def test_copy_is_an_independent_unsaved_instance() -> None:
    connection = FakeConnection()
    ps = PersistentSet([(1,)])
    connection.make_saved(ps)
    for duplicate in (ps.copy(), copy.copy(ps)):
        assert duplicate == ps
        assert duplicate._p_is_unsaved() and duplicate._p_oid is None
        duplicate.add(2)
        assert 2 not in ps
    assert copy.deepcopy(ps) == ps


def test_repr_shows_class_oid_and_contents() -> None:
    ps = PersistentSet([1])
    assert repr(ps) == "<PersistentSet None {1}>"
    FakeConnection().make_ghost(ps)
    assert repr(ps) == "<PersistentSet 1 {1}>"


def test_is_a_mutable_set_and_generic() -> None:
    ps: PersistentSet[int] = PersistentSet()
    assert isinstance(ps, MutableSet)
    # As in Durus, the containers are PersistentObjects (slots), not Persistents.
    assert isinstance(ps, PersistentObject) and not isinstance(ps, Persistent)
    assert PersistentSet[int].__origin__ is PersistentSet  # type: ignore[attr-defined]


def test_comparisons_with_sets_frozensets_and_others() -> None:
    ps = PersistentSet([1, 2])
    assert ps == {1, 2} and ps == frozenset([1, 2]) and ps == PersistentSet([2, 1])
    assert frozenset([1, 2]) == ps
    assert ps <= frozenset([1, 2, 3]) and ps < {1, 2, 3} and ps > {1} and ps >= ps
    assert ps != [1, 2] and ps != 5
    with pytest.raises(TypeError):
        _ = ps < [1, 2, 3]  # type: ignore[operator]
    with pytest.raises(TypeError):
        _ = ps | [3]  # type: ignore[operator]


def test_hashable_by_identity() -> None:
    a = PersistentSet([1])
    b = PersistentSet([1])
    assert a == b
    assert hash(a) == object.__hash__(a)
    cache = {a: "a", b: "b"}
    a.add(2)
    assert cache[a] == "a" and cache[b] == "b"


# -- persistence bookkeeping ------------------------------------------------------------------


def test_state_layout_is_durus_layout() -> None:
    ps = PersistentSet([1, 2])
    assert ps.__getstate__() == {"s": {1, 2}}
    fresh = PersistentSet.__new__(PersistentSet)
    fresh.__setstate__({"s": {3}})
    assert fresh == {3}


def test_ghost_loads_on_first_read() -> None:
    connection = FakeConnection()
    ps = PersistentSet([1])
    connection.make_ghost(ps)
    assert 1 in ps
    assert connection.loaded == [ps] and connection.changed == []
    assert ps._p_is_saved()


def test_ghost_loads_on_first_mutation_and_is_marked_changed() -> None:
    connection = FakeConnection()
    ps = PersistentSet([1])
    connection.make_ghost(ps)
    ps.add(2)
    assert connection.loaded == [ps] and connection.changed == [ps]
    assert ps._p_is_unsaved() and ps == {1, 2}


@pytest.mark.parametrize(
    "no_op",
    [lambda ps: ps.add(1), lambda ps: ps.discard(7)],
    ids=["add-present", "discard-missing"],
)
def test_calls_without_effect_do_not_mark(no_op: Any) -> None:
    connection = FakeConnection()
    ps = PersistentSet([1])
    connection.make_saved(ps)
    no_op(ps)
    assert ps._p_is_saved() and connection.changed == []


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pickle_round_trip(protocol: int) -> None:
    ps = PersistentSet([1, "x", (2, 3)])
    copied = pickle.loads(pickle.dumps(ps, protocol))
    assert type(copied) is PersistentSet
    assert copied == ps and copied is not ps
    assert copied._p_is_unsaved() and copied._p_oid is None
