"""BTree: a persistent sorted mapping for collections too big for one object.

Theory of operation (spec: ``spec/btree.md``):

Layout.  A :class:`BTree` holds ``root``, a :class:`BNode`, and ``_count``,
the number of items, so ``len()`` is O(1).  Every node is a persistent object
of its own with two attributes: ``items``, a list of ``(key, value)`` tuples in
strictly ascending key order, and ``nodes``, ``None`` for a leaf or the list of
``len(items) + 1`` children of an interior node.  The minimum degree ``t`` is
a class attribute: ``BNode`` has ``t = 2`` and ``BNode4`` .. ``BNode512`` have
``t`` in their names, as in Durus 4.3, whose class and attribute names are
kept so that Durus databases map onto these classes unchanged.

Invariants (BT-010..BT-014): keys ascend strictly in in-order traversal;
every node but the root holds between ``t - 1`` and ``2t - 1`` items, the root
at most ``2t - 1``; every leaf is at the same depth; every node of one tree
is of one class; ``_count`` is the number of items.

Insertion runs top-down in one pass (Cormen et al., "Introduction to
Algorithms", 18.2): a full child is split before the descent enters it, so
the leaf that receives the item always has room.  Deletion is also one pass
top-down (18.3): before the descent enters a child with only ``t - 1`` items
it borrows an item from a sibling or merges with one, so the child can lose
an item.  Deleting an absent key is found out by a search first and changes
nothing (BT-021).

Change marking.  Only the nodes whose state an operation changes are marked
(``_p_note_change()`` before an in-place list mutation; attribute assignment
marks by itself), plus the BTree object when ``root`` or ``_count`` changes,
so a commit after one insertion writes the leaf, the BTree object and, when a
split ran, the two halves and their parent: O(depth) records, never the whole
tree (BT-020).  Reading never marks anything.

Keys must be mutually comparable with ``<`` and ``==`` (a total order).  A
comparison that raises ``TypeError`` (mixed ``str`` and ``int`` keys, say)
propagates; the tree is left valid and without the new key (BT-022).
"""

from __future__ import annotations

import operator
from bisect import bisect_left, bisect_right
from collections.abc import (
    ItemsView,
    Iterable,
    Iterator,
    KeysView,
    Mapping,
    MutableMapping,
    ValuesView,
)
from operator import itemgetter
from typing import Any, ClassVar, SupportsIndex, TypeVar, overload

from dhruva.error import EmptyBTreeError
from dhruva.persistent import UNSAVED, PersistentObject

T = TypeVar("T")

Item = tuple[Any, Any]

_MISSING: Any = object()
_key_of = itemgetter(0)
_set_slot = object.__setattr__


def _touch(node: PersistentObject) -> None:
    """Mark ``node`` changed before its lists are mutated in place."""
    if node._p_status != UNSAVED:
        node._p_note_change()


