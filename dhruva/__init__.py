"""dhruva: a persistent object database for Python, the continuation of Durus.

The names most programs need are importable from here; each also lives at its
Durus import path (``dhruva.connection.Connection``, ...)::

    from dhruva import Connection, FileStorage, Persistent, PersistentDict
"""

from dhruva.connection import Connection
from dhruva.error import (
    ConflictError,
    CorruptionError,
    DhruvaError,
    DhruvaKeyError,
    ProtocolError,
    ReadConflictError,
    SerializationConflictError,
    SnapshotTooOldError,
    WriteConflictError,
)
from dhruva.file_storage import FileStorage, FileStorage2, TempFileStorage
from dhruva.persistent import Persistent, PersistentObject
from dhruva.persistent_dict import PersistentDict
from dhruva.persistent_list import PersistentList
from dhruva.persistent_set import PersistentSet
from dhruva.storage import MemoryStorage, Storage

__version__ = "0.1.0"

__all__ = [
    "ConflictError",
    "Connection",
    "CorruptionError",
    "DhruvaError",
    "DhruvaKeyError",
    "FileStorage",
    "FileStorage2",
    "MemoryStorage",
    "Persistent",
    "PersistentDict",
    "PersistentList",
    "PersistentObject",
    "PersistentSet",
    "ProtocolError",
    "ReadConflictError",
    "SerializationConflictError",
    "SnapshotTooOldError",
    "Storage",
    "TempFileStorage",
    "WriteConflictError",
    "__version__",
]
