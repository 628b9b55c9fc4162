"""The allow-list that decides which classes a record may name (spec: object-encoding.md).

Theory of operation.  A record names classes by import path: the class of the
object, the classes of the persistent objects it references, and -- for
pickle -- whatever globals its reducers used.  Resolving such a name means
importing a module and fetching an attribute, and for pickle it also means
calling what was fetched.  A database file from an untrusted source can
therefore run any code at all unless every name is checked first.

A :class:`ClassRegistry` is that check.  It holds entries of three kinds:

* a class object: exactly that class is allowed;
* a module (a module object, or a dotted string that names a module): every
  *class* defined in that module is allowed, but not its functions, nor the
  classes it merely imports;
* a qualified name ``"module.QualName"`` (or ``"module:QualName"``): exactly
  that attribute is allowed, even when it is not a class;
* ``"package.*"``: every class in the package and its submodules.

A string is never interpreted by importing it: ``"a.b.C"`` allows the pair
(module ``a.b``, name ``C``) and also every class of a module called
``a.b.C``; whichever the record asks for is checked by comparing strings.
A module is imported only after its name has passed the check, so an
untrusted record cannot make the registry import anything that is not on the
list (OBJ-021).

Every registry also allows :data:`SAFE_VALUE_GLOBALS` (the value types that
pickle writes by reference: datetime, Decimal, UUID, ...) and the persistent
containers of dhruva itself, so ``ClassRegistry()`` with no entries reads a
database holding only PersistentDicts of plain values.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterable, Mapping
from types import ModuleType
from typing import Any

from dhruva.error import ForbiddenClassError

SAFE_VALUE_GLOBALS: frozenset[str] = frozenset(
    {
        "builtins.complex",
        "builtins.bytearray",
        "builtins.set",
        "builtins.frozenset",
        "builtins.slice",
        "builtins.range",
        "datetime.datetime",
        "datetime.date",
        "datetime.time",
        "datetime.timedelta",
        "datetime.timezone",
        "decimal.Decimal",
        "fractions.Fraction",
        "uuid.UUID",
        "uuid.SafeUUID",
        "collections.OrderedDict",
        "collections.deque",
        "zoneinfo.ZoneInfo",
        "zoneinfo.ZoneInfo._unpickle",
    }
)
"""Globals every registry allows: value types whose constructors run no user code."""

DHRUVA_MODULES: frozenset[str] = frozenset(
    {
        "dhruva.persistent",
        "dhruva.persistent_dict",
        "dhruva.persistent_list",
        "dhruva.persistent_set",
        "dhruva.btree",
    }
)
"""Modules whose classes every registry allows: dhruva's own persistent containers."""

AllowEntry = type | ModuleType | str
"""One entry of an allow-list: a class, a module, or a dotted name (see the module doc)."""


def class_path(cls: type) -> tuple[str, str]:
    """Return ``(module, qualname)`` of ``cls``: the import path records use."""
    return cls.__module__, cls.__qualname__


def _lookup(module_name: str, qualname: str) -> Any:
    module = importlib.import_module(module_name)
    value: Any = module
    for part in qualname.split("."):
        value = getattr(value, part)
    return value


def split_path(path: str) -> tuple[str, str]:
    """Split ``"module:Qual.Name"`` or ``"module.Name"`` into ``(module, qualname)``."""
    module, sep, qualname = path.partition(":")
    if not sep:
        module, _, qualname = path.rpartition(".")
    if not module or not qualname:
        raise ValueError(f"{path!r} is not an import path like 'package.module.Class'")
    return module, qualname


class ClassMap:
    """Renamed or moved classes: old import paths mapped to classes or new paths.

    Keys are the paths records give (``"old.module.Class"``, or
    ``"module:Outer.Inner"`` for nested classes); values are classes or new
    paths.  Readers consult the map before resolving a name (spec OBJ-050),
    so the allow-list, if any, checks the new name.
    """

    def __init__(self, mapping: Mapping[str, type | str]) -> None:
        self._map: dict[tuple[str, str], type | tuple[str, str]] = {}
        if not isinstance(mapping, Mapping):
            raise TypeError(
                "class_map must be a dict of old import paths to classes or new paths, "
                f"not {type(mapping).__name__}"
            )
        for old, new in mapping.items():
            if not isinstance(old, str) or not isinstance(new, type | str):
                raise TypeError(
                    "class_map maps an old import path (str) to a class or a new path (str), "
                    f"not {type(old).__name__} to {type(new).__name__}: {old!r}: {new!r}"
                )
            self._map[split_path(old)] = new if isinstance(new, type) else split_path(new)

    def translate(self, module: str, qualname: str) -> type | tuple[str, str]:
        """Return the mapped class, the mapped ``(module, qualname)``, or the input."""
        return self._map.get((module, qualname), (module, qualname))

    def __bool__(self) -> bool:
        return bool(self._map)


