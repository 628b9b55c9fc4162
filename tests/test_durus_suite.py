"""Durus 4.3's own unit tests, with ``durus`` renamed to ``dhruva``, run against dhruva.

The files under ``tests/durus_suite/`` are Durus 4.3's ``test/utest_*.py``
(see its README.md for the licence and every change made to them).  Durus
runs them with ``sancho.utest``: a ``UTest`` subclass runs each of its public
methods between ``_pre()`` and ``_post()``.  This module collects the same
methods (inherited ones too, as sancho does) as pytest cases.

Nothing is skipped silently.  Every case that is not run as it stands is
listed in ``NOT_RUN`` (a skip, for a test of Durus internals that dhruva
does not have) or in ``DIFFERENT`` (an expected failure, ``strict``, for a
deliberate difference listed in docs/guide/durus.md: a case that starts
passing fails here, so the list is corrected).  The modules not vendored at
all are collected too, as skips that say why.
"""

from __future__ import annotations

import gc
import importlib
import inspect
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from dhruva.client_storage import ClientStorage
from dhruva.persistent_set import PersistentSet

SUITE = Path(__file__).parent / "durus_suite"
WAIT_S = 30.0

INTERNALS = "tests Durus internals, not public API (docs/guide/durus.md)"

# Durus's test modules left out entirely, and why.
NOT_VENDORED = {
    "utest_file": "durus.file.File, Durus's file wrapper: " + INTERNALS,
    "utest_shelf": "durus.shelf, Durus's file format: " + INTERNALS,
    "utest_utils": "durus.utils byte arrays and int codecs: " + INTERNALS,
    "utest_serialize": "ObjectWriter/ObjectReader internals and pack_record: " + INTERNALS,
    "utest_storage": "builds records with durus.serialize.pack_record: " + INTERNALS,
    "utest_client_storage": (
        "starts 'durus -s --logginglevel=1' (a flag dhruva refuses, docs/guide/durus.md) and"
        " drives Durus's wire protocol with pack_record and a fake socket: " + INTERNALS
    ),
    "utest_storage_server": (
        "check_storage_server binds the fixed port 2972 and a Unix socket in the working"
        " directory (dhruva's tests use free ports: StorageServer(host=, port=) is"
        " tests/test_durus_program.py's); check_receive reads a fake socket with"
        " durus.utils.read: " + INTERNALS
    ),
}

_DEBUG_BUILD_ONLY = (
    "counts references with sys.gettotalrefcount, which only a debug build of Python has;"
    " elsewhere it returns at once and would pass without testing anything"
)

# (module, class, method) -> why it is not run.
NOT_RUN: dict[tuple[str, str, str], str] = {
    ("utest_connection", "TestObjectDictionary", "a"): "ObjectDictionary: " + INTERNALS,
    ("utest_connection", "TestObjectDictionary", "b"): "ObjectDictionary: " + INTERNALS,
    ("utest_connection", "TestObjectDictionary", "call_callback"): (
        "ObjectDictionary: " + INTERNALS
    ),
    ("utest_connection", "TestConnectionClientStorage", "check_persistentbase_refs"): (
        _DEBUG_BUILD_ONLY
    ),
    ("utest_connection", "TestConnectionClientStorage", "check_connectionbase_refs"): (
        _DEBUG_BUILD_ONLY
    ),
    (
        "utest_connection",
        "TestConnectionClientStorage",
        "conflict_from_invalid_removable_previously_accessed",
    ): "reaches into connection.cache.recent_objects: " + INTERNALS,
    (
        "utest_connection",
        "TestConnectionClientStorage",
        "no_conflict_from_invalid_removable_not_previously_accessed",
    ): "reaches into connection.cache.recent_objects: " + INTERNALS,
    ("utest_persistent", "TestPersistent", "lowlevelops"): (
        "durus.persistent._getattribute and friends: " + INTERNALS
    ),
    ("utest_file_storage", "FileStorageTest", "check_file_storage"): (
        "stores records built with pack_record: " + INTERNALS
    ),
    ("utest_file_storage", "FileStorageTest", "check_bad_record_size"): (
        "writes Durus's record framing with durus.utils.write_int4_str: " + INTERNALS
    ),
    ("utest_file_storage", "FileStorageTest", "check_repair"): (
        "expects durus.utils.ShortRead from Durus's file format: " + INTERNALS
    ),
    ("utest_file_storage", "ShelfStorageTest", "a"): "durus.file.File: " + INTERNALS,
    ("utest_file_storage", "ShelfStorageTest", "b"): "durus.file.File: " + INTERNALS,
    ("utest_file_storage", "ShelfStorageTest", "c"): "durus.file.File: " + INTERNALS,
}