class BNode(PersistentObject):
    """One node of a BTree: ``items`` (sorted ``(key, value)`` tuples) and ``nodes``.

    ``nodes`` is ``None`` for a leaf, else the ``len(items) + 1`` children.
    The minimum degree is the class attribute ``minimum_degree`` (spec BT-002,
    BT-003); use the subclass with the degree wanted.  Nodes are managed by
    their BTree: change a tree through the BTree's methods only.
    """

    __slots__ = ("items", "nodes")

    minimum_degree: ClassVar[int] = 2

    items: list[Item]
    nodes: list[BNode] | None

    def __init__(self) -> None:
        self.items = []
        self.nodes = None

    # -- Durus's read-only node API -------------------------------------------------------

    def is_leaf(self) -> bool:
        return self.nodes is None

    def is_full(self) -> bool:
        return len(self.items) == 2 * self.minimum_degree - 1

    def get_position(self, key: Any) -> int:
        """Return the index of the first item whose key is not less than ``key``."""
        return bisect_left(self.items, key, key=_key_of)

    def search(self, key: Any) -> Item | None:
        """Return the ``(key, value)`` item for ``key`` in this subtree, or None."""
        node = self
        while True:
            items = node.items
            position = bisect_left(items, key, key=_key_of)
            if position < len(items) and items[position][0] == key:
                return items[position]
            children = node.nodes
            if children is None:
                return None
            node = children[position]

    def get_min_item(self) -> Item:
        node = self
        while node.nodes is not None:
            node = node.nodes[0]
        return node.items[0]

    def get_max_item(self) -> Item:
        node = self
        while node.nodes is not None:
            node = node.nodes[-1]
        return node.items[-1]

    def get_count(self) -> int:
        """Count the items in this subtree by visiting every node (O(n))."""
        return sum(len(node.items) for node in self._subtree_nodes())

    def get_node_count(self) -> int:
        """Count the nodes of this subtree, this one included (O(nodes))."""
        return sum(1 for _ in self._subtree_nodes())

    def _subtree_nodes(self) -> Iterator[BNode]:
        """Yield every node of this subtree, this one included, in no set order."""
        stack = [self]
        while stack:
            node = stack.pop()
            yield node
            if node.nodes is not None:
                stack.extend(node.nodes)

    def get_level(self) -> int:
        """Return how many levels lie below this node (0 for a leaf)."""
        level = 0
        node = self
        while node.nodes is not None:
            node = node.nodes[0]
            level += 1
        return level

    def __iter__(self) -> Iterator[Item]:
        return _iter_forward(self, _MISSING, True)

    def __reversed__(self) -> Iterator[Item]:
        return _iter_backward(self, _MISSING, True)

    def iter_from(self, key: Any) -> Iterator[Item]:
        """Yield the items with keys ``>= key`` in ascending order."""
        return _iter_forward(self, key, True)

    def iter_backward_from(self, key: Any) -> Iterator[Item]:
        """Yield the items with keys ``< key`` in descending order."""
        return _iter_backward(self, key, False)

    def split_child(self, position: int, child: BNode) -> None:
        """Split the full ``child`` (``self.nodes[position]``) around its middle item.

        The middle item moves up into this node; the upper half becomes a new
        node of the child's class at ``position + 1``.  Marks this node, the
        child and the new node changed.
        """
        children = self.nodes
        assert children is not None and children[position] is child and child.is_full()
        degree = child.minimum_degree
        sibling = type(child)._p_class()  # the real class, also for a tracked node
        child_items = child.items
        sibling.items = child_items[degree:]
        middle = child_items[degree - 1]
        child.items = child_items[: degree - 1]
        grandchildren = child.nodes
        if grandchildren is not None:
            sibling.nodes = grandchildren[degree:]
            child.nodes = grandchildren[:degree]
        _touch(self)
        self.items.insert(position, middle)
        children.insert(position + 1, sibling)


# The degree-specific classes keep Durus 4.3's names (spec BT-003).  A class
# statement each, not a loop, so that pickle finds them by module and name.
class BNode4(BNode):
    __slots__ = ()
    minimum_degree = 4


class BNode8(BNode):
    __slots__ = ()
    minimum_degree = 8


class BNode16(BNode):
    __slots__ = ()
    minimum_degree = 16


class BNode32(BNode):
    __slots__ = ()
    minimum_degree = 32


class BNode64(BNode):
    __slots__ = ()
    minimum_degree = 64


class BNode128(BNode):
    __slots__ = ()
    minimum_degree = 128


class BNode256(BNode):
    __slots__ = ()
    minimum_degree = 256


class BNode512(BNode):
    __slots__ = ()
    minimum_degree = 512


class BNode2(BNode):
    """Degree 2 under Durus's name before 3.6, to read such databases (BT-003)."""

    __slots__ = ()
    minimum_degree = 2


#: The node class a tree of each minimum degree is built from.
NODE_CLASS_BY_DEGREE: dict[int, type[BNode]] = {
    cls.minimum_degree: cls
    for cls in (BNode, BNode4, BNode8, BNode16, BNode32, BNode64, BNode128, BNode256, BNode512)
}


