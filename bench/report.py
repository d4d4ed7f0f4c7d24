"""The report of one benchmark run, in markdown (for people) and JSON (for tools and later comparison)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.harness import Analysis, Benchmark


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def results_table(benchmarks: list[Benchmark]) -> list[str]:
    lines = [
        "| benchmark | changes | case | tool | n | median s | p95 s | min s | max s | ms per change | CPU s |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for benchmark in benchmarks:
        for case in benchmark.cases:
            data = case.as_dict(benchmark.size)
            wall, cpu = data["wall_s"], data["cpu_s"]
            if not wall.get("n"):
                continue
            name = f"**{case.name}**" if case.is_product else case.name
            per_change = f"{data['ms_per_change_median']:.3f}" if "ms_per_change_median" in data else "-"
            size = f"{benchmark.size:,}" if benchmark.size else "-"
            lines.append(
                f"| {benchmark.name} | {size} | {name} | {case.tool} | {wall['n']} | {_s(wall['median'])} | {_s(wall['p95'])} "
                f"| {_s(wall['min'])} | {_s(wall['max'])} | {per_change} | {_s(cpu.get('median'))} |"
            )
    return lines


def ratios_table(benchmarks: list[Benchmark]) -> list[str]:
    lines = [
        "| benchmark | changes | product | peer | product median s | peer median s | ratio of medians | ratio of p95 | ratio of CPU s |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    for benchmark in benchmarks:
        for row in benchmark.ratios():
            size = f"{row['size']:,}" if row["size"] else "-"
            lines.append(
                f"| {row['benchmark']} | {size} | {row['product']} | {row['peer']} | {_s(row['product_median_s'])} "
                f"| {_s(row['peer_median_s'])} | **{row['ratio_median']:.2f}** | {row['ratio_p95']:.2f} | {row['ratio_cpu_median']:.2f} |"
            )
    return lines


def scaling_table(benchmarks: list[Benchmark]) -> list[str]:
    """For cases measured at several sizes: the marginal cost per change between consecutive sizes."""
    by_case: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for benchmark in benchmarks:
        if not benchmark.size:
            continue
        for case in benchmark.cases:
            wall = case.as_dict(benchmark.size)["wall_s"]
            if wall.get("n"):
                by_case.setdefault((benchmark.name, case.name), []).append((benchmark.size, wall["median"]))
    lines = []
    for (name, case), points in by_case.items():
        points.sort()
        for (small, t_small), (large, t_large) in zip(points, points[1:], strict=False):
            marginal = (t_large - t_small) * 1000 / (large - small)
            lines.append(f"| {name} | {case} | {small:,} → {large:,} | {t_large / t_small:.2f} (linear: {large / small:.0f}) | {marginal:.3f} |")
    if not lines:
        return []
    return ["| benchmark | case | sizes | growth of the median | marginal ms per change |", "|---|---|---|---:|---:|", *lines]


def baseline_table(benchmarks: list[Benchmark], baseline: dict[str, Any]) -> list[str]:
    """This run's ratios beside a previous report's: a ratio is comparable across runs, seconds are not."""
    before = {(row["benchmark"], row["size"], row["product"], row["peer"]): row for row in baseline.get("ratios", [])}
    lines = ["| benchmark | changes | product | peer | ratio before | ratio now | change |", "|---|---:|---|---|---:|---:|---:|"]
    for benchmark in benchmarks:
        for row in benchmark.ratios():
            old = before.get((row["benchmark"], row["size"], row["product"], row["peer"]))
            if old is None:
                continue
            change = row["ratio_median"] / old["ratio_median"] - 1
            lines.append(
                f"| {row['benchmark']} | {row['size'] or '-'} | {row['product']} | {row['peer']} | {old['ratio_median']:.2f} "
                f"| {row['ratio_median']:.2f} | {change:+.0%} |"
            )
    return lines if len(lines) > 2 else []


def machine_table(machine: dict[str, Any], postgres: dict[str, Any]) -> list[str]:
    lines = ["| fact | value |", "|---|---|"]
    for key, value in machine.items():
        lines.append(f"| {key} | {value} |")
    for key, value in postgres.items():
        lines.append(f"| postgresql {key} | {value} |")
    return lines


def goals_of(analyses: list[Analysis]) -> list[dict[str, Any]]:
    """Every goal row of the issue's table that this run measured, in suite order."""
    return [{"analysis": analysis.name, **row} for analysis in analyses for row in analysis.data.get("goals", [])]


