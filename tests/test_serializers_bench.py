"""Smoke test of tools/bench/serializers.py: the harness runs and reports every serializer."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "tools" / "bench" / "serializers.py"


def test_bench_serializers_reports_rates_for_every_serializer() -> None:
    spec = importlib.util.spec_from_file_location("dhruva_bench_serializers", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        result = module.bench_serializers(30, repeat=1)
    finally:
        del sys.modules[spec.name]
    assert result["n"] == 30
    for rows in result["shapes"].values():
        assert set(rows) == {"pickle", "pickle-restricted", "msgspec", "dill"}
        assert rows["pickle"]["insert_vs_pickle"] == 1.0
        for row in rows.values():
            assert "skipped" in row or row["cold_load_objs_per_s"] > 0
    assert "pickle" in module.format_table(result)
