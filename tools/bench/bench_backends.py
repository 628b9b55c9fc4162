"""One adapter per database system, so each figure is written once.

A ``Backend`` knows how to open a database file as a ``Session`` (a root
mapping plus commit/abort/pack/close), how to make the benchmark's Items and
Buckets, which files make up one database, and whether a commit is durable.

The adapters do what an ordinary user of each system does, nothing tuned:

* dhruva and Durus: ``Connection(FileStorage(path))`` and ``get_root()``.
* ZODB: ``DB(FileStorage(path))``, one connection with its own transaction
  manager, ``conn.root()``; the database keeps its ``.index`` beside the file
  as ZODB always does.

Importing this module never fails for a missing system: ``available()`` names
what is missing instead, and the figures skip that system with the reason.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import logging
import os
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import bench_models


@dataclass
class Session:
    """One open database: its root mapping and the calls a benchmark makes."""

    root: MutableMapping[str, Any]
    commit: Callable[[], None]
    abort: Callable[[], None]
    pack: Callable[[], None]
    close: Callable[[], None]
    cache_count: Callable[[], int]
    extra: dict[str, Any] = field(default_factory=dict)


class Backend:
    """The interface every adapter implements; see the module docstring."""

    #: Short name used in tables, results.json and ``--systems``.
    name = ""
    #: What the figures call it, with the storage class.
    label = ""
    #: True when ``commit()`` returns only after an fsync/fdatasync.
    durable = True
    #: Prefix of the classes in bench_models (``Dhruva``, ``Durus``, ``Zodb``).
    class_prefix = ""

    def available(self) -> str | None:
        """Return None when usable, else why not (shown in the tables)."""
        try:
            self._import()
        except Exception as error:  # any import failure means "not here"
            return f"{type(error).__name__}: {error}"
        if getattr(bench_models, self.class_prefix + "Item", None) is None:
            return f"bench_models has no {self.class_prefix}Item"
        return None

    def _import(self) -> None:
        raise NotImplementedError

    def version(self) -> str:
        raise NotImplementedError

    def cache_key(self) -> str:
        """Name prefix for cached databases; changes whenever the format may."""
        return f"{self.name}-{self.version()}"

    def stale_cache_prefix(self) -> str | None:
        """Prefix of cached folders this backend's current key replaces, if any."""
        return None

    def open(self, path: Path) -> Session:
        raise NotImplementedError

    def db_files(self, path: Path) -> list[Path]:
        """The files that together hold the database at ``path``."""
        return [path]

    def pack_leftovers(self, path: Path) -> list[Path]:
        """Files a pack leaves beside ``path`` that the database no longer needs."""
        return []

    def is_ghost(self, obj: Any) -> bool:
        raise NotImplementedError

    def new_item(self, number: int) -> Any:
        cls = getattr(bench_models, self.class_prefix + "Item")
        return cls(number, f"item{number}", number * 0.5)

    def new_bucket(self, items: list[Any]) -> Any:
        return getattr(bench_models, self.class_prefix + "Bucket")(items)


def _dist_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "?"


def _connect(connection_type: Any, storage: Any) -> Session:
    """A Session over ``connection_type(storage)``; closes the storage if that fails.

    Closing matters: a FileStorage left open holds its lock, and every later
    open of the same file in this process would fail for that reason instead.
    """
    try:
        return _connection_session(connection_type(storage), storage)
    except BaseException:
        storage.close()
        raise


def _connection_session(connection: Any, storage: Any) -> Session:
    """A Session over a Durus-style Connection (dhruva and Durus share it)."""

    def pack() -> None:
        # Durus packs through the Connection (it also drops invalidated
        # objects); fall back to the storage if a Connection has no pack().
        packer = getattr(connection, "pack", None) or storage.pack
        packer()

    def close() -> None:
        with contextlib.suppress(Exception):
            connection.abort()
        storage.close()

    return Session(
        root=connection.get_root(),
        commit=connection.commit,
        abort=connection.abort,
        pack=pack,
        close=close,
        cache_count=connection.get_cache_count,
        extra={"connection": connection, "storage": storage},
    )


class DhruvaBackend(Backend):
    name = "dhruva"
    label = "dhruva FileStorage"
    class_prefix = "Dhruva"
    storage_class = "FileStorage"

    def _import(self) -> None:
        importlib.import_module("dhruva.connection")
        module = importlib.import_module("dhruva.file_storage")
        getattr(module, self.storage_class)
        importlib.import_module("dhruva.persistent")

    def version(self) -> str:
        import dhruva

        return str(getattr(dhruva, "__version__", "?"))

    def cache_key(self) -> str:
        # dhruva's format changes while it is being written, so a cached
        # database is keyed on the source of the whole package, not the version.
        # The key is computed once per process: the source may change while a
        # run is going, and the unpacked and packed copies must share a folder.
        if self._cache_key is None:
            self._cache_key = self._source_key()
        return self._cache_key

    _cache_key: str | None = None

    def stale_cache_prefix(self) -> str | None:
        return f"{self.name}-{self.storage_class}-"

    def _source_key(self) -> str:
        import dhruva

        digest = hashlib.sha256()
        package_dir = Path(dhruva.__file__).parent
        for source in sorted(package_dir.rglob("*.py")):
            digest.update(source.name.encode())
            digest.update(source.read_bytes())
        return f"{self.name}-{self.storage_class}-{digest.hexdigest()[:12]}"

    def open(self, path: Path) -> Session:
        from dhruva.connection import Connection
        from dhruva.file_storage import FileStorage, FileStorage2

        storage_type = FileStorage if self.storage_class == "FileStorage" else FileStorage2
        storage = storage_type(str(path))
        return _connect(Connection, storage)

    def db_files(self, path: Path) -> list[Path]:
        # FileStorage keeps its on-disk index beside the data file.
        return [path, path.with_name(path.name + ".index")]

    def is_ghost(self, obj: Any) -> bool:
        probe = getattr(obj, "_p_is_ghost", None)
        if probe is not None:
            return bool(probe())
        return getattr(obj, "_p_status", None) == -1


