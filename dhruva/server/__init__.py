"""The storage server and what both ends of the wire share.

``address`` (where a server listens) and ``security`` (TLS contexts, the
HMAC challenge-response) are used by the server and by
:class:`dhruva.client_storage.ClientStorage` alike.  The server itself is
``storage_server`` (StorageServer: request events to storage calls),
composed of ``session`` (one client's protocol, a sans-IO state machine),
``loop`` (the selector loop, TLS, reading and writing), ``commit`` (group
commit), ``pack`` (packing while serving) and ``prefetch`` (which records
travel with a LOAD answer).  Nothing here unpickles object
state, and nothing below the network layer imports this package
(``tests/test_layers.py``).
"""