# -- iteration ------------------------------------------------------------------------------
#
# An explicit stack of (node, index) pairs instead of nested generators (as
# in Durus): each item then costs O(1) to yield, not O(depth).


def _iter_forward(root: BNode, start: Any, closed: bool) -> Iterator[Item]:
    """Yield items in ascending key order, from ``start`` (all when _MISSING).

    ``closed`` includes an item whose key equals ``start``.  For a stack entry
    ``(node, index)``, the subtree ``node.nodes[index]`` has been yielded and
    ``node.items[index]`` is next.
    """
    stack: list[tuple[BNode, int]] = []
    node = root
    while True:
        items = node.items
        if start is _MISSING:
            position = 0
        elif closed:
            position = bisect_left(items, start, key=_key_of)
        else:
            position = bisect_right(items, start, key=_key_of)
        children = node.nodes
        if children is None:
            for index in range(position, len(items)):
                yield items[index]
            break
        stack.append((node, position))
        node = children[position]
    while stack:
        node, index = stack.pop()
        items = node.items
        if index >= len(items):
            continue
        yield items[index]
        stack.append((node, index + 1))
        children = node.nodes
        assert children is not None
        child = children[index + 1]
        while child.nodes is not None:
            stack.append((child, 0))
            child = child.nodes[0]
        yield from child.items


def _iter_backward(root: BNode, start: Any, closed: bool) -> Iterator[Item]:
    """Yield items in descending key order, from ``start`` (all when _MISSING).

    ``closed`` includes an item whose key equals ``start``.  For a stack entry
    ``(node, index)``, the subtree ``node.nodes[index]`` has been yielded and
    ``node.items[index - 1]`` is next.
    """
    stack: list[tuple[BNode, int]] = []
    node = root
    while True:
        items = node.items
        if start is _MISSING:
            position = len(items)
        elif closed:
            position = bisect_right(items, start, key=_key_of)
        else:
            position = bisect_left(items, start, key=_key_of)
        children = node.nodes
        if children is None:
            for index in range(position - 1, -1, -1):
                yield items[index]
            break
        stack.append((node, position))
        node = children[position]
    while stack:
        node, index = stack.pop()
        if index == 0:
            continue
        items = node.items
        yield items[index - 1]
        stack.append((node, index - 1))
        children = node.nodes
        assert children is not None
        child = children[index - 1]
        while child.nodes is not None:
            stack.append((child, len(child.items)))
            child = child.nodes[-1]
        yield from reversed(child.items)


# -- deletion -------------------------------------------------------------------------------


def _delete(node: BNode, key: Any) -> Item:
    """Remove ``key`` from the subtree at ``node`` and return its item.

    Precondition: ``key`` is present, and ``node`` is the root or holds at
    least ``t`` items, so it can lose one.
    """
    degree = node.minimum_degree
    while True:
        items = node.items
        position = bisect_left(items, key, key=_key_of)
        found = position < len(items) and items[position][0] == key
        children = node.nodes
        if children is None:
            assert found, "the caller searched for the key first"
            _touch(node)
            return items.pop(position)
        if found:
            left, right = children[position], children[position + 1]
            # Replace the item by its predecessor or successor, deleted from
            # a subtree that can spare it.
            if len(left.items) >= degree:
                replacement = _delete(left, left.get_max_item()[0])
            elif len(right.items) >= degree:
                replacement = _delete(right, right.get_min_item()[0])
            else:
                # Both neighbours are minimal: merge them around the item and go on down.
                _merge_children(node, position)
                node = left
                continue
            removed = items[position]
            _touch(node)
            items[position] = replacement
            return removed
        child = children[position]
        if len(child.items) < degree:
            child = _fill_child(node, position)
        node = child


