"""Durus's import path for the storage server: ``dhruva.storage_server``.

The server lives in :mod:`dhruva.server.storage_server`.  This module makes
the old path name that very module object (not a copy), so that
``from dhruva.storage_server import StorageServer`` keeps working for good and
a monkeypatch through either path changes the one module.
"""

import sys

from dhruva.server import storage_server as _storage_server

sys.modules[__name__] = _storage_server