_SET_ORDER = (
    "a PersistentSet compares with a set (==, <, <=, >, >=) as set and frozenset do;"
    " Durus raises TypeError or answers False (docs/guide/durus.md)"
)

# (module, class, method, variant) -> the difference (docs/guide/durus.md) it runs into.
DIFFERENT: dict[tuple[str, str, str, str], str] = {
    ("utest_connection", "TestConnection", "check_storage_tools", ""): (
        "get_census keys are dotted class names as str, not bare names as bytes"
    ),
    ("utest_connection", "TestConnection", "check_touch_every_reference", ""): (
        "Connection.get_cache() is not offered (get_cache_count() is)"
    ),
    ("utest_connection", "TestConnectionClientStorage", "check_storage_tools", ""): (
        "get_census keys are dotted class names as str, not bare names as bytes"
    ),
    ("utest_connection", "TestConnectionClientStorage", "check_touch_every_reference", ""): (
        "Connection.get_cache() is not offered (get_cache_count() is)"
    ),
    ("utest_persistent", "TestPersistent", "check_accessors", ""): (
        "an oid is 8 bytes; Durus's test sets a str oid"
    ),
    ("utest_persistent", "TestPersistentObject", "check_setstate", ""): (
        "PersistentObject.__setstate__ of an undeclared attribute does not raise"
    ),
    ("utest_persistent_list", "PersistentListTest", "arith", ""): (
        "(0,) + persistent_list is a tuple, and persistent_list + tuple raises TypeError,"
        " as for a list"
    ),
    ("utest_file_storage", "FileStorageTest", "check_reopen", ""): (
        "a file another storage holds open cannot be opened again, even read-only"
        " (StorageLockedError)"
    ),
    ("utest_file_storage", "FileStorageTest", "check_short_magic", ""): (
        "a file that is not a database raises FormatError, not AssertionError"
    ),
    ("utest_file_storage", "FileStorageTest", "check_wrong_magic", ""): (
        "a file that is not a database raises FormatError, not AssertionError"
    ),
    **{
        ("utest_persistent_set", "SetTest", method, "pset-set"): _SET_ORDER
        for method in (
            "test__eq__",
            "test__ne__",
            "test__ge__",
            "test__gt__",
            "test__le__",
            "test__lt__",
        )
    },
}

# Durus's SetTest runs with these (set type, other type) pairs (its __main__ block).
SET_VARIANTS = {
    "set-set": (set, set),
    "pset-set": (PersistentSet, set),
    "pset-pset": (PersistentSet, PersistentSet),
}


def _import(name: str) -> ModuleType:
    if str(SUITE) not in sys.path:
        sys.path.insert(0, str(SUITE))
    return importlib.import_module(name)