def _merge_children(node: BNode, position: int) -> None:
    """Merge ``nodes[position + 1]`` and ``items[position]`` into ``nodes[position]``."""
    children = node.nodes
    assert children is not None
    left, right = children[position], children[position + 1]
    _touch(node)
    separator = node.items.pop(position)
    del children[position + 1]
    left.items = [*left.items, separator, *right.items]
    if left.nodes is not None:
        assert right.nodes is not None
        left.nodes = [*left.nodes, *right.nodes]


def _fill_child(node: BNode, position: int) -> BNode:
    """Give the minimal child ``nodes[position]`` a ``t``-th item; return the child.

    Borrows through the parent from a sibling that can spare an item, else
    merges with a sibling (the returned node is then the merged one).
    """
    children = node.nodes
    assert children is not None
    degree = node.minimum_degree
    child = children[position]
    if position > 0 and len(children[position - 1].items) >= degree:
        lender = children[position - 1]
        _touch(node)
        _touch(lender)
        _touch(child)
        child.items.insert(0, node.items[position - 1])
        node.items[position - 1] = lender.items.pop()
        if child.nodes is not None:
            assert lender.nodes is not None
            child.nodes.insert(0, lender.nodes.pop())
        return child
    if position + 1 < len(children) and len(children[position + 1].items) >= degree:
        lender = children[position + 1]
        _touch(node)
        _touch(lender)
        _touch(child)
        child.items.append(node.items[position])
        node.items[position] = lender.items.pop(0)
        if child.nodes is not None:
            assert lender.nodes is not None
            child.nodes.append(lender.nodes.pop(0))
        return child
    if position > 0:
        _merge_children(node, position - 1)
        return children[position - 1]
    _merge_children(node, position)
    return child


# -- the tree -------------------------------------------------------------------------------