class DhruvaFileStorage2Backend(DhruvaBackend):
    name = "dhruva-fs2"
    label = "dhruva FileStorage2"
    storage_class = "FileStorage2"


class DurusBackend(Backend):
    name = "durus"
    label = "Durus 4.3 FileStorage"
    class_prefix = "Durus"
    #: Durus's default FileStorage (the Shelf format) writes and flushes but
    #: never fsyncs a commit; its FileStorage2 does fsync.
    durable = False
    storage_module = "durus.file_storage"
    storage_class = "FileStorage"

    def _import(self) -> None:
        importlib.import_module("durus.connection")
        importlib.import_module(self.storage_module)
        # Durus logs every commit at INFO to stderr; that would flood the
        # tables and time the logging too.
        logging.getLogger("durus").setLevel(logging.WARNING)

    def version(self) -> str:
        return _dist_version("durus")

    def open(self, path: Path) -> Session:
        from durus.connection import Connection

        logging.getLogger("durus").setLevel(logging.WARNING)
        module = importlib.import_module(self.storage_module)
        storage = getattr(module, self.storage_class)(str(path))
        return _connect(Connection, storage)

    def is_ghost(self, obj: Any) -> bool:
        return bool(obj._p_is_ghost())

    def pack_leftovers(self, path: Path) -> list[Path]:
        return [path.with_name(path.name + ".prepack")]


class DurusFileStorage2Backend(DurusBackend):
    name = "durus-fs2"
    label = "Durus 4.3 FileStorage2"
    durable = True
    storage_module = "durus.file_storage2"
    storage_class = "FileStorage2"


class ZodbBackend(Backend):
    name = "zodb"
    label = "ZODB FileStorage"
    class_prefix = "Zodb"

    def _import(self) -> None:
        importlib.import_module("ZODB")
        importlib.import_module("ZODB.FileStorage")
        importlib.import_module("transaction")

    def version(self) -> str:
        return _dist_version("ZODB")

    def open(self, path: Path) -> Session:
        import transaction
        import ZODB
        from ZODB.FileStorage import FileStorage

        storage = FileStorage(str(path))
        db = ZODB.DB(storage)
        manager = transaction.TransactionManager()
        connection = db.open(transaction_manager=manager)

        def pack() -> None:
            db.pack()

        def close() -> None:
            manager.abort()
            connection.close()
            db.close()

        def cache_count() -> int:
            return int(connection._cache.cache_non_ghost_count)

        return Session(
            root=connection.root(),
            commit=manager.commit,
            abort=manager.abort,
            pack=pack,
            close=close,
            cache_count=cache_count,
            extra={"connection": connection, "db": db, "storage": storage},
        )

    def db_files(self, path: Path) -> list[Path]:
        return [path, path.with_name(path.name + ".index")]

    def pack_leftovers(self, path: Path) -> list[Path]:
        return [path.with_name(path.name + ".old")]

    def is_ghost(self, obj: Any) -> bool:
        # persistent's protocol: _p_changed is None exactly for a ghost.
        return obj._p_changed is None


#: Every adapter, in table order; dhruva first.
ALL_BACKENDS: list[Backend] = [
    DhruvaBackend(),
    DhruvaFileStorage2Backend(),
    DurusBackend(),
    DurusFileStorage2Backend(),
    ZodbBackend(),
]

#: The three systems every figure compares; the FileStorage2 variants join
#: only the durable-commit figure, where their fsync makes them relevant.
MAIN_SYSTEMS = ("dhruva", "durus", "zodb")


def committed_bytes(path: Path | str, start: int = 0) -> int:
    """The size of the database file at ``path``, less a dhruva file's free space (RCV-060).

    A dhruva data file may end with zeros allocated for the commits to come
    (spec/file-format.md, RCV-060); they are not the size of what was committed.
    ``start``, when given, is an end this function returned before for the
    same file: only the transactions after it are read.
    """
    from dhruva import journal  # imported where used, as for each backend above

    with open(path, "rb") as file:
        if file.read(len(journal.MAGIC)) != journal.MAGIC:
            return os.fstat(file.fileno()).st_size
        start = max(start, journal.FILE_HEADER_SIZE)
        file.seek(start)
        data = file.read()
    return journal.scan(data, start, str(path), base=start).end


def remove_database(backend: Backend, path: Path) -> None:
    """Delete every file of the database at ``path``, including side files."""
    for candidate in path.parent.glob(path.name + "*"):
        if candidate.is_file():
            os.unlink(candidate)
