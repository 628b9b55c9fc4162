"""Run dhruva's benchmark figures against Durus 4.3 and ZODB; see README.md.

Usage: ``python tools/bench/run.py [--quick] [--only attr,open,commit,bulk,cold,serializers,btree]
[--systems dhruva,durus,zodb] [--cache-dir DIR] [--json FILE]``.

Prints the environment and one table per figure to stdout (progress goes to
stderr) and writes the same numbers to ``tools/bench/results.json``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

# ``python tools/bench/run.py`` puts this directory on sys.path already; a
# caller that imports run.py from elsewhere (the smoke test) adds it too.
HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from bench_backends import ALL_BACKENDS  # noqa: E402
from bench_figures import FIGURES, FULL, QUICK, Bench, Figure, Sizes  # noqa: E402
from bench_report import (  # noqa: E402
    environment,
    format_environment,
    format_figure,
    format_summary,
    write_json,
)

#: Sections that are not side-by-side figures: dhruva-only measurements that
#: other modules in this folder provide, printed in their own format.
EXTRA_SECTIONS = ("serializers", "btree")


def _section(
    title: str, module_name: str, measure: Callable[[Any], dict[str, Any]], stream: TextIO
) -> dict[str, Any]:
    """Import ``module_name``, run ``measure(module)`` and print its table.

    Returns the module's result dict, or ``{"skipped": reason}`` when the
    module is not there (or cannot import dhruva).
    """
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        print(f"\n{title}: skipped ({error})", file=stream, flush=True)
        return {"skipped": str(error)}
    result = measure(module)
    formatter = getattr(module, "format_table", None) or module.format_result
    print(f"\n{title}. {formatter(result)}", file=stream, flush=True)
    return result


def run_extra_sections(bench: Bench, only: list[str] | None, stream: TextIO) -> dict[str, Any]:
    """Sections 6 (serializers.py, MemoryStorage) and 7 (btree_bench.py, FileStorage)."""
    sizes = bench.sizes
    results: dict[str, Any] = {}
    if only is None or "serializers" in only:
        bench.log("6: serializers (dhruva only)")
        results["serializers"] = _section(
            "6",
            "serializers",
            lambda module: module.bench_serializers(sizes.serializer_objects),
            stream,
        )
    if only is None or "btree" in only:
        bench.log(f"7: BTree ({sizes.btree_keys} keys, dhruva only)")
        results["btree"] = _section(
            "7",
            "btree_bench",
            lambda module: module.bench_btree(sizes.btree_keys, directory=str(bench.work_dir)),
            stream,
        )
    return results


def run(
    sizes: Sizes,
    cache_dir: Path,
    only: list[str] | None = None,
    systems: list[str] | None = None,
    strict: bool = False,
    json_path: Path | None = None,
    out: TextIO | None = None,
) -> list[Figure]:
    """Run the chosen figures and print them; return the Figure objects.

    ``systems`` names backends (``dhruva``, ``durus``, ``zodb``, and the
    FileStorage2 variants ``dhruva-fs2`` and ``durus-fs2``); by default all.
    With ``strict`` any exception in a backend propagates.
    """
    stream = out if out is not None else sys.stdout
    backends = [b for b in ALL_BACKENDS if systems is None or b.name in systems]
    cache_dir.mkdir(parents=True, exist_ok=True)
    bench = Bench(sizes=sizes, cache_dir=cache_dir, backends=backends, strict=strict)
    env = environment(backends, sizes, cache_dir)
    print(format_environment(env), file=stream, flush=True)
    start_s = time.perf_counter()
    figures = []
    for name, figure_function in FIGURES.items():
        if only is not None and name not in only:
            continue
        figure = figure_function(bench)
        figures.append(figure)
        print("\n" + format_figure(figure), file=stream, flush=True)
    extras: dict[str, Any] = {}
    if systems is None or "dhruva" in systems:
        extras = run_extra_sections(bench, only, stream)
    elapsed_s = time.perf_counter() - start_s
    print("\n" + format_summary(figures), file=stream)
    print(f"\nran in {elapsed_s:.0f} s", file=stream, flush=True)
    if json_path is not None:
        write_json(json_path, env, figures, elapsed_s, extras)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smaller sizes for a smoke run (numbers are not comparable)",
    )
    sections = [*FIGURES, *EXTRA_SECTIONS]
    parser.add_argument("--only", help=f"comma-separated sections: {','.join(sections)}")
    parser.add_argument("--systems", help="comma-separated systems (default: all installed)")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=HERE / ".cache",
        help="where built databases are kept (default: tools/bench/.cache)",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=HERE / "results.json",
        help="results file (default: tools/bench/results.json)",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="stop at the first error instead of reporting it in the table",
    )
    args = parser.parse_args(argv)
    only = args.only.split(",") if args.only else None
    if only is not None and (unknown := set(only) - set(sections)):
        parser.error(f"unknown figure(s): {', '.join(sorted(unknown))}")
    run(
        sizes=QUICK if args.quick else FULL,
        cache_dir=args.cache_dir,
        only=only,
        systems=args.systems.split(",") if args.systems else None,
        strict=args.strict,
        json_path=args.json,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