def _cases() -> Iterator[Any]:
    UTest = _import("sancho.utest").UTest  # the stand-in in tests/durus_suite/sancho

    for name, reason in NOT_VENDORED.items():
        yield pytest.param(name, "", "", "", marks=pytest.mark.skip(reason=reason), id=name)
    for path in sorted(SUITE.glob("utest_*.py")):
        module = _import(path.stem)
        for cls in vars(module).values():
            if not (inspect.isclass(cls) and issubclass(cls, UTest) and cls is not UTest):
                continue
            if cls.__module__ != module.__name__:
                continue
            # sancho runs every public method, inherited ones too: Durus's
            # TestConnectionClientStorage runs TestConnection's on a ClientStorage.
            for method in dir(cls):
                if method.startswith("_") or not callable(getattr(cls, method)):
                    continue
                variants = list(SET_VARIANTS) if cls.__name__ == "SetTest" else [""]
                for variant in variants:
                    key = (module.__name__, cls.__name__, method)
                    marks: list[Any] = []
                    if key in NOT_RUN:
                        marks.append(pytest.mark.skip(reason=NOT_RUN[key]))
                    elif (*key, variant) in DIFFERENT:
                        marks.append(
                            pytest.mark.xfail(reason=DIFFERENT[(*key, variant)], strict=True)
                        )
                    case_id = "::".join(part for part in (*key, variant) if part)
                    yield pytest.param(*key, variant, marks=marks, id=case_id)


# --- what Durus's server tests need from Durus's command ---------------------------


class _Main:
    """Stands in for ``durus.__main__`` in the server tests: its path and ``stop_durus``."""

    __file__ = str(Path(importlib.import_module("dhruva.__main__").__file__ or ""))

    @staticmethod
    def stop_durus(address: tuple[str, int]) -> None:
        # Durus's stop_durus(address); dhruva's is 'dhruva -s --stop' or this.
        ClientStorage(address).stop_server()


def _wait_for_server(address: tuple[str, int], sleeptime: float = 1, maxtries: int = 0) -> None:
    """Durus's ``storage_server.wait_for_server``: return once ``address`` accepts."""
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            socket.create_connection(address, timeout=1).close()
            return
        except OSError:
            assert time.monotonic() < deadline, f"no server at {address}"
            time.sleep(0.05)


@pytest.fixture
def durus_servers(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Give the server tests a free port and dhruva's server; kill what they start, by pid."""
    module = _import("utest_connection")
    started: list[subprocess.Popen[bytes]] = []

    class RecordingPopen(subprocess.Popen[bytes]):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            started.append(self)

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setattr(module.TestConnectionClientStorage, "address", ("127.0.0.1", port))
    monkeypatch.setattr(module, "Popen", RecordingPopen)
    monkeypatch.setattr(module, "wait_for_server", _wait_for_server, raising=False)
    monkeypatch.setattr(module, "__main__", _Main)
    yield
    for process in started:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
        process.wait()


@pytest.fixture
def dhruva_logger_restored() -> Iterator[None]:
    """Undo what Durus's tests do to logging (``direct_output(sys.stdout)`` in a ``_pre``)."""
    import dhruva.logger

    logger = dhruva.logger.logger
    saved = (logger.handlers[:], logger.propagate, logger.level, dhruva.logger._direct_handler)
    yield
    logger.handlers[:], logger.propagate, level, dhruva.logger._direct_handler = saved
    logger.setLevel(level)


@pytest.mark.usefixtures("dhruva_logger_restored")
@pytest.mark.parametrize("module_name,class_name,method,variant", list(_cases()))
def test_durus_unit_test(
    module_name: str, class_name: str, method: str, variant: str, request: pytest.FixtureRequest
) -> None:
    module = _import(module_name)
    cls = getattr(module, class_name)
    if class_name == "TestConnectionClientStorage":
        request.getfixturevalue("durus_servers")
    if variant:
        module.set_type, module.other_type = SET_VARIANTS[variant]
    # Durus's tests leave files and connections for the garbage collector to
    # close (open(devnull), ClientStorages never closed): collect them here,
    # where their ResourceWarnings are known to be the vendored tests' habit.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        case = cls.__new__(cls)  # sancho would run every method from __init__
        case._pre()
        try:
            getattr(case, method)()
        finally:
            case._post()
            del case
            gc.collect()