class ClassRegistry:
    """An allow-list of classes and modules for restricted loading (OBJ-020, OBJ-021).

    ``allowed`` is an iterable of classes, modules and dotted names (see the
    module docstring).  :meth:`resolve` returns the named object or raises
    :class:`~dhruva.error.ForbiddenClassError`; :meth:`is_allowed` only
    checks.  A registry is immutable after construction and may be shared by
    any number of connections.
    """

    def __init__(self, allowed: Iterable[AllowEntry] = ()) -> None:
        names: set[str] = set(SAFE_VALUE_GLOBALS)
        modules: set[str] = set(DHRUVA_MODULES)
        prefixes: list[str] = []
        classes: dict[tuple[str, str], type] = {}
        if isinstance(allowed, (str, type, ModuleType)):
            allowed = [allowed]
        elif not isinstance(allowed, Iterable):
            raise TypeError(
                "allowed_classes must be a list of classes, modules and dotted names, "
                f"not {type(allowed).__name__}"
            )
        for entry in allowed:
            if isinstance(entry, type):
                classes[class_path(entry)] = entry
            elif isinstance(entry, ModuleType):
                modules.add(entry.__name__)
            elif isinstance(entry, str):
                text = entry.replace(":", ".")
                if text.endswith(".*"):
                    prefixes.append(text[:-2])
                else:
                    names.add(text)
                    modules.add(text)
            else:
                raise TypeError(
                    "an allow-list entry is a class, a module or a dotted name, "
                    f"not {type(entry).__name__}"
                )
        self._names = frozenset(names)
        self._modules = frozenset(modules)
        self._prefixes = tuple(prefixes)
        self._classes = classes
        self._resolved: dict[tuple[str, str], Any] = {}

    def __repr__(self) -> str:
        extra = sorted(
            (self._names - SAFE_VALUE_GLOBALS)
            | {f"{m}.{q}" for m, q in self._classes}
            | {f"{p}.*" for p in self._prefixes}
        )
        return f"ClassRegistry({extra!r})"

    def _module_allowed(self, module: str) -> bool:
        if module in self._modules:
            return True
        return any(module == p or module.startswith(p + ".") for p in self._prefixes)

    def is_allowed(self, module: str, qualname: str) -> bool:
        """Return whether the name ``module``/``qualname`` passes the allow-list.

        True does not promise that the name resolves, nor -- for a name
        allowed through its module -- that it names a class.
        """
        return (
            (module, qualname) in self._classes
            or f"{module}.{qualname}" in self._names
            or self._module_allowed(module)
        )

    def resolve(self, module: str, qualname: str) -> Any:
        """Return the object ``module``/``qualname`` names, if the allow-list allows it.

        Raises ForbiddenClassError naming the class when the name is not
        allowed, or when it is allowed only through its module and is not a
        class; the module is not imported then (OBJ-021).  Raises
        SerializationError's subclass ForbiddenClassError too when an allowed
        name does not resolve.
        """
        key = (module, qualname)
        found = self._resolved.get(key)
        if found is not None:
            return found
        exact = self._classes.get(key)
        if exact is not None:
            self._resolved[key] = exact
            return exact
        # [OBJ-021] Check the name before importing anything.
        by_name = f"{module}.{qualname}" in self._names
        if not by_name and not self._module_allowed(module):
            raise ForbiddenClassError(f"{module}.{qualname}")
        if "<" in qualname or (qualname.startswith("_") and not by_name):
            # A local class or a private helper is never reached through its module.
            raise ForbiddenClassError(f"{module}.{qualname}")
        try:
            value = _lookup(module, qualname)
        except (ImportError, AttributeError) as exc:
            raise ForbiddenClassError(
                f"{module}.{qualname}", f"it is allowed but cannot be imported ({exc})"
            ) from exc
        if not by_name and not isinstance(value, type):
            raise ForbiddenClassError(
                f"{module}.{qualname}",
                "its module is allowed, but only classes are allowed through a module; "
                "name it exactly to allow it",
            )
        if not by_name and value.__module__ != module:
            # [OBJ-021] A module allows the classes it defines, not the ones it
            # imports: ``from subprocess import Popen`` must not allow Popen.
            raise ForbiddenClassError(
                f"{module}.{qualname}",
                f"it is defined in {value.__module__}, not in the allowed module {module}",
            )
        self._resolved[key] = value
        return value


def resolve_imported(module: str, qualname: str) -> Any:
    """Return ``module``/``qualname`` only if the module is already imported, else None.

    The msgspec reader uses this when no allow-list is given: it never
    imports a module a record names, so a record cannot run module code.
    """
    loaded = sys.modules.get(module)
    if loaded is None:
        return None
    value: Any = loaded
    for part in qualname.split("."):
        value = getattr(value, part, None)
        if value is None:
            return None
    return value


def as_registry(allowed: ClassRegistry | Iterable[AllowEntry] | None) -> ClassRegistry | None:
    """Return ``allowed`` as a ClassRegistry (None stays None: unrestricted)."""
    if allowed is None or isinstance(allowed, ClassRegistry):
        return allowed
    return ClassRegistry(allowed)
