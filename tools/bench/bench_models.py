"""The object classes the benchmark stores, one set per database system.

Every system gets the same two shapes so the figures compare like with like:

* ``Item``: a small persistent object with three attributes (``a`` an int,
  ``b`` a short str, ``c`` a float), the unit counted by every objects/s figure.
* ``EverydayItem``: issue 13's Item (``a`` an int, ``b`` a short str, ``c``
  a float, ``d`` a list of 3 ints), stored 1000 to a chunk dict by
  ``everyday_bench.py``.
* ``Bucket``: a persistent object whose ``items`` attribute is a plain list of
  up to 10,000 Items; the root maps ``"b0"``, ``"b1"``, ... to Buckets.  One
  commit of a bulk load writes one Bucket and its Items, so no single record
  grows with the database (a root list of a million references would make the
  build quadratic).

The classes live in this module (not in ``run.py``) because the databases
pickle their qualified names: ``bench_models.DurusItem`` must import the same
way when ``run.py`` builds a database and when the smoke test reopens one.
A system that is not installed simply has no classes here.
"""

from __future__ import annotations

from typing import Any


class PlainItem:
    """The non-persistent twin of every ``*Item``: same attributes, same order."""

    def __init__(self, a: int, b: str, c: float) -> None:
        self.a = a
        self.b = b
        self.c = c


# Each block defines the classes under their final names, so a pickled
# reference such as ``bench_models.DurusItem`` resolves on reopen.  Callers look
# the classes up with ``getattr(bench_models, name, None)``.

try:
    from dhruva.persistent import Persistent as _DhruvaPersistent
except ImportError:  # dhruva.persistent not written yet, or broken
    pass
else:

    class DhruvaItem(_DhruvaPersistent):
        def __init__(self, a: int, b: str, c: float) -> None:
            self.a = a
            self.b = b
            self.c = c

    class DhruvaBucket(_DhruvaPersistent):
        def __init__(self, items: list[Any]) -> None:
            self.items = items

    class DhruvaEverydayItem(_DhruvaPersistent):
        def __init__(self, a: int, b: str, c: float, d: list[int]) -> None:
            self.a = a
            self.b = b
            self.c = c
            self.d = d


try:
    from durus.persistent import Persistent as _DurusPersistent
except ImportError:
    pass
else:

    class DurusItem(_DurusPersistent):
        def __init__(self, a: int, b: str, c: float) -> None:
            self.a = a
            self.b = b
            self.c = c

    class DurusBucket(_DurusPersistent):
        def __init__(self, items: list[Any]) -> None:
            self.items = items

    class DurusEverydayItem(_DurusPersistent):
        def __init__(self, a: int, b: str, c: float, d: list[int]) -> None:
            self.a = a
            self.b = b
            self.c = c
            self.d = d


try:
    from persistent import Persistent as _ZodbPersistent
except ImportError:
    pass
else:

    class ZodbItem(_ZodbPersistent):
        def __init__(self, a: int, b: str, c: float) -> None:
            self.a = a
            self.b = b
            self.c = c

    class ZodbBucket(_ZodbPersistent):
        def __init__(self, items: list[Any]) -> None:
            self.items = items

    class ZodbEverydayItem(_ZodbPersistent):
        def __init__(self, a: int, b: str, c: float, d: list[int]) -> None:
            self.a = a
            self.b = b
            self.c = c
            self.d = d
