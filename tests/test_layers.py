"""The package's layers run one way, and it has no import circle.

dhruva is built in layers (``spec/README.md``, "Layers"):

    base -> codecs -> storages -> connection -> network -> tools

A module may import modules of its own layer and of the layers before it,
never of a later one: a codec knows nothing of storages, a storage nothing of
the Connection or the objects it loads, the server nothing of the command
line.  Every module of ``dhruva/`` must be placed in a layer here, so a new
module cannot slip past the check.  Imports inside functions and under
``TYPE_CHECKING`` count too (a lazy import is still a dependency); only
module-level imports count for circles, since only those run at import time.
"""

from __future__ import annotations

import ast
import importlib
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "dhruva"

LAYERS: dict[str, list[str]] = {
    "base": ["dhruva.error", "dhruva.utils", "dhruva.logger"],
    # Sans-IO codecs: bytes in, bytes or typed values out.
    "codecs": [
        "dhruva.speedups",
        "dhruva.record",
        "dhruva.record_class",
        "dhruva.journal",
        "dhruva.journal_walk",
        "dhruva.wire",
    ],
    # Storages and the file layer under them; object state is opaque bytes here.
    "storages": [
        "dhruva.snapshots",
        "dhruva.blob_store",
        "dhruva.blob_chunks",
        "dhruva.storage",
        "dhruva.fileio",
        "dhruva.file_index",
        "dhruva.file_pack",
        "dhruva.journal_storage",
        "dhruva.file_storage2",
        "dhruva.file_storage",
        "dhruva.sqlite_storage",
        "dhruva.postgres_storage",
        "dhruva.backup",
        "dhruva.history",
    ],
    # The object model, the serializers (the only code that unpickles) and the
    # Connection; the package's own __init__ re-exports from here and below.
    "connection": [
        "dhruva",
        "dhruva.persistent",
        "dhruva.persistent_dict",
        "dhruva.persistent_list",
        "dhruva.persistent_set",
        "dhruva.btree",
        "dhruva.blob",
        "dhruva.class_registry",
        "dhruva.serialize",
        "dhruva.serialize_dill",
        "dhruva.serialize_msgspec",
        "dhruva.connection",
        "dhruva.retry",
        "dhruva.datamanager",
    ],
    # Both ends of the wire.  ClientStorage is a storage to the Connection, but
    # it speaks the protocol and shares the address and security modules with
    # the server; nothing below this layer imports it.
    "network": [
        "dhruva.client_storage",
        "dhruva.server",
        "dhruva.server.address",
        "dhruva.server.security",
        "dhruva.server.session",
        "dhruva.server.prefetch",
        "dhruva.server.loop",
        "dhruva.server.blobs",
        "dhruva.server.commit",
        "dhruva.server.pack",
        "dhruva.server.storage_server",
        "dhruva.storage_server",
    ],
    "tools": [
        "dhruva.__main__",
        "dhruva.tools",
        "dhruva.tools.common",
        "dhruva.tools.config",
        "dhruva.tools.durus_import",
        "dhruva.tools.oid_table",
        "dhruva.tools.dbinspect",
        "dhruva.tools.dbtools",
        "dhruva.tools.object_browser",
        "dhruva.tools.mcp_server",
        "dhruva.tools.admin",
        "dhruva.tools.cli",
    ],
}

# Durus programs import these paths; they must keep working for good.
DURUS_PATHS = {
    "dhruva.btree": ["BTree"],
    "dhruva.client_storage": ["ClientStorage"],
    "dhruva.connection": ["Connection"],
    "dhruva.error": ["ConflictError", "ReadConflictError"],
    "dhruva.file_storage": ["FileStorage", "TempFileStorage"],
    "dhruva.persistent": ["Persistent", "PersistentObject"],
    "dhruva.persistent_dict": ["PersistentDict"],
    "dhruva.persistent_list": ["PersistentList"],
    "dhruva.persistent_set": ["PersistentSet"],
    "dhruva.serialize": ["ObjectReader", "ObjectWriter"],
    "dhruva.storage": ["Storage", "MemoryStorage"],
    "dhruva.storage_server": ["StorageServer", "DEFAULT_HOST", "DEFAULT_PORT"],
    "dhruva.utils": ["int8_to_str", "str_to_int8"],
}


def module_name(path: Path, package: Path) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_modules(package: Path) -> dict[str, Path]:
    return {module_name(path, package): path for path in sorted(package.rglob("*.py"))}


