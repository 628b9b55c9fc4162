"""dhruva: a persistent object database for Python, the continuation of Durus."""

__version__ = "0.1.0"
