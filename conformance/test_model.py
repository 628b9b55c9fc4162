"""Model-based test of the storage contract (spec CONF-054).

A Hypothesis ``RuleBasedStateMachine`` drives the back-end with random
sequences of new_oid, begin, store, commit, abort_transaction, close-and-
reopen and crash-and-reopen, and after every step compares what the storage
shows with a plain dict holding the committed records.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import pytest
from dhruva_conformance.backends import StorageFactory, create_backend
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from dhruva.error import DhruvaError, DhruvaKeyError
from dhruva.storage import Storage

MODEL_SETTINGS = settings(
    max_examples=100,
    stateful_step_count=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

Entry = tuple[bytes, bytes]


class StorageModel(RuleBasedStateMachine):
    """The storage against ``committed``: oid -> (data, refs) of acknowledged commits."""

    oids = Bundle("oids")
    make_factory: ClassVar[Callable[[], StorageFactory]]  # set per test run

    def __init__(self) -> None:
        super().__init__()
        self.factory: StorageFactory = type(self).make_factory()
        self.storage: Storage = self.factory.open()
        self.committed: dict[bytes, Entry] = {}
        self.pending: dict[bytes, Entry] | None = None
        self.handed_out: set[bytes] = set()

    def teardown(self) -> None:
        self.factory.cleanup()

    @initialize(target=oids)
    def first_oid(self) -> bytes:
        return self._allocate()

    @rule(target=oids)
    def new_oid(self) -> bytes:
        return self._allocate()

    def _allocate(self) -> bytes:
        oid = self.storage.new_oid()
        # [SAPI-010] Never an oid handed out before by this opening, nor a stored one.
        assert oid not in self.handed_out
        assert oid not in self.committed
        self.handed_out.add(oid)
        return oid

    @precondition(lambda self: self.pending is None)
    @rule()
    def begin(self) -> None:
        self.storage.begin()
        self.pending = {}

    @precondition(lambda self: self.pending is not None)
    @rule()
    def begin_twice(self) -> None:
        with pytest.raises(DhruvaError):
            self.storage.begin()

    @precondition(lambda self: self.pending is not None)
    @rule(oid=oids, data=st.binary(max_size=40), refs=st.lists(oids, max_size=3))
    def store(self, oid: bytes, data: bytes, refs: list[bytes]) -> None:
        assert self.pending is not None
        if oid not in self.handed_out and oid not in self.committed:
            # Handed out before a reopen and never stored: new_oid may hand
            # it out again (SAPI-012), so an application must not store it.
            return
        self.storage.store(oid, data, b"".join(refs))
        self.pending[oid] = (data, b"".join(refs))

    @precondition(lambda self: self.pending is None)
    @rule(oid=oids)
    def store_outside_transaction(self, oid: bytes) -> None:
        with pytest.raises(DhruvaError):
            self.storage.store(oid, b"x", b"")

    @precondition(lambda self: self.pending is not None)
    @rule()
    def commit(self) -> None:
        assert self.pending is not None
        self.storage.end()
        self.committed.update(self.pending)
        self.pending = None

    @precondition(lambda self: self.pending is None)
    @rule(
        records=st.lists(
            st.tuples(oids, st.binary(max_size=20), st.lists(oids, max_size=2)),
            min_size=1,
            max_size=4,
        )
    )
    def whole_transaction(self, records: list[tuple[bytes, bytes, list[bytes]]]) -> None:
        """begin, several stores (an oid may repeat: the last wins), end."""
        self.begin()
        for oid, data, refs in records:
            self.store(oid, data, refs)
        self.commit()

    @precondition(lambda self: self.pending is not None)
    @rule()
    def abort_transaction(self) -> None:
        self.storage.abort_transaction()
        self.pending = None

    @precondition(lambda self: "reopen" in self.factory.capabilities)
    @rule()
    def close_and_reopen(self) -> None:
        self.storage.close()
        self._reopened()

    @precondition(lambda self: {"reopen", "durable"} <= self.factory.capabilities)
    @rule()
    def crash_and_reopen(self) -> None:
        self.factory.crash(self.storage)
        self._reopened()

    def _reopened(self) -> None:
        self.storage = self.factory.open(reopen=True)
        # An uncommitted transaction is gone; oids handed out but never
        # stored MAY be handed out again after a reopen (SAPI-012).
        self.pending = None
        self.handed_out = set(self.committed)

    @invariant()
    def storage_matches_model(self) -> None:
        # [SAPI-033] Stores of the open transaction are not visible yet.
        for oid in self.handed_out | set(self.committed):
            try:
                record = self.storage.load(oid)
            except DhruvaKeyError:
                assert oid not in self.committed, f"committed oid {oid!r} is missing"
                continue
            assert (record.data, record.refs) == self.committed.get(oid)
        assert set(self.storage.iter_oids()) == set(self.committed)


@pytest.mark.req("CONF-054", "SAPI-010", "SAPI-020", "SAPI-032", "SAPI-033", "SAPI-037")
def test_storage_against_dict_model(dhruva_backend_name: str, tmp_path: Path) -> None:
    counter = itertools.count()

    def make_factory() -> StorageFactory:
        return create_backend(dhruva_backend_name, tmp_path / f"model{next(counter)}")

    class Model(StorageModel):
        pass

    Model.make_factory = staticmethod(make_factory)
    run_state_machine_as_test(Model, settings=MODEL_SETTINGS)  # type: ignore[no-untyped-call]