def goals_table(analyses: list[Analysis]) -> list[str]:
    rows = goals_of(analyses)
    if not rows:
        return []
    lines = ["| what | product | peer (same run) | ratio | goal | met |", "|---|---|---|---:|---|---|"]
    for row in rows:
        ratio = row.get("ratio")
        shown = f"{ratio:.2f}" if isinstance(ratio, (int, float)) else "-"
        lines.append(f"| {row['what']} | {row['product']} | {row['peer']} | {shown} | {row['goal']} | {'yes' if row.get('met') else '**no**'} |")
    met = sum(1 for row in rows if row.get("met"))
    lines += ["", f"{met} of {len(rows)} goals met in this run."]
    return lines


def report_markdown(meta: dict[str, Any], benchmarks: list[Benchmark], analyses: list[Analysis]) -> str:
    out = [
        "# Flamingock benchmark report",
        "",
        f"{meta['started_at']} UTC, `{meta['command']}`, {meta['elapsed_s']:.0f} s. Repetitions: {meta['repeat']} "
        f"({meta['repeat_large']} above 2,000 changes), {meta['warmup']} warm-up per case, cases alternated within each benchmark.",
        "",
        "Ratios are product / peer, both measured in this run on this machine: below 1 the product is faster. Compare ratios,",
        "not absolute seconds, across runs and machines (absolute times vary by 15 to 25 % from run to run).",
        "",
        *(["## Goals (docs/performance.md)", "", *goals_table(analyses), ""] if goals_of(analyses) else []),
        "## Ratios",
        "",
        *ratios_table(benchmarks),
        "",
        "## Results (wall time of the whole process)",
        "",
        *results_table(benchmarks),
        "",
    ]
    scaling = scaling_table(benchmarks)
    if scaling:
        out += ["## Scaling between sizes", "", *scaling, ""]
    if meta.get("baseline"):
        compared = baseline_table(benchmarks, meta["baseline"]["data"])
        out += [f"## Against the baseline `{meta['baseline']['path']}` ({meta['baseline']['data'].get('started_at', '?')})", ""]
        out += [*(compared or ["No ratio of this run is in the baseline."]), ""]
    notes = [(benchmark, note) for benchmark in benchmarks for note in benchmark.notes]
    titled = [f"- `{benchmark.key}`: {benchmark.title} (setup {benchmark.setup_s:.1f} s, not timed)" for benchmark in benchmarks]
    out += ["## Benchmarks", "", *titled, *[f"- `{benchmark.key}`: {note}" for benchmark, note in notes], ""]
    for analysis in analyses:
        out += [f"## {analysis.title}", "", analysis.markdown, ""]
    out += ["## Machine", "", *machine_table(meta["machine"], meta["postgresql"]), ""]
    if meta.get("busy_warning"):
        out += [f"> {meta['busy_warning']}", ""]
    return "\n".join(out)


def report_write(output_dir: Path, meta: dict[str, Any], benchmarks: list[Benchmark], analyses: list[Analysis]) -> tuple[Path, Path]:
    output_dir.mkdir(parents=True, exist_ok=True)
    markdown = report_markdown(meta, benchmarks, analyses)
    data = {
        **{key: value for key, value in meta.items() if key != "baseline"},
        "baseline": meta["baseline"]["path"] if meta.get("baseline") else None,
        "benchmarks": [benchmark.as_dict() for benchmark in benchmarks],
        "ratios": [row for benchmark in benchmarks for row in benchmark.ratios()],
        "goals": goals_of(analyses),
        "analyses": {analysis.name: {"title": analysis.title, "elapsed_s": analysis.elapsed_s, **analysis.data} for analysis in analyses},
    }
    md_path, json_path = output_dir / "report.md", output_dir / "report.json"
    md_path.write_text(markdown)
    json_path.write_text(json.dumps(data, indent=2, default=str))
    # The newest report is also at a fixed path, for a quick look and for CI artefacts.
    (output_dir.parent / "latest.md").write_text(markdown)
    (output_dir.parent / "latest.json").write_text(json.dumps(data, indent=2, default=str))
    return md_path, json_path
