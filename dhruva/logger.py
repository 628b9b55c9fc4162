"""Durus's ``durus.logger`` on the standard :mod:`logging` module.

Durus programs write ``from durus.logger import log, logger, direct_output``;
after renaming the import they get these names, backed by the ``"dhruva"``
logger of the standard :mod:`logging` module -- there is no second logging
system, and every dhruva module logs to a child of that logger
(``dhruva.file_storage``, ``dhruva.server``, ...), so the handlers set here
see them too.

Differences from Durus (docs/guide/durus.md): importing this module changes
nothing (Durus 4.3 installs a stderr handler on import); :func:`direct_output`
installs one, and never replaces ``sys.stdout`` or ``sys.stderr`` (Durus
redirects both to the file).
"""

from __future__ import annotations

import logging
from typing import IO, Any

logger = logging.getLogger("dhruva")
"""The ``dhruva`` logger; Durus's ``durus.logger.logger``."""

_direct_handler: logging.Handler | None = None


def log(level: int, message: str, *args: Any) -> None:
    """Log ``message % args`` at ``level`` on the dhruva logger (Durus's ``log``)."""
    logger.log(level, message, *args)


def direct_output(file: IO[str]) -> logging.Handler:
    """Send the dhruva logger's records, message only, to ``file`` (CONN-033).

    As in Durus: the handler this function installed before is replaced, the
    logger stops propagating to the root logger, and its level becomes INFO.
    Other handlers (an application's own) are left in place.  Returns the
    handler, so that a caller may remove it again.
    """
    global _direct_handler
    if _direct_handler is not None:
        logger.removeHandler(_direct_handler)
    handler = logging.StreamHandler(file)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    _direct_handler = handler
    return handler


def is_logging(level: int) -> bool:
    """Return whether a record at ``level`` would be logged (Durus's ``is_logging``)."""
    return logger.isEnabledFor(level)


__all__ = ["direct_output", "is_logging", "log", "logger"]
