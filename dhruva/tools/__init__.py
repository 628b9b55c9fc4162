"""The command line and the operators' tools, above every other layer.

``cli`` is the ``dhruva`` command; it registers the subcommands of ``admin``
(pack, history, restore, backup), ``dbtools`` (verify, dump, stats, convert,
import-durus) and ``mcp_server`` (the MCP server).  ``common`` holds what they
share (the one-line CommandError, the server address and client options);
``config`` reads the TOML file, DHRUVA_* variables and flags; ``dbinspect``
walks a database file without opening it as a storage; ``object_browser``
shows objects without unpickling them; ``durus_import`` converts Durus files.
Nothing below this package imports it (``tests/test_layers.py``).
"""