def imports_of(source: str, known: Iterable[str]) -> tuple[set[str], set[str]]:
    """Return (module-level imports, all imports) in ``source`` of the ``known`` package.

    ``from dhruva import x`` is an import of ``dhruva.x`` when that is a
    module (every submodule import runs the package's ``__init__`` anyway,
    so it is not counted as a dependency on the package itself).
    """
    names = set(known)
    roots = {name.split(".")[0] for name in names}
    tree = ast.parse(source)
    top_level = {id(node) for node in tree.body}
    every: set[str] = set()
    eager: set[str] = set()
    for node in ast.walk(tree):
        found: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] not in roots:
                continue
            submodules = [f"{node.module}.{alias.name}" for alias in node.names]
            found = [name for name in submodules if name in names] or [node.module]
        elif isinstance(node, ast.Import):
            found = [alias.name for alias in node.names if alias.name.split(".")[0] in roots]
        every.update(found)
        if id(node) in top_level:
            eager.update(found)
    return eager, every


def upward_imports(imports: Mapping[str, set[str]], layers: Mapping[str, list[str]]) -> list[str]:
    """Return one line per import of a later layer's module, or of an unplaced one."""
    rank = {module: index for index, names in enumerate(layers.values()) for module in names}
    layer_name = {module: name for name, names in layers.items() for module in names}
    problems = []
    for module, targets in sorted(imports.items()):
        for target in sorted(targets):
            if target not in rank:
                problems.append(f"{module} imports {target}, which is in no layer")
            elif rank[target] > rank[module]:
                problems.append(
                    f"{module} ({layer_name[module]}) imports {target} ({layer_name[target]})"
                )
    return problems


def import_circles(imports: Mapping[str, set[str]]) -> list[list[str]]:
    """Return the strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in imports.get(module, set()):
            if target not in imports:
                continue
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for module in sorted(imports):
        if module not in index:
            visit(module)
    return circles


def _graphs() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    modules = package_modules(PACKAGE)
    eager: dict[str, set[str]] = {}
    every: dict[str, set[str]] = {}
    for name, path in modules.items():
        eager[name], every[name] = imports_of(path.read_text(encoding="utf-8"), modules)
    return eager, every


def test_every_module_is_in_a_layer() -> None:
    placed = {module for names in LAYERS.values() for module in names}
    modules = set(package_modules(PACKAGE))
    assert modules - placed == set(), "place each new module in LAYERS"
    assert placed - modules == set(), "LAYERS names modules that no longer exist"


def test_layers_run_one_way() -> None:
    _, every = _graphs()
    assert upward_imports(every, LAYERS) == []


def test_no_import_circle() -> None:
    eager, _ = _graphs()
    assert import_circles(eager) == []


def test_checker_finds_an_upward_import_and_a_circle() -> None:
    layers = {"low": ["p.a"], "high": ["p.b", "p.c"]}
    source = "import os\nfrom p import b\n\ndef f():\n    from p.c import thing\n"
    eager, every = imports_of(source, ["p.a", "p.b", "p.c"])
    assert eager == {"p.b"}
    assert every == {"p.b", "p.c"}
    assert upward_imports({"p.a": every}, layers) == [
        "p.a (low) imports p.b (high)",
        "p.a (low) imports p.c (high)",
    ]
    assert upward_imports({"p.b": {"p.a", "p.x"}}, layers) == [
        "p.b imports p.x, which is in no layer"
    ]
    assert import_circles({"p.a": {"p.b"}, "p.b": {"p.c"}, "p.c": {"p.a"}}) == [
        ["p.a", "p.b", "p.c"]
    ]
    assert import_circles({"p.a": {"p.b"}, "p.b": set()}) == []


@pytest.mark.parametrize("path", sorted(DURUS_PATHS))
def test_durus_import_paths_keep_working(path: str) -> None:
    module = importlib.import_module(path)
    for name in DURUS_PATHS[path]:
        assert hasattr(module, name), f"{path}.{name}"


def test_old_server_path_is_the_same_module() -> None:
    import dhruva.server.storage_server as new
    import dhruva.storage_server as old

    assert old is new
    assert sys.modules["dhruva.storage_server"] is new
    assert old.StorageServer.__module__ == "dhruva.server.storage_server"


def test_monkeypatch_through_the_old_path_reaches_the_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import dhruva.server.storage_server as new

    monkeypatch.setattr("dhruva.storage_server.DEFAULT_BUSY_POLL_S", 0.125)
    assert new.DEFAULT_BUSY_POLL_S == 0.125


def test_the_api_reference_lists_every_module() -> None:
    """docs/api.md names each module (the Durus alias and __main__ aside)."""
    listed = (PACKAGE.parent / "docs" / "api.md").read_text(encoding="utf-8").split()
    missing = [
        module
        for names in LAYERS.values()
        for module in names
        if module not in ("dhruva", "dhruva.__main__", "dhruva.storage_server")
        and module not in listed
    ]
    assert missing == []
