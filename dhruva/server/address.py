"""Where a storage server listens: a TCP ``(host, port)`` pair or a Unix socket path.

Both ends of the wire name the server this way, so this module sits below
the server loop and the client alike and imports nothing of either
(spec: ``spec/server.md``, "Starting and stopping").
"""

from __future__ import annotations

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 2972
DEFAULT_ADDRESS: tuple[str, int] = (DEFAULT_HOST, DEFAULT_PORT)

Address = tuple[str, int] | str
"""A TCP ``(host, port)`` pair or the path of a Unix socket."""


def format_address(address: Address) -> str:
    """Return ``address`` as people write it: ``host:port`` or the socket path."""
    if isinstance(address, str):
        return address
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
