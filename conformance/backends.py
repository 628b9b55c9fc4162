"""Back-end factories for the conformance suite, and the registry that finds them.

Spec: ``spec/conformance.md`` ("Back-ends and factories", "Registering a
back-end").

Theory of operation.  The suite never constructs a storage itself.  It asks a
*factory* for one.  A factory owns one database, kept in a directory the suite
gives it, and can open that database any number of times, one storage at a
time:

* ``open()`` creates the database and returns a storage on it;
* ``open(reopen=True)`` opens the same database again after the previous
  storage was closed or crashed (crash tests need this: capability ``reopen``);
* ``crash(storage)`` abandons a storage as if its process had died: operating
  system resources are released, but no orderly-shutdown work (an index
  checkpoint, a final flush) happens;
* ``paths()`` lists the files of the database, the data file first (capability
  ``raw-file``: the data file follows ``spec/file-format.md``);
* ``cleanup()`` closes whatever is still open.

A back-end is registered under a name with :func:`register_backend` (in-repo
back-ends, such as the server's) or through the ``dhruva.conformance_backends``
entry-point group (third parties).  A registered object is called with the
directory and returns a factory, so a class whose ``__init__`` takes the
directory is the usual thing to register.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from dhruva_conformance.faults import SimulatedCrash

from dhruva.storage import (
    CAP_DURABLE,
    CAP_RAW_FILE,
    CAP_READONLY_OPEN,
    CAP_SNAPSHOTS,
    MemoryStorage,
    Storage,
)

# Capabilities of a factory, on top of the storage's own (spec: CONF-020).
CAP_REOPEN = "reopen"
"""``open(reopen=True)`` opens the same database again; crash tests need it."""
CAP_FILE_LAYER = "file-layer"
"""``open(file_layer=...)`` routes all file access through the given layer."""
CAP_SUBPROCESS = "subprocess"
"""A child process can open the database: ``create_backend(name, directory)``."""
CAP_REPAIR = "repair"
"""``open(reopen=True, repair=True)`` cuts a damaged file at the damage."""
CAP_READONLY = CAP_READONLY_OPEN
"""``open(reopen=True, readonly=True)`` opens without writing anything."""

ENTRY_POINT_GROUP = "dhruva.conformance_backends"


@runtime_checkable
class StorageFactory(Protocol):
    """What the suite needs of a back-end (spec CONF-010)."""

    name: str
    capabilities: frozenset[str]

    def open(self, reopen: bool = False, **options: Any) -> Storage:
        """Return a storage on the factory's database (see the module docstring)."""
        ...

    def crash(self, storage: Storage) -> None:
        """Abandon ``storage`` as if its process had been killed."""
        ...

    def paths(self) -> list[str]:
        """Return the database's files, the data file first."""
        ...

    def cleanup(self) -> None:
        """Close anything still open; the directory itself is removed by pytest."""
        ...

    def replace_data_file(self, data: bytes) -> None:
        """Make the database a data file holding ``data`` alone (``raw-file`` only)."""
        ...


class BaseFactory:
    """Shared machinery: tracks opened storages and simulates crashes.

    Subclasses set ``name`` and ``capabilities`` and implement ``_open``.
    """

    name = "base"
    capabilities: frozenset[str] = frozenset()

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._opened: list[Storage] = []
        self._created = False

    def _open(self, reopen: bool, **options: Any) -> Storage:
        raise NotImplementedError

    def open(self, reopen: bool = False, **options: Any) -> Storage:
        """Create (``reopen=False``, first call only) or reopen the database."""
        if reopen and not self._created and CAP_REOPEN not in self.capabilities:
            raise NotImplementedError(f"back-end {self.name!r} cannot reopen a database")
        storage = self._open(reopen, **options)
        self._created = True
        self._opened.append(storage)
        return storage

    def crash(self, storage: Storage) -> None:
        """Simulate a process crash of ``storage``.

        The generic way: remember every byte of every file in the directory,
        close the storage (which may checkpoint or flush), then put the bytes
        back and delete files that closing created.  The files end up exactly
        as the dead process left them: a process crash loses nothing the
        process had written, only what it had not yet written.
        """
        snapshot = {path: path.read_bytes() for path in self._files()}
        try:
            storage.close()
        finally:
            for path in self._files():
                if path not in snapshot:
                    path.unlink()
            for path, data in snapshot.items():
                path.write_bytes(data)

    def _files(self) -> list[Path]:
        return sorted(p for p in self.directory.iterdir() if p.is_file())

    def paths(self) -> list[str]:
        return []

    def cleanup(self) -> None:
        for storage in self._opened:
            try:
                storage.close()
            except (Exception, SimulatedCrash):
                # Cleanup must not mask the test's own failure; a storage
                # left in a deliberately broken state may refuse to close, and
                # one on a crashed fault layer (a dead process) cannot.
                pass
        self._opened.clear()

    def replace_data_file(self, data: bytes) -> None:
        """Make the database consist of a data file holding ``data`` alone.

        Derived files (an index) are removed, so that the next open sees only
        the data file.  Needs capability ``raw-file``.
        """
        if CAP_RAW_FILE not in self.capabilities:
            raise NotImplementedError(f"back-end {self.name!r} has no raw data file")
        data_path = Path(self.paths()[0])
        for path in self._files():
            path.unlink()
        data_path.write_bytes(data)


