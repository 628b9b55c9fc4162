"""Smoke test of the benchmark harness (tools/bench) at tiny sizes.

It runs every figure the way ``nox -s bench`` does, only with a few hundred
objects, so the harness cannot rot as dhruva's API changes.  It asserts that
each figure produced numbers and that the numbers are self-consistent, never
how fast anything is (no timed assertions).  Durus and ZODB parts are skipped
when those packages are not installed, which is the usual case outside the
bench session.
"""

from __future__ import annotations

import importlib.util
import io
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCH_DIR = Path(__file__).resolve().parents[1] / "tools" / "bench"


def _load_run_module() -> ModuleType:
    """Import tools/bench/run.py under a private name; it puts its folder on sys.path."""
    spec = importlib.util.spec_from_file_location("dhruva_bench_run", BENCH_DIR / "run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


bench_run = _load_run_module()
import bench_backends  # noqa: E402 -- importable only once run.py set sys.path
import bench_figures  # noqa: E402
import bench_report  # noqa: E402

FIGURE_KEYS = ["attribute_read", "open_time", "durable_commits", "bulk_insert", "cold_load"]
#: Per figure, the cells a successful backend row must carry as numbers.
NUMERIC_CELLS = {
    "attribute_read": ["ns", "ratio"],
    "open_time": ["unpacked_ms", "packed_ms"],
    "durable_commits": ["per_s", "bare_per_s", "bytes", "vs_bare"],
    "bulk_insert": ["per_s", "seconds"],
    "cold_load": ["per_s", "seconds"],
}


def _dhruva_missing() -> str | None:
    try:
        import dhruva.connection
        import dhruva.file_storage
        import dhruva.persistent  # noqa: F401
    except ImportError as error:
        return f"dhruva's object layer is not importable yet: {error}"
    return None


def _run_tiny(tmp_path: Path, systems: list[str]) -> tuple[dict[str, Any], str]:
    out = io.StringIO()
    results_path = tmp_path / "results.json"
    bench_run.run(
        sizes=bench_figures.TINY,
        cache_dir=tmp_path / "cache",
        systems=systems,
        strict=True,
        json_path=results_path,
        out=out,
    )
    return json.loads(results_path.read_text()), out.getvalue()


def _check_rows(results: dict[str, Any], system: str) -> None:
    figures = results["figures"]
    assert sorted(figures) == sorted(FIGURE_KEYS)
    for key in FIGURE_KEYS:
        rows = {row["system"]: row for row in figures[key]["rows"]}
        if system.endswith("-fs2") and key != "durable_commits":
            # The FileStorage2 variants join only the durable-commit figure.
            assert system not in rows
            continue
        row = rows[system]
        assert row["error"] is None, row["error"]
        for cell in NUMERIC_CELLS[key]:
            value = row["cells"][cell]
            assert isinstance(value, float) and value > 0, (key, cell, value)


def _check_references(results: dict[str, Any]) -> None:
    figures = results["figures"]
    attribute_rows = figures["attribute_read"]["rows"]
    assert attribute_rows[0]["system"] == "plain"
    assert attribute_rows[0]["cells"]["ratio"] == pytest.approx(1.0)
    for row in figures["durable_commits"]["rows"]:
        cells = row["cells"]
        assert cells["vs_bare"] == pytest.approx(cells["per_s"] / cells["bare_per_s"])


def _check_pack(pack: dict[str, Any] | None, with_others: bool) -> None:
    """Section 8 ran: both dhruva storages packed, and the others if asked."""
    assert pack is not None and "skipped" not in pack, pack
    count = bench_run.section_sizes(bench_figures.TINY).pack_objects
    assert pack["n"] == count
    assert [row["storage"] for row in pack["results"]] == ["FileStorage", "FileStorage2"]
    for row in pack["results"]:
        assert row["live_objects"] == count and row["pack_s"] >= 0
        assert row["bytes_after"] < row["bytes_before"]
    if not with_others:
        assert pack["compare"] == []
        return
    for row in pack["compare"]:
        assert "error" not in row, row
        assert row["live_after_pack"] == count
        assert row["bytes_after"] < row["bytes_before"]


def _check_server(server: dict[str, Any] | None, systems: list[str]) -> None:
    """Section 9 ran every server in ``systems``, each row with positive rates."""
    assert server is not None and "skipped" not in server, server
    rows = {row["system"]: row for row in server["rows"]}
    assert sorted(rows) == sorted(systems)
    for name in systems:
        row = rows[name]
        assert row["error"] is None, row["error"]
        for key in ("loads_per_s", "commits_per_s", "commits_per_s_n_clients"):
            assert isinstance(row[key], float) and row[key] > 0, (name, key, row[key])
        if name != "zeo":
            assert row["bulk_loads_per_s"] > 0
    if "durus" in systems:
        durus = rows["durus"]
        assert durus["best_loads_vs_durus"] == pytest.approx(
            max(durus["loads_per_s"], durus["bulk_loads_per_s"]) / durus["loads_per_s"]
        )
        assert server["targets"]["loads_3x_durus"] in (True, False)
    else:
        assert server["targets"] == {"loads_3x_durus": None, "commits_ge_durus": None}


def _check_everyday(everyday: dict[str, Any] | None, systems: list[str]) -> None:
    """Section 10 ran every system in ``systems``, each row with positive numbers."""
    assert everyday is not None and "skipped" not in everyday, everyday
    sizes = bench_run.section_sizes(bench_figures.TINY).everyday
    assert everyday["sizes"]["chunks"] == sizes.chunks
    rows = {row["system"]: row for row in everyday["rows"]}
    assert sorted(rows) == sorted(systems)
    for name in systems:
        row = rows[name]
        assert row["error"] is None, row["error"]
        assert len(row["samples"]) == sizes.rounds
        for key in ("bulk_per_s", "cold_us", "server_per_s"):
            assert isinstance(row[key], float) and row[key] > 0, (name, key, row[key])
        # RSS moves in pages: a tiny database may not grow it at all.
        assert isinstance(row["memory_mb"], float)
    assert everyday["targets"]["cold"] in (True, False)
    assert everyday["targets"]["server"] in (True, False)
    # The floors, the same work without a database, measured in the same rounds.
    floors = everyday["floors"]
    assert len(everyday["floor_samples"]) == sizes.rounds
    for key in ("bulk_per_s", "cold_us", "server_per_s"):
        assert isinstance(floors[key], float) and floors[key] > 0, (key, floors[key])
    assert everyday["plain_memory_mb"] == floors["memory_mb"]


def test_dhruva_figures_run_at_tiny_sizes(tmp_path: Path) -> None:
    reason = _dhruva_missing()
    if reason:
        pytest.skip(reason)
    results, printed = _run_tiny(tmp_path, ["dhruva", "dhruva-fs2"])
    _check_rows(results, "dhruva")
    _check_rows(results, "dhruva-fs2")
    _check_references(results)
    assert results["environment"]["cpu_count"] >= 1
    for key in FIGURE_KEYS:
        assert results["figures"][key]["target_met"] in (True, False, None)
    assert "Targets" in printed and "dhruva FileStorage" in printed
    serializers = results.get("serializers")
    if (BENCH_DIR / "serializers.py").exists():
        assert serializers is not None and "skipped" not in serializers, serializers
        assert serializers["n"] == bench_figures.TINY.serializer_objects
    btree = results.get("btree")
    if (BENCH_DIR / "btree_bench.py").exists():
        assert btree is not None and "skipped" not in btree, btree
        assert btree["sizes"][-1]["size"] == bench_figures.TINY.btree_keys
    _check_pack(results.get("pack"), with_others=False)
    _check_server(results.get("server"), ["dhruva", "dhruva-thread"])
    _check_everyday(results.get("everyday"), ["dhruva"])
    assert "8. Pack" in printed and "9. Storage servers" in printed
    assert "10. Everyday paths" in printed and "everyday_cold" in printed
    # The bulk database lives in the work folder only while figure 5 runs.
    assert not list((tmp_path / "cache" / "work").glob("bulk-*"))


def test_open_time_databases_are_built_once(tmp_path: Path) -> None:
    reason = _dhruva_missing()
    if reason:
        pytest.skip(reason)
    backend = next(b for b in bench_run.ALL_BACKENDS if b.name == "dhruva")
    bench = bench_figures.Bench(
        sizes=bench_figures.TINY, cache_dir=tmp_path, backends=[backend], strict=True
    )
    unpacked, built_s = bench_figures.cached_database(bench, backend, packed=False)
    assert built_s is not None and unpacked.name == "unpacked.db"
    path, _ = bench_figures.cached_database(bench, backend, packed=True)
    assert path.name == "packed.db" and path.exists()
    again, rebuilt_s = bench_figures.cached_database(bench, backend, packed=False)
    assert rebuilt_s is None and again == unpacked
    opened_ms = bench_figures.time_open_ms(backend, path, 1, bench_figures.TINY.open_objects)
    assert opened_ms > 0


@pytest.mark.parametrize(
    ("system", "module"),
    [("durus", "durus"), ("durus-fs2", "durus"), ("zodb", "ZODB")],
)
def test_comparison_systems_run_at_tiny_sizes(tmp_path: Path, system: str, module: str) -> None:
    pytest.importorskip(module)
    results, _ = _run_tiny(tmp_path, [system])
    _check_rows(results, system)
    _check_references(results)


def test_pack_and_servers_of_durus_zodb_and_zeo_run_at_tiny_sizes(tmp_path: Path) -> None:
    # Sections 8 and 9 with every comparison system; needs the bench session's
    # packages (durus, ZODB, ZEO), so it is skipped elsewhere.
    reason = _dhruva_missing()
    if reason:
        pytest.skip(reason)
    for module in ("durus", "ZODB", "ZEO"):
        pytest.importorskip(module)
    out = io.StringIO()
    results_path = tmp_path / "results.json"
    bench_run.run(
        sizes=bench_figures.TINY,
        cache_dir=tmp_path / "cache",
        only=["pack", "server"],
        systems=["dhruva", "durus", "zodb"],
        strict=True,
        json_path=results_path,
        out=out,
    )
    results = json.loads(results_path.read_text())
    assert results["figures"] == {}
    _check_pack(results["pack"], with_others=True)
    assert [row["storage"].split()[0] for row in results["pack"]["compare"]] == ["Durus", "ZODB"]
    _check_server(results["server"], ["dhruva", "dhruva-thread", "durus", "zeo"])
    printed = out.getvalue()
    assert "Durus 4.3 server" in printed and "ZEO server" in printed
    assert "server_loads" in printed and "pack " in printed


def test_everyday_section_of_durus_and_zodb_runs_at_tiny_sizes(tmp_path: Path) -> None:
    # Section 10 side by side; needs the bench session's packages.
    reason = _dhruva_missing()
    if reason:
        pytest.skip(reason)
    for module in ("durus", "ZODB", "ZEO"):
        pytest.importorskip(module)
    results_path = tmp_path / "results.json"
    bench_run.run(
        sizes=bench_figures.TINY,
        cache_dir=tmp_path / "cache",
        only=["everyday"],
        systems=["dhruva", "durus", "zodb"],
        strict=True,
        json_path=results_path,
        out=io.StringIO(),
    )
    results = json.loads(results_path.read_text())
    _check_everyday(results["everyday"], ["dhruva", "durus", "zodb"])


def test_a_missing_everyday_system_becomes_an_error_row() -> None:
    everyday_bench = pytest.importorskip("everyday_bench")
    missing = everyday_bench.EverydaySystem(
        "durus", "missing", "no_such_module_for_bench", "Durus", "durus"
    )
    original = everyday_bench.SYSTEMS
    everyday_bench.SYSTEMS = [missing]
    try:
        result = everyday_bench.bench_everyday(everyday_bench.TINY_SIZES, with_server=False)
    finally:
        everyday_bench.SYSTEMS = original
    (row,) = result["rows"]
    assert row["error"].startswith("not installed")
    assert result["targets"] == {"cold": None, "memory": None, "bulk": None, "server": None}
    assert "not installed" in everyday_bench.format_table(result)


def test_a_missing_server_system_becomes_an_error_row(tmp_path: Path) -> None:
    server_compare = pytest.importorskip("server_compare")
    missing = server_compare.ServerSystem(
        **{**vars(server_compare.DURUS), "module": "no_such_module_for_bench"}
    )
    original = server_compare.SYSTEMS
    server_compare.SYSTEMS = [missing]
    try:
        result = server_compare.bench_server_compare(10, 1, 1, in_process=False)
    finally:
        server_compare.SYSTEMS = original
    (row,) = result["rows"]
    assert row["error"].startswith("not installed")
    assert result["targets"] == {"loads_3x_durus": None, "commits_ge_durus": None}
    assert "not installed" in server_compare.format_table(result)


def test_a_failing_backend_becomes_an_error_row(tmp_path: Path) -> None:
    class BrokenBackend(bench_backends.Backend):
        name = "dhruva"
        label = "broken"

        def available(self) -> str | None:
            return None

        def open(self, path: Path) -> Any:
            raise RuntimeError("cannot open")

    bench = bench_figures.Bench(
        sizes=bench_figures.TINY,
        cache_dir=tmp_path,
        backends=[BrokenBackend()],
        log=lambda message: None,
    )
    figure = bench_figures.bulk_insert(bench)
    (row,) = figure.rows
    assert row.error == "RuntimeError: cannot open"
    assert figure.target_met is None
    table = bench_report.format_figure(figure)
    assert "RuntimeError: cannot open" in table and "not evaluated" in table


def test_table_shows_ratios_and_verdict() -> None:
    figure = bench_figures.Figure(
        key="demo",
        title="demo figure",
        columns=[("per_s", "objects/s"), ("vs_zodb", "x ZODB")],
        rows=[
            bench_figures.Row("dhruva", "dhruva FileStorage", {"per_s": 90000.0, "vs_zodb": 3.0}),
            bench_figures.Row("zodb", "ZODB FileStorage", {"per_s": 30000.0, "vs_zodb": 1.0}),
        ],
        target="dhruva >= 3x ZODB",
        target_met=True,
    )
    lines = bench_report.format_figure(figure).splitlines()
    assert lines[0] == "demo figure"
    assert "90,000" in lines[3] and "3.00x" in lines[3]
    assert lines[-1].endswith("-> MET")


def test_cli_rejects_an_unknown_figure() -> None:
    with pytest.raises(SystemExit):
        bench_run.main(["--only", "nonsense"])


def test_a_cache_built_from_older_dhruva_sources_is_removed(tmp_path: Path) -> None:
    reason = _dhruva_missing()
    if reason:
        pytest.skip(reason)
    backend = bench_backends.DhruvaBackend()
    sizes = bench_figures.TINY
    size_part = f"{sizes.open_objects}x{sizes.open_per_commit}"
    stale = tmp_path / f"dhruva-FileStorage-000000000000-{size_part}"
    other_sizes = tmp_path / "dhruva-FileStorage-000000000000-5x5"
    for folder in (stale, other_sizes):
        folder.mkdir()
        (folder / "unpacked.done").write_text("1\n")
    bench = bench_figures.Bench(sizes=sizes, cache_dir=tmp_path, backends=[backend], strict=True)
    path, built_s = bench_figures.cached_database(bench, backend, packed=False)
    assert built_s is not None and path.exists()
    assert not stale.exists()
    assert other_sizes.exists()  # another size is another database, kept


@pytest.mark.parametrize(
    ("system", "module"), [("dhruva", None), ("durus", "durus"), ("zodb", "ZODB")]
)
def test_ghost_probe_tells_ghosts_from_loaded_objects(
    tmp_path: Path, system: str, module: str | None
) -> None:
    # Figure 1 relies on is_ghost() to prove it times a loaded object.
    if module is None:
        reason = _dhruva_missing()
        if reason:
            pytest.skip(reason)
    else:
        pytest.importorskip(module)
    backend = next(b for b in bench_run.ALL_BACKENDS if b.name == system)
    path = tmp_path / "ghost.db"
    session = backend.open(path)
    session.root["obj"] = backend.new_item(7)
    session.commit()
    session.close()
    session = backend.open(path)
    try:
        obj = session.root["obj"]
        assert backend.is_ghost(obj)
        assert obj.a == 7
        assert not backend.is_ghost(obj)
    finally:
        session.close()
