"""The bank's one persistent class (conformance/test_bank.py), importable by its children."""

from __future__ import annotations

from dhruva.persistent import Persistent


class Account(Persistent):
    """One account of the bank."""

    def __init__(self, balance: int) -> None:
        self.balance = balance
