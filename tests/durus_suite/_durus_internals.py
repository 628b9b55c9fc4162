"""Durus 4.3's Python 2/3 helpers from durus.utils, which the tests use and dhruva does not offer."""
from io import BytesIO  # noqa: F401
import pickle

next = next  # noqa: A001


def as_bytes(s):
    return s if isinstance(s, bytes) else s.encode("latin1")


def join_bytes(parts):
    return b"".join(parts)


def dumps(value, protocol=2):
    return pickle.dumps(value, protocol)


def loads(data):
    return pickle.loads(data)