class BTree(PersistentObject, MutableMapping[Any, Any]):
    """A persistent sorted mapping: ``BTree(node_constructor=BNode16)``.

    Keys must be mutually comparable (a total order); values are anything
    storable.  Durus 4.3's API: ``add``, item access, ``get``,
    ``setdefault``, ``update``, ``items_from``, ``items_backward_from``,
    ``items_range``, ``items_backward``, ``get_min_item``, ``get_max_item``,
    ``iteritems``/``iterkeys``/``itervalues``, ``has_key``,
    ``note_change_of_bnode_containing_key``, ``get_depth``,
    ``get_node_count``, ``set_bnode_minimum_degree``; also every
    ``MutableMapping`` method.  ``len()`` is O(1).  ``keys()``, ``values()``
    and ``items()`` return views (Durus 4.3 returns lists).

    Equality compares contents (with another BTree or any Mapping) while the
    hash is the identity hash, as for PersistentDict.  Changing a tree while
    iterating over it gives undefined results, as in Durus.
    Spec: ``spec/btree.md``.
    """

    __slots__ = ("_count", "root")

    root: BNode
    _count: int

    # Content equality with identity hashing, as PersistentDict (see there).
    __hash__ = object.__hash__

    def __init__(self, node_constructor: type[BNode] = BNode16) -> None:
        if not (isinstance(node_constructor, type) and issubclass(node_constructor, BNode)):
            raise TypeError(f"node_constructor must be a BNode class, not {node_constructor!r}")
        self.root = node_constructor()
        self._count = 0

    # -- size ---------------------------------------------------------------------------

    def __len__(self) -> int:
        try:
            return self._count
        except AttributeError:
            # [BT-001] A tree written by Durus has no _count: count it once.
            # Setting the slot directly does not mark the tree changed, so
            # reading never causes a write; the count is stored whenever the
            # tree is next written.
            count = self.root.get_count()
            _set_slot(self, "_count", count)
            return count

    def __bool__(self) -> bool:
        return bool(self.root.items)

    # -- reading ------------------------------------------------------------------------

    def __getitem__(self, key: Any) -> Any:
        item = self.root.search(key)
        if item is None:
            raise KeyError(key)
        return item[1]

    @overload
    def get(self, key: Any, default: None = None) -> Any | None: ...
    @overload
    def get(self, key: Any, default: T) -> Any | T: ...
    def get(self, key: Any, default: Any = None) -> Any:
        item = self.root.search(key)
        return default if item is None else item[1]

    def __contains__(self, key: object) -> bool:
        return self.root.search(key) is not None

    def has_key(self, key: Any) -> bool:
        """Durus's name for ``key in tree``."""
        return self.root.search(key) is not None

    def __iter__(self) -> Iterator[Any]:
        for item in _iter_forward(self.root, _MISSING, True):
            yield item[0]

    def __reversed__(self) -> Iterator[Any]:
        for item in _iter_backward(self.root, _MISSING, True):
            yield item[0]

    def iteritems(self) -> Iterator[Item]:
        """Yield every ``(key, value)`` in ascending key order."""
        return _iter_forward(self.root, _MISSING, True)

    def iterkeys(self) -> Iterator[Any]:
        return iter(self)

    def itervalues(self) -> Iterator[Any]:
        for item in _iter_forward(self.root, _MISSING, True):
            yield item[1]

    def keys(self) -> _BTreeKeysView:
        return _BTreeKeysView(self)

    def values(self) -> _BTreeValuesView:
        return _BTreeValuesView(self)

    def items(self) -> _BTreeItemsView:
        return _BTreeItemsView(self)

    def items_backward(self) -> Iterator[Item]:
        """Yield every ``(key, value)`` in descending key order."""
        return _iter_backward(self.root, _MISSING, True)

    def items_from(self, key: Any, closed: bool = True) -> Iterator[Item]:
        """Yield, ascending, the items with keys ``>= key`` (``> key`` if not ``closed``)."""
        return _iter_forward(self.root, key, closed)

    def items_backward_from(self, key: Any, closed: bool = False) -> Iterator[Item]:
        """Yield, descending, the items with keys ``< key`` (``<= key`` if ``closed``)."""
        return _iter_backward(self.root, key, closed)

    def items_range(
        self, start: Any, end: Any, closed_start: bool = True, closed_end: bool = False
    ) -> Iterator[Item]:
        """Yield the items with keys between ``start`` and ``end``, from ``start``.

        Ascending when ``start <= end``, else descending.  ``closed_start``
        and ``closed_end`` include an item whose key equals that bound.
        """
        if start <= end:
            for item in _iter_forward(self.root, start, closed_start):
                key = item[0]
                if end < key or (not closed_end and key == end):
                    return
                yield item
        else:
            for item in _iter_backward(self.root, start, closed_start):
                key = item[0]
                if key < end or (not closed_end and key == end):
                    return
                yield item

    def get_min_item(self) -> Item:
        """Return the ``(key, value)`` with the least key.

        Raises EmptyBTreeError (a ValueError and, as in Durus, an
        AssertionError) when the tree is empty (BT-024).
        """
        if not self.root.items:
            raise EmptyBTreeError("get_min_item() of an empty BTree")
        return self.root.get_min_item()

    def get_max_item(self) -> Item:
        """Return the ``(key, value)`` with the greatest key.

        Raises EmptyBTreeError (a ValueError and an AssertionError) when the
        tree is empty (BT-024).
        """
        if not self.root.items:
            raise EmptyBTreeError("get_max_item() of an empty BTree")
        return self.root.get_max_item()

    def get_depth(self) -> int:
        """Return the number of node levels (1 for a tree that is one leaf)."""
        return self.root.get_level() + 1

    def get_node_count(self) -> int:
        """Return the number of nodes (visits every node)."""
        return self.root.get_node_count()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, BTree):
            if len(self) != len(other):
                return False
            return all(a == b for a, b in zip(self.iteritems(), other.iteritems(), strict=True))
        if isinstance(other, Mapping):
            if len(self) != len(other):
                return False
            for key, value in self.iteritems():
                if key not in other or other[key] != value:
                    return False
            return True
        return NotImplemented

    def __repr__(self) -> str:
        # Not len(self): a tree written by Durus would be counted node by node.
        count = getattr(self, "_count", "?")
        return f"<{type(self)._p_class.__qualname__} {self._p_format_oid()} len={count}>"

    # -- changing -----------------------------------------------------------------------

    def add(self, key: Any, value: Any = True) -> None:
        """Make ``self[key] == value``; ``value`` defaults to True (set-like use)."""
        root = self.root
        if root.is_full():
            # The root splits into a new root of the same class with one item.
            new_root = type(root)._p_class()
            new_root.nodes = [root]
            new_root.split_child(0, root)
            self.root = root = new_root
        node = root
        while True:
            items = node.items
            position = bisect_left(items, key, key=_key_of)
            if position < len(items) and items[position][0] == key:
                _touch(node)
                items[position] = (key, value)
                return
            children = node.nodes
            if children is None:
                _touch(node)
                items.insert(position, (key, value))
                break
            child = children[position]
            if child.is_full():
                node.split_child(position, child)
                middle_key = items[position][0]
                if middle_key == key:
                    items[position] = (key, value)  # node was marked by the split
                    return
                if middle_key < key:
                    position += 1
                child = children[position]
            node = child
        self._count = len(self) + 1

    def __setitem__(self, key: Any, value: Any) -> None:
        self.add(key, value)

    def setdefault(self, key: Any, default: Any = None) -> Any:
        item = self.root.search(key)
        if item is None:
            self.add(key, default)
            return default
        return item[1]

    def update(self, *args: Any, **kwargs: Any) -> None:
        """Add every pair of a mapping or an iterable of pairs, then of ``kwargs``."""
        if len(args) > 1:
            raise TypeError(f"update expected at most 1 argument, got {len(args)}")
        if args:
            source = args[0]
            pairs: Iterable[tuple[Any, Any]]
            if isinstance(source, BTree):
                pairs = source.iteritems()
            elif hasattr(source, "items"):
                pairs = source.items()
            else:
                pairs = source
            for key, value in pairs:
                self.add(key, value)
        for key, value in kwargs.items():
            self.add(key, value)

    def __delitem__(self, key: Any) -> None:
        self._remove(key)

    def pop(self, key: Any, default: Any = _MISSING) -> Any:
        """Remove ``key`` and return its value, or ``default`` if given and absent."""
        if default is not _MISSING and self.root.search(key) is None:
            return default
        return self._remove(key)[1]

    def popitem(self) -> Item:
        """Remove and return the item with the least key; KeyError when empty."""
        if not self.root.items:
            raise KeyError("popitem(): BTree is empty")
        return self._remove(self.root.get_min_item()[0])

    def _remove(self, key: Any) -> Item:
        # [BT-021] Search first: an absent key raises before any node is
        # restructured or marked.
        if self.root.search(key) is None:
            raise KeyError(key)
        count = len(self)
        root = self.root
        removed = _delete(root, key)
        if not root.items and root.nodes is not None:
            # The root's last item moved down into a merged child: the
            # tree loses a level.
            self.root = root.nodes[0]
        self._count = count - 1
        return removed

    def clear(self) -> None:
        """Remove every item (the new root is a fresh node of the same class)."""
        if self.root.items or len(self):
            self.root = type(self.root)._p_class()
            self._count = 0

    def note_change_of_bnode_containing_key(self, key: Any) -> None:
        """Mark the node holding ``key`` changed (after mutating its value in place).

        Raises KeyError when ``key`` is absent.
        """
        node = self.root
        while True:
            items = node.items
            position = bisect_left(items, key, key=_key_of)
            if position < len(items) and items[position][0] == key:
                node._p_note_change()
                return
            if node.nodes is None:
                raise KeyError(key)
            node = node.nodes[position]

    def set_bnode_minimum_degree(self, degree: int) -> bool:
        """Rebuild the tree from nodes of minimum degree ``degree``; True if it changed.

        Supported degrees are the keys of ``NODE_CLASS_BY_DEGREE`` (2, 4, ...,
        512); others raise ValueError.  A non-empty tree is rebuilt, as in
        Durus, which writes every node anew at the next commit.
        """
        node_class = NODE_CLASS_BY_DEGREE.get(degree)
        if node_class is None:
            supported = ", ".join(str(d) for d in NODE_CLASS_BY_DEGREE)
            raise ValueError(f"no BNode class has minimum degree {degree!r}; use {supported}")
        if self.root.minimum_degree == degree:
            return False
        rebuilt = BTree(node_class)
        for key, value in self.iteritems():
            rebuilt.add(key, value)
        self.root = rebuilt.root
        self._count = len(rebuilt)
        return True