class MemoryFactory(BaseFactory):
    """MemoryStorage: everything in a dict, so it cannot reopen."""

    name = "memory"
    capabilities = MemoryStorage.capabilities

    def _open(self, reopen: bool, **options: Any) -> Storage:
        if reopen:
            raise NotImplementedError("MemoryStorage keeps nothing across close")
        if options:
            raise TypeError(f"MemoryStorage takes no options, not {sorted(options)}")
        return MemoryStorage()


class _FileFactoryBase(BaseFactory):
    """Shared by FileStorage and FileStorage2: one data file named ``data.dhruva``."""

    _module = ""
    _class = ""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        super().__init__(directory)
        self.data_path = str(self.directory / "data.dhruva")

    def _storage_class(self) -> Callable[..., Storage]:
        module = __import__(self._module, fromlist=[self._class])
        cls: Callable[..., Storage] = getattr(module, self._class)
        return cls

    def _open(self, reopen: bool, **options: Any) -> Storage:
        if not reopen:
            for path in self._files():
                path.unlink()
        return self._storage_class()(self.data_path, **options)

    def paths(self) -> list[str]:
        return [self.data_path, *(str(p) for p in self._files() if str(p) != self.data_path)]


_FILE_CAPS = frozenset(
    {
        CAP_REOPEN,
        CAP_RAW_FILE,
        CAP_DURABLE,
        CAP_FILE_LAYER,
        CAP_SUBPROCESS,
        CAP_REPAIR,
        CAP_READONLY,
        CAP_SNAPSHOTS,
    }
)


class FileFactory(_FileFactoryBase):
    """dhruva.file_storage.FileStorage (data file plus on-disk index)."""

    name = "file"
    _module = "dhruva.file_storage"
    _class = "FileStorage"
    capabilities = _FILE_CAPS | {"pack", "blobs"}


class File2Factory(_FileFactoryBase):
    """dhruva.file_storage2.FileStorage2 (data file, index in memory)."""

    name = "file2"
    _module = "dhruva.file_storage2"
    _class = "FileStorage2"
    capabilities = _FILE_CAPS | {"pack", "blobs"}


# --- registry --------------------------------------------------------------------

FactoryMaker = Callable[[Path], StorageFactory]

_REGISTRY: dict[str, FactoryMaker] = {}


def register_backend(name: str, maker: FactoryMaker) -> None:
    """Make ``--dhruva-backend NAME`` use ``maker(directory)`` (spec CONF-030).

    Registering a name twice replaces the earlier maker, so a test session
    can substitute its own.
    """
    if not name or not isinstance(name, str):
        raise ValueError(f"a back-end name is a non-empty string, not {name!r}")
    _REGISTRY[name] = maker


def _load_entry_points() -> None:
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if entry.name not in _REGISTRY:
            _REGISTRY[entry.name] = entry.load()


def backend_names() -> list[str]:
    """Return the names of every registered back-end, sorted."""
    _load_entry_points()
    return sorted(_REGISTRY)


def create_backend(name: str, directory: str | os.PathLike[str]) -> StorageFactory:
    """Return the factory registered as ``name`` for a database in ``directory``.

    Raises LookupError naming the registered back-ends when ``name`` is unknown.
    """
    if name not in _REGISTRY:
        _load_entry_points()
    try:
        maker = _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY)) or "none"
        raise LookupError(
            f"no dhruva conformance back-end named {name!r} (registered: {known}); "
            f"register one with dhruva_conformance.register_backend() or the "
            f"{ENTRY_POINT_GROUP!r} entry-point group"
        ) from None
    return maker(Path(directory))


register_backend("memory", MemoryFactory)
register_backend("file", FileFactory)
register_backend("file2", File2Factory)

# In-repo back-ends defined in their own modules register themselves on import;
# imported last, when everything above exists (a child process needs only this module).
from dhruva_conformance import postgres_backend, sqlite_backend  # noqa: E402, F401
