"""Text tables, the environment block and results.json for a benchmark run."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench_backends import Backend
from bench_figures import Cell, Figure, Sizes


def environment(backends: list[Backend], sizes: Sizes, cache_dir: Path) -> dict[str, Any]:
    """What a reader needs to compare two runs: interpreter, machine, versions."""
    repo = Path(__file__).resolve().parents[2]
    try:
        commit = (
            subprocess.run(
                ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
                capture_output=True,
                text=True,
                check=False,
                timeout=10,
            ).stdout.strip()
            or "?"
        )
    except OSError:
        commit = "?"
    versions = {}
    for backend in backends:
        reason = backend.available()
        versions[backend.name] = backend.version() if reason is None else f"unavailable ({reason})"
    return {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "dhruva_commit": commit,
        "versions": versions,
        "cache_dir": str(cache_dir),
        "sizes": asdict(sizes),
    }


def format_environment(env: dict[str, Any]) -> str:
    lines = [
        f"python {env['python']} ({env['implementation']}) on {env['platform']}",
        f"CPUs: {env['cpu_count']} (usable {env['cpus_usable']}); "
        f"dhruva commit {env['dhruva_commit']}",
    ]
    lines += [f"  {name}: {value}" for name, value in env["versions"].items()]
    lines.append(f"databases in {env['cache_dir']}")
    return "\n".join(lines)


def _format_cell(key: str, value: Cell) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if key.startswith("vs_") or key.endswith("_vs_zodb") or key == "ratio":
        return f"{value:.2f}x"
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def format_figure(figure: Figure) -> str:
    """The figure as an aligned text table, with target verdict and notes."""
    header = ["system", *(title for _, title in figure.columns)]
    body = []
    for row in figure.rows:
        if row.error is not None:
            body.append([row.label, row.error])
            continue
        body.append(
            [row.label, *(_format_cell(key, row.cells.get(key)) for key, _ in figure.columns)]
        )
    # Error rows span the columns, so they do not widen them.
    full_rows = [line for line in [header, *body] if len(line) == len(header)]
    widths = [max(len(line[i]) for line in full_rows) for i in range(len(header))]
    widths[0] = max([widths[0], *(len(line[0]) for line in body)])
    out = [figure.title]

    def render(cells: list[str]) -> str:
        if len(cells) == 2 and len(header) > 2 and cells is not header:
            return f"  {cells[0]:<{widths[0]}}  {cells[1]}"  # an error row
        first = f"{cells[0]:<{widths[0]}}"
        rest = [f"{cell:>{widths[i + 1]}}" for i, cell in enumerate(cells[1:])]
        return "  " + "  ".join([first, *rest])

    out.append(render(header))
    out.append("  " + "  ".join("-" * width for width in widths))
    out += [render(cells) for cells in body]
    verdict = {True: "MET", False: "NOT MET", None: "not evaluated"}[figure.target_met]
    out.append(f"  target: {figure.target} -> {verdict}")
    out += [f"  note: {note}" for note in figure.notes]
    return "\n".join(out)


def format_summary(
    figures: list[Figure], more: list[tuple[str, str, bool | None]] | None = None
) -> str:
    """Every target and its verdict: the figures', then ``more`` (key, target, verdict)."""
    rows = [
        (figure.key, figure.target, figure.target_met)
        for figure in figures
        if not (figure.target_met is None and figure.target.startswith("("))
    ]
    rows += more or []
    lines = ["Targets"]
    for key, target, met in rows:
        verdict = {True: "MET", False: "NOT MET", None: "not evaluated"}[met]
        lines.append(f"  {key:<16} {target:<42} {verdict}")
    return "\n".join(lines)


def write_json(
    path: Path,
    env: dict[str, Any],
    figures: list[Figure],
    seconds: float,
    extras: dict[str, Any] | None = None,
) -> None:
    """Write the run as JSON: environment, seconds, figures, extra sections."""
    document = {
        "environment": env,
        "run_seconds": seconds,
        "figures": {figure.key: asdict(figure) for figure in figures},
        **(extras or {}),
    }
    path.write_text(json.dumps(document, indent=2, sort_keys=False) + "\n")
