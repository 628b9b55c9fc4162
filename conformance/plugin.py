"""pytest plugin of the dhruva conformance suite (spec: ``spec/conformance.md``).

Installed with dhruva and loaded by pytest through the ``pytest11`` entry
point, so every pytest run where dhruva is installed knows:

* the option ``--dhruva-backend NAME`` (default ``memory``): which registered
  back-end the suite runs against;
* the fixture ``storage_factory``: a factory for that back-end owning a fresh
  database directory (override it in a ``conftest.py`` to test a back-end
  without registering it);
* the fixture ``storage``: a storage freshly opened from ``storage_factory``;
* the marker ``needs(*capabilities)``: skip the test, with a reason naming the
  missing capabilities, when the back-end lacks one (CONF-021);
* the marker ``req(*ids)``: the spec requirement IDs a test proves.

Run the suite against a back-end with
``pytest --pyargs dhruva_conformance --dhruva-backend NAME``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from dhruva_conformance import server_backends  # registers server-memory, server-file
from dhruva_conformance.backends import StorageFactory, backend_names, create_backend

from dhruva.storage import Storage

DEFAULT_BACKEND = "memory"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("dhruva", "dhruva storage conformance suite")
    group.addoption(
        "--dhruva-backend",
        action="store",
        dest="dhruva_backend",
        default=DEFAULT_BACKEND,
        metavar="NAME",
        help=(
            "registered back-end the dhruva conformance suite runs against "
            f"(default: {DEFAULT_BACKEND}; built in: memory, file, file2, sqlite, "
            "postgres, server-memory, server-file, server-sqlite, server-postgres)"
        ),
    )
    server_backends.add_server_options(group)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "needs(*capabilities): skip unless the back-end has these capabilities"
    )
    config.addinivalue_line("markers", "req(*ids): the spec requirement IDs this test proves")


def pytest_unconfigure(config: pytest.Config) -> None:
    # The throwaway PostgreSQL cluster, if this session started one, stops by pid.
    from dhruva_conformance import postgres_backend

    postgres_backend.stop_cluster()


def pytest_report_header(config: pytest.Config) -> str:
    name = config.getoption("dhruva_backend")
    return f"dhruva conformance back-end: {name} (registered: {', '.join(backend_names())})"


def missing_capabilities(factory: StorageFactory, needed: tuple[str, ...]) -> list[str]:
    """Return the capabilities in ``needed`` that ``factory`` does not declare."""
    return [cap for cap in needed if cap not in factory.capabilities]


def require(factory: StorageFactory, *needed: str) -> None:
    """Skip the running test unless ``factory`` has every capability in ``needed``.

    [CONF-021] A test that needs a missing capability is skipped with a
    reason; it never passes without running.
    """
    missing = missing_capabilities(factory, needed)
    if missing:
        pytest.skip(
            f"back-end {factory.name!r} lacks capability {', '.join(repr(m) for m in missing)}"
        )


@pytest.fixture
def dhruva_backend_name(request: pytest.FixtureRequest) -> str:
    """The name given with ``--dhruva-backend``."""
    name: str = request.config.getoption("dhruva_backend")
    return name


@pytest.fixture
def storage_factory(dhruva_backend_name: str, tmp_path: Path) -> Iterator[StorageFactory]:
    """A factory for the selected back-end owning a fresh database directory."""
    factory = create_backend(dhruva_backend_name, tmp_path / "db")
    yield factory
    factory.cleanup()


@pytest.fixture(autouse=True)
def _dhruva_needs(request: pytest.FixtureRequest) -> None:
    """Honour ``needs`` markers, also when ``storage_factory`` is overridden."""
    markers = list(request.node.iter_markers("needs"))
    if not markers:
        return
    factory: StorageFactory = request.getfixturevalue("storage_factory")
    for marker in markers:
        require(factory, *marker.args)


@pytest.fixture
def storage(storage_factory: StorageFactory) -> Storage:
    """A storage on a new, empty database of the selected back-end."""
    return storage_factory.open()
