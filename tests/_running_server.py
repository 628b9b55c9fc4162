"""A StorageServer running in a thread of the test process (shared by the server tests)."""

from __future__ import annotations

import threading
from typing import Any

from dhruva.server.storage_server import StorageServer
from dhruva.storage import Storage


class Running:
    """A StorageServer serving ``storage`` at ``address`` in a daemon thread."""

    def __init__(self, storage: Storage, address: Any, **options: Any) -> None:
        self.storage = storage
        self.server = StorageServer(storage, address, **options)
        self.thread = threading.Thread(target=self.server.serve, daemon=True)

    def start(self) -> Running:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.stop()
        if self.thread.is_alive():
            self.thread.join()
        else:
            self.server.close()

    @property
    def address(self) -> Any:
        return self.server.address