class _SequenceViewMixin:
    """What Durus code expects of the lists Durus 4.3's keys()/values()/items() return.

    The views stay views (no copy of the tree is made), but, since a BTree's
    order is fixed, they also behave as the sorted sequence they walk: ``==``
    with a list or tuple compares in order, and ``view[i]`` and
    ``view[i:j]`` index that sequence (BT-025).  Indexing walks the tree from
    the start, so ``list(view)`` is the faster way to index many times.
    """

    def __iter__(self) -> Iterator[Any]:
        raise NotImplementedError

    def _sequence_eq(self, other: object) -> bool | None:
        if isinstance(other, (list, tuple)):
            return list(self) == list(other)
        return None

    @overload
    def __getitem__(self, index: SupportsIndex) -> Any: ...
    @overload
    def __getitem__(self, index: slice) -> list[Any]: ...
    def __getitem__(self, index: SupportsIndex | slice) -> Any:
        if isinstance(index, slice):
            return list(self)[index]
        position = operator.index(index)
        if position < 0:
            return list(self)[position]
        for seen, element in enumerate(self):
            if seen == position:
                return element
        raise IndexError("BTree view index out of range")


class _BTreeKeysView(_SequenceViewMixin, KeysView[Any]):
    """A keys view that can also run backward, as a dict's can.

    It compares as a set with sets (as a dict's keys view does) and in order
    with lists and tuples (as Durus's list does).
    """

    _mapping: BTree

    def __iter__(self) -> Iterator[Any]:
        return iter(self._mapping)

    def __reversed__(self) -> Iterator[Any]:
        return reversed(self._mapping)

    def __eq__(self, other: object) -> bool:
        result = self._sequence_eq(other)
        if result is not None:
            return result
        return KeysView.__eq__(self, other)

    __hash__ = None  # type: ignore[assignment]


