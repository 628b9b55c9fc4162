"""Run dhruva's benchmark figures against Durus 4.3 and ZODB; see README.md.

Usage: ``python tools/bench/run.py [--quick]
[--only attr,open,commit,bulk,cold,serializers,btree,pack,server,everyday]
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
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, TextIO

# ``python tools/bench/run.py`` puts this directory on sys.path already; a
# caller that imports run.py from elsewhere (the smoke test) adds it too.
HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from bench_backends import ALL_BACKENDS  # noqa: E402
from bench_figures import FIGURES, FULL, QUICK, TINY, Bench, Figure, Sizes  # noqa: E402
from bench_report import (  # noqa: E402
    environment,
    format_environment,
    format_figure,
    format_summary,
    write_json,
)
from everyday_bench import FULL_SIZES, QUICK_SIZES, TINY_SIZES, EverydaySizes  # noqa: E402

#: Sections that are not figures of bench_figures.py: measurements that other
#: modules in this folder provide, each printed in its own format.
EXTRA_SECTIONS = ("serializers", "btree", "pack", "server", "everyday")


@dataclass(frozen=True)
class SectionSizes:
    """Sizes of sections 8 to 10, chosen by which ``Sizes`` the run uses."""

    pack_objects: int  # live objects packed (pack_bench.py, pack_compare.py)
    server_objects: int  # objects loaded through each server
    server_commits: int  # one-object commits per client
    server_clients: int  # concurrent clients of the last column
    everyday: EverydaySizes  # issue 13's workload (everyday_bench.py)


SECTION_SIZES = {
    FULL: SectionSizes(100_000, 20_000, 1_000, 4, FULL_SIZES),
    QUICK: SectionSizes(20_000, 5_000, 200, 4, QUICK_SIZES),
    TINY: SectionSizes(300, 200, 5, 2, TINY_SIZES),
}


def section_sizes(sizes: Sizes) -> SectionSizes:
    """The section sizes that go with ``sizes`` (TINY's for any unknown ``Sizes``)."""
    return SECTION_SIZES.get(sizes, SECTION_SIZES[TINY])


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


def _wanted(systems: list[str] | None, *names: str) -> bool:
    return systems is None or any(name in systems for name in names)


def run_extra_sections(
    bench: Bench, only: list[str] | None, systems: list[str] | None, stream: TextIO
) -> dict[str, Any]:
    """Sections 6 (serializers.py), 7 (btree_bench.py), 8 (pack), 9 (servers), 10 (everyday).

    Sections 6 to 8 measure dhruva and run when ``systems`` includes it;
    section 8 adds Durus's and ZODB's pack when those are chosen, and
    section 9 runs each chosen server (``zodb`` or ``zeo`` selects ZEO).
    Section 10 (everyday_bench.py, issue 13) runs each chosen system of
    ``dhruva``, ``durus`` and ``zodb``.
    """
    sizes = bench.sizes
    more = section_sizes(sizes)
    results: dict[str, Any] = {}
    with_dhruva = _wanted(systems, "dhruva")
    if with_dhruva and (only is None or "serializers" in only):
        bench.log("6: serializers (dhruva only)")
        results["serializers"] = _section(
            "6",
            "serializers",
            lambda module: module.bench_serializers(sizes.serializer_objects),
            stream,
        )
    if with_dhruva and (only is None or "btree" in only):
        bench.log(f"7: BTree ({sizes.btree_keys} keys, dhruva only)")
        results["btree"] = _section(
            "7",
            "btree_bench",
            lambda module: module.bench_btree(sizes.btree_keys, directory=str(bench.work_dir)),
            stream,
        )
    if with_dhruva and (only is None or "pack" in only):
        bench.log(f"8: pack ({more.pack_objects} live objects)")
        results["pack"] = _section("8", "pack_compare", partial(_pack, bench, systems), stream)
    if only is None or "server" in only:
        bench.log(
            f"9: servers ({more.server_objects} objects, {more.server_commits} commits, "
            f"{more.server_clients} clients)"
        )
        results["server"] = _section(
            "9", "server_compare", partial(_server, bench, systems), stream
        )
    if only is None or "everyday" in only:
        everyday = more.everyday
        bench.log(
            f"10: everyday ({everyday.chunks} x {everyday.per_chunk} Items, "
            f"{everyday.rounds} rounds)"
        )
        results["everyday"] = _section(
            "10", "everyday_bench", partial(_everyday, bench, systems), stream
        )
    return results


def _everyday(bench: Bench, systems: list[str] | None, module: Any) -> dict[str, Any]:
    names = None
    if systems is not None:
        names = [name for name in ("dhruva", "durus", "zodb") if name in systems]
    result: dict[str, Any] = module.bench_everyday(
        section_sizes(bench.sizes).everyday, systems=names, strict=bench.strict, log=bench.log
    )
    return result


def _pack(bench: Bench, systems: list[str] | None, module: Any) -> dict[str, Any]:
    """pack_bench.bench_pack's figures plus pack_compare's Durus and ZODB rows."""
    from pack_bench import bench_pack

    count = section_sizes(bench.sizes).pack_objects
    result = bench_pack(count)
    names = None if systems is None else [n for n in ("durus", "zodb") if n in systems]
    result["compare"] = module.bench_pack_compare(count, strict=bench.strict, systems=names)
    return result


def _server(bench: Bench, systems: list[str] | None, module: Any) -> dict[str, Any]:
    more = section_sizes(bench.sizes)
    names: list[str] | None = None
    if systems is not None:
        names = [name for name in ("dhruva", "durus") if name in systems]
        if _wanted(systems, "zodb", "zeo"):
            names.append("zeo")
    result: dict[str, Any] = module.bench_server_compare(
        more.server_objects,
        more.server_commits,
        more.server_clients,
        systems=names,
        strict=bench.strict,
    )
    return result


def target_verdicts(extras: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    """The targets of sections 8 to 10 as (key, target, verdict) for the summary."""
    verdicts: list[tuple[str, str, bool | None]] = []
    pack = extras.get("pack")
    if pack and "results" in pack:
        met = all(row["meets_target"] for row in pack["results"])
        verdicts.append(("pack", "dhruva <= 0.5 s per 100k live objects", met))
    server = extras.get("server")
    if server and "targets" in server:
        targets = server["targets"]
        verdicts.append(
            ("server_loads", "cold loads >= 3x Durus server", targets["loads_3x_durus"])
        )
        verdicts.append(
            ("server_commits", "durable commits >= Durus (no fsync)", targets["commits_ge_durus"])
        )
    everyday = extras.get("everyday")
    if everyday and "targets" in everyday:
        module = importlib.import_module("everyday_bench")
        for key, target in (
            ("cold", f"cold load <= {module.TARGET_COLD_US:g} us"),
            ("memory", f"100k Items <= {module.TARGET_MEMORY_MB:g} MB"),
            ("bulk", f"bulk insert >= {module.TARGET_BULK_PER_S:,.0f}/s"),
            ("server", f"server cold loads >= {module.TARGET_SERVER_PER_S:,.0f}/s"),
        ):
            verdicts.append((f"everyday_{key}", target, everyday["targets"][key]))
    return verdicts


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
    env["section_sizes"] = asdict(section_sizes(sizes))
    print(format_environment(env), file=stream, flush=True)
    start_s = time.perf_counter()
    figures = []
    for name, figure_function in FIGURES.items():
        if only is not None and name not in only:
            continue
        figure = figure_function(bench)
        figures.append(figure)
        print("\n" + format_figure(figure), file=stream, flush=True)
    extras = run_extra_sections(bench, only, systems, stream)
    elapsed_s = time.perf_counter() - start_s
    print("\n" + format_summary(figures, target_verdicts(extras)), file=stream)
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
