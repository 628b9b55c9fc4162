"""dhruva's storage conformance suite, an installable pytest plugin.

Spec: ``spec/conformance.md``; guide: ``docs/guide/conformance.md``.

Run it with ``pytest --pyargs dhruva_conformance --dhruva-backend NAME``.  A
back-end joins by registering a factory (:func:`register_backend` or the
``dhruva.conformance_backends`` entry-point group) or by overriding the
``storage_factory`` fixture.
"""

from dhruva_conformance.backends import (
    ENTRY_POINT_GROUP,
    BaseFactory,
    StorageFactory,
    backend_names,
    create_backend,
    register_backend,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "BaseFactory",
    "StorageFactory",
    "backend_names",
    "create_backend",
    "register_backend",
]