class _BTreeValuesView(_SequenceViewMixin, ValuesView[Any]):
    """A values view that walks the tree once instead of looking up every key."""

    _mapping: BTree

    def __iter__(self) -> Iterator[Any]:
        return self._mapping.itervalues()

    def __reversed__(self) -> Iterator[Any]:
        for item in self._mapping.items_backward():
            yield item[1]

    def __eq__(self, other: object) -> bool:
        result = self._sequence_eq(other)
        if result is not None:
            return result
        return self is other

    __hash__ = None  # type: ignore[assignment]


class _BTreeItemsView(_SequenceViewMixin, ItemsView[Any, Any]):
    """An items view that walks the tree once instead of looking up every key."""

    _mapping: BTree

    def __iter__(self) -> Iterator[Item]:
        return self._mapping.iteritems()

    def __reversed__(self) -> Iterator[Item]:
        return self._mapping.items_backward()

    def __eq__(self, other: object) -> bool:
        result = self._sequence_eq(other)
        if result is not None:
            return result
        return ItemsView.__eq__(self, other)

    __hash__ = None  # type: ignore[assignment]


__all__ = [
    "NODE_CLASS_BY_DEGREE",
    "BNode",
    "BNode2",
    "BNode4",
    "BNode8",
    "BNode16",
    "BNode32",
    "BNode64",
    "BNode128",
    "BNode256",
    "BNode512",
    "BTree",
]
