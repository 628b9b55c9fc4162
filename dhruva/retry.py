"""Retrying transactions after conflicts (spec: connection.md, "Retrying").

With many clients sharing a storage server, conflicts are normal: a commit
that would overwrite another client's change raises WriteConflictError, and
loading an object another client changed during the transaction may raise
ReadConflictError.  The remedy is always the same -- abort, then run the
transaction again on fresh state -- so it lives here once.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from dhruva.error import ConflictError

if TYPE_CHECKING:
    from dhruva.connection import Connection

T = TypeVar("T")


def run_transaction(
    connection: Connection,
    work: Callable[[Connection], T],
    *,
    attempts: int = 10,
    backoff_s: float = 0.005,
    max_backoff_s: float = 0.5,
) -> T:
    """Run ``work(connection)`` and commit, retrying after conflicts.

    Before each attempt the connection is synchronized with ``abort()``, so
    ``work`` sees the latest committed state and starts with no changes.
    ``work`` must do all of its reading and changing through the connection
    and have no other side effects, because it may run more than once.  After
    a ConflictError the connection aborts and waits a random time that grows
    with each attempt (at most ``max_backoff_s``) before the next one.

    Returns what the successful attempt's ``work`` returned.  Raises the last
    ConflictError after ``attempts`` tries; any other exception aborts the
    transaction and propagates at once.
    """
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, not {attempts}")
    delay_s = backoff_s
    for attempt in range(1, attempts + 1):
        connection.abort()
        try:
            result = work(connection)
            connection.commit()
            return result
        except ConflictError:
            connection.abort()
            if attempt == attempts:
                raise
            # Random backoff so that clients contending for one object do not
            # collide again in lockstep.
            time.sleep(random.uniform(0, delay_s))
            delay_s = min(max_backoff_s, delay_s * 2)
        except BaseException:
            connection.abort()
            raise
    raise AssertionError("unreachable")
