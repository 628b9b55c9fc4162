"""The suite's own machinery: registry, capabilities, skipping, third-party use.

Spec: ``spec/conformance.md`` (CONF-010..CONF-032).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest
from dhruva_conformance import backends
from dhruva_conformance.backends import (
    ENTRY_POINT_GROUP,
    MemoryFactory,
    StorageFactory,
    create_backend,
    register_backend,
)
from dhruva_conformance.faults import make_commits, write_commits
from dhruva_conformance.plugin import require

from dhruva.storage import MemoryStorage


@pytest.mark.req("CONF-001")
def test_option_names_a_registered_backend(dhruva_backend_name: str, tmp_path: Path) -> None:
    assert dhruva_backend_name in backends.backend_names()
    factory = create_backend(dhruva_backend_name, tmp_path)
    assert isinstance(factory, StorageFactory)
    assert factory.name == dhruva_backend_name
    assert {"memory", "file", "file2"} <= set(backends.backend_names())


@pytest.mark.req("CONF-010")
def test_factory_implements_the_protocol(storage_factory: StorageFactory) -> None:
    assert isinstance(storage_factory, StorageFactory)
    assert isinstance(storage_factory.capabilities, frozenset)
    storage = storage_factory.open()
    storage.close()
    if "reopen" not in storage_factory.capabilities:
        with pytest.raises(NotImplementedError):
            storage_factory.open(reopen=True)
    if "raw-file" in storage_factory.capabilities:
        assert Path(storage_factory.paths()[0]).is_file()


@pytest.mark.needs("reopen", "raw-file")
@pytest.mark.req("CONF-011")
def test_crash_leaves_files_as_they_were(storage_factory: StorageFactory) -> None:
    storage = storage_factory.open()
    commits = make_commits(3, seed=1)
    write_commits(storage, commits)
    directory = Path(storage_factory.paths()[0]).parent
    before = {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()}
    storage_factory.crash(storage)
    after = {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()}
    assert after == before


@pytest.mark.req("CONF-021")
def test_missing_capability_skips_with_reason(tmp_path: Path) -> None:
    factory = MemoryFactory(tmp_path)
    with pytest.raises(pytest.skip.Exception) as info:
        require(factory, "pack", "reopen", "raw-file")
    message = str(info.value)
    assert "'memory'" in message and "'reopen'" in message and "'raw-file'" in message
    assert "'pack'" not in message
    require(factory, "pack")  # present: no skip


class _Counting(MemoryFactory):
    name = "counting"


@pytest.mark.req("CONF-030")
def test_register_backend(tmp_path: Path) -> None:
    register_backend("conformance-selftest", _Counting)
    try:
        factory = create_backend("conformance-selftest", tmp_path)
        assert isinstance(factory, _Counting)
        assert "conformance-selftest" in backends.backend_names()
    finally:
        backends._REGISTRY.pop("conformance-selftest", None)
    with pytest.raises(LookupError, match=r"registered: .*memory"):
        create_backend("no-such-backend", tmp_path)
    with pytest.raises(ValueError):
        register_backend("", _Counting)


@pytest.mark.req("CONF-031")
def test_entry_point_group(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    entry = metadata.EntryPoint(
        name="entry-point-selftest",
        value="dhruva_conformance.backends:MemoryFactory",
        group=ENTRY_POINT_GROUP,
    )

    def fake_entry_points(group: str) -> list[metadata.EntryPoint]:
        return [entry] if group == ENTRY_POINT_GROUP else []

    monkeypatch.setattr(metadata, "entry_points", fake_entry_points)
    try:
        factory = create_backend("entry-point-selftest", tmp_path)
        assert isinstance(factory, MemoryFactory)
    finally:
        backends._REGISTRY.pop("entry-point-selftest", None)


THIRD_PARTY_CONFTEST = """
import pytest
from dhruva.storage import MemoryStorage


class DictFactory:
    name = "third-party-dict"
    capabilities = MemoryStorage.capabilities

    def open(self, reopen=False, **options):
        if reopen:
            raise NotImplementedError("no reopen")
        return MemoryStorage()

    def crash(self, storage):
        storage.close()

    def paths(self):
        return []

    def cleanup(self):
        pass

    def replace_data_file(self, data):
        raise NotImplementedError


@pytest.fixture
def storage_factory():
    return DictFactory()
"""


@pytest.mark.req("CONF-032", "CONF-021")
def test_third_party_overrides_the_fixture(tmp_path: Path) -> None:
    """A conftest overriding ``storage_factory`` runs the installed suite."""
    (tmp_path / "conftest.py").write_text(textwrap.dedent(THIRD_PARTY_CONFTEST))
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    selected = "test_store_commit_load_round_trip or test_committed_data_survives_reopen"
    options = ["-q", "--strict-markers", "-p", "no:cacheprovider", "-rs", "-W", "error"]
    suite = "dhruva_conformance.test_storage_contract"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--pyargs", suite, *options, "-k", selected],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "1 passed, 1 skipped" in output, output
    assert "'third-party-dict' lacks capability 'reopen'" in output, output


@pytest.mark.req("CONF-022")
def test_builtin_factories_declare_their_storages_capabilities(tmp_path: Path) -> None:
    for name in ("memory", "file", "file2"):
        factory = create_backend(name, tmp_path / name)
        storage = factory.open()
        try:
            assert storage.capabilities <= factory.capabilities, name
        finally:
            factory.cleanup()
    assert MemoryStorage.capabilities == MemoryFactory.capabilities
