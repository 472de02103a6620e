"""The VTAB table: per task, per group, the mean of the tasks and the mean of the group means.

Reads result records — the ``results.jsonl`` of sweeps, the ``result.json`` of single
``train_vtab.py fit`` runs, or folders holding any mix of them (the method name is the records'
``method``) —, prints Markdown, writes a CSV and a PNG bar chart. Accuracies are shown
in percent. Two metrics: ``final`` (after the last epoch) and ``best`` (the best of the periodic
evaluations on the same split, what most papers report). Several records of one method and task
(e.g. seeds) are averaged, the latest record per seed counting. A mean over a group or the whole
suite is given only when every task in it has a result; missing tasks are listed under the table.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

from liera_vision.fileio import atomic_write

from .results import RESULT_FILE, RESULTS_FILE, read_json, read_jsonl, write_text_atomic
from .tasks import SUITES, TASKS, canonical_name, groups

METRICS = {"final": "acc_final", "best": "acc_best"}
METRIC_TITLES = {"final": "final (after the last epoch)", "best": "best over the periodic evaluations"}


@dataclass
class Row:
    kind: str   # task | group_mean | mean_tasks | mean_groups
    group: str
    label: str
    values: dict[str, float | None]  # method -> accuracy in percent (None: missing)
    spread: dict[str, float | None] = field(default_factory=dict)  # method -> std over seeds (None: < 2 seeds)


@dataclass
class Table:
    suite: str
    metric: str
    methods: list[str]
    rows: list[Row]
    missing: dict[str, list[str]]  # method -> tasks without a result
    params: dict[str, str] = field(default_factory=dict)  # method -> trainable parameters (range over tasks)


SKIP_DIRS = ("checkpoints", "lightning_logs")  # inside a run folder: never results


def _result_files_under(folder: Path) -> list[Path]:
    """``results.jsonl`` / ``result.json`` files under ``folder``, sorted. A folder holding ``results.jsonl`` (a
    sweep) counts by it alone: its task folders' ``result.json`` are the same records."""
    found = []
    for root, dirs, files in os.walk(folder):
        if RESULTS_FILE in files or RESULT_FILE in files:
            found.append(Path(root) / (RESULTS_FILE if RESULTS_FILE in files else RESULT_FILE))
            dirs[:] = []
        else:
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in SKIP_DIRS)
    return sorted(found)


def find_results(paths: list[str | os.PathLike]) -> list[Path]:
    """Result files from ``results.jsonl`` / ``result.json`` files and folders: a sweep's run folder, a single
    ``train_vtab.py fit`` run's folder, or any folder holding such folders (searched recursively)."""
    found = []
    for path in map(Path, paths):
        if path.is_file():
            if path.suffix not in (".json", ".jsonl"):
                raise ValueError(f"{path}: expected a {RESULTS_FILE} (sweep) or {RESULT_FILE} (single run) file")
            found.append(path)
        elif path.is_dir():
            files = _result_files_under(path)
            if not files:
                raise FileNotFoundError(f"{path}: no {RESULTS_FILE} or {RESULT_FILE} in it or below it (expected a "
                                        "sweep's run folder, a train_vtab.py fit run folder, or a folder of those)")
            found += files
        else:
            raise FileNotFoundError(f"{path} does not exist (expected a result file or a run folder)")
    return list(dict.fromkeys(found))


def load_records(paths: list[str | os.PathLike]) -> list[dict]:
    """Every record of :func:`find_results`; a ``.json`` file is one record, a ``.jsonl`` file one per line."""
    return [record for file in find_results(paths)
            for record in (read_jsonl(file) if file.suffix == ".jsonl" else [read_json(file)])]


def _mean(values: list[float | None]) -> float | None:
    return None if not values or any(v is None for v in values) else sum(values) / len(values)


def aggregate(records: list[dict], metric: str) -> dict[tuple[str, str], float]:
    """``(method, task) -> accuracy in percent``: the mean over seeds, the latest record per seed."""
    key = METRICS[metric]
    latest: dict[tuple[str, str], dict] = {}
    for r in records:
        task = canonical_name(r["task"])
        latest.setdefault((r["method"], task), {})[r.get("seed")] = r[key]
    return {mt: 100 * sum(v.values()) / len(v) for mt, v in latest.items()}


def seed_values(records: list[dict], metric: str) -> dict[tuple[str, str], dict]:
    """``(method, task) -> {seed: accuracy in percent}``, the latest record per seed."""
    out: dict[tuple[str, str], dict] = {}
    for r in records:
        out.setdefault((r["method"], canonical_name(r["task"])), {})[r.get("seed")] = 100 * r[METRICS[metric]]
    return out


def _spread(per_seed: dict, method: str, parts: list[list[str]]) -> float | None:
    """Standard deviation over seeds of the mean over ``parts`` of each part's mean over its tasks, taken over
    the seeds that have every task (``None`` below two such seeds)."""
    seeds = None
    for task in (t for tasks in parts for t in tasks):
        have = set(per_seed.get((method, task), {}))
        seeds = have if seeds is None else seeds & have
    if not seeds or len(seeds) < 2:
        return None
    return statistics.stdev(statistics.fmean(statistics.fmean(per_seed[method, t][seed] for t in tasks)
                                             for tasks in parts) for seed in seeds)


def _params(records: list[dict], method: str) -> str:
    counts = sorted({r["trainable_params"] for r in records if r["method"] == method and r.get("trainable_params")})
    if not counts:
        return ""
    return f"{counts[0]:,}" if len(counts) == 1 else f"{counts[0]:,}–{counts[-1]:,}"


def chance(task_rows: list[str]) -> float:
    """Chance top-1 in percent: 100 / classes, averaged over ``task_rows`` (registry names)."""
    return statistics.fmean(100 / TASKS[t].num_classes for t in task_rows)


def suite_of(records: list[dict]) -> str:
    tasks = {canonical_name(r["task"]) for r in records}
    unknown = sorted(t for t in tasks if t not in TASKS)
    if unknown:
        raise ValueError(f"results name tasks outside the registry: {unknown}")
    suites = {TASKS[t].suite for t in tasks}
    if len(suites) != 1:
        raise ValueError(f"results mix task suites {sorted(suites)}; report them separately")
    return suites.pop()


def build_table(records: list[dict], metric: str = "final") -> Table:
    if not records:
        raise ValueError("no result records to report")
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {list(METRICS)}, got {metric!r}")
    suite = suite_of(records)
    acc = aggregate(records, metric)
    methods = list(dict.fromkeys(r["method"] for r in records))
    rows: list[Row] = []
    group_means: dict[str, dict[str, float | None]] = {m: {} for m in methods}
    for group, tasks in groups(suite).items():
        for task in tasks:
            rows.append(Row("task", group, task, {m: acc.get((m, task)) for m in methods}))
        means = {m: _mean([acc.get((m, t)) for t in tasks]) for m in methods}
        for m in methods:
            group_means[m][group] = means[m]
        rows.append(Row("group_mean", group, f"{group} mean", means))
    n_tasks, n_groups = len(SUITES[suite]), len(groups(suite))
    rows.append(Row("mean_tasks", "", f"mean of the {n_tasks} tasks",
                    {m: _mean([acc.get((m, t)) for t in SUITES[suite]]) for m in methods}))
    rows.append(Row("mean_groups", "", f"mean of the {n_groups} group means",
                    {m: _mean(list(group_means[m].values())) for m in methods}))
    missing = {m: [t for t in SUITES[suite] if (m, t) not in acc] for m in methods}
    per_seed, suite_groups = seed_values(records, metric), groups(suite)
    for row in rows:  # mean ± std over seeds: the spread of the row's value computed seed by seed
        parts = {"task": [[row.label]], "group_mean": [suite_groups.get(row.group, [])],
                 "mean_tasks": [SUITES[suite]], "mean_groups": list(suite_groups.values())}[row.kind]
        row.spread = {m: _spread(per_seed, m, parts) if row.values[m] is not None else None for m in methods}
    params = {m: _params(records, m) for m in methods}
    return Table(suite, metric, methods, rows, {m: ts for m, ts in missing.items() if ts},
                 {m: v for m, v in params.items() if v})


def row_tasks(table: Table, row: Row) -> list[str]:
    """The registry tasks a row averages (one for a task row)."""
    suite_groups = groups(table.suite)
    return {"task": [row.label], "group_mean": suite_groups.get(row.group, []),
            "mean_tasks": SUITES[table.suite]}.get(row.kind) or [t for ts in suite_groups.values() for t in ts]


def _fmt(value: float | None, spread: float | None = None) -> str:
    return "–" if value is None else f"{value:.1f}" + ("" if spread is None else f" ± {spread:.1f}")


def to_markdown(table: Table) -> str:
    lines = [f"**{table.suite} top-1 accuracy (%), {METRIC_TITLES[table.metric]}**", "",
             "| group | task | " + " | ".join(table.methods) + " |",
             "|:--|:--|" + "--:|" * len(table.methods)]
    for row in table.rows:
        label = row.label if row.kind == "task" else f"**{row.label}**"
        lines.append(f"| {row.group} | {label} | "
                     + " | ".join(_fmt(row.values[m], row.spread.get(m)) for m in table.methods) + " |")
    if table.params:
        cells = " | ".join(table.params.get(m, "–") for m in table.methods)
        lines.append(f"|  | trainable parameters | {cells} |")
    if any(v is not None for row in table.rows for v in row.spread.values()):
        lines.append("\n± : standard deviation over seeds (of each seed's value of the row)")
    tasks = [row.label for row in table.rows if row.kind == "task"]
    lines.append("\nchance (100 / classes): " + ", ".join(f"{t} {chance([t]):.1f}" for t in tasks)
                 + f"; mean of the tasks {chance(tasks):.1f}")
    for method, tasks in table.missing.items():
        lines.append(f"\n{method}: no result for {', '.join(tasks)} (means over them are left out)")
    return "\n".join(lines) + "\n"


def to_csv(tables: list[Table]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    methods = list(dict.fromkeys(m for t in tables for m in t.methods))
    writer.writerow(["suite", "metric", "kind", "group", "task", *methods])
    for table in tables:
        for row in table.rows:
            cells = ["" if row.values.get(m) is None else f"{row.values[m]:.4f}" for m in methods]
            writer.writerow([table.suite, table.metric, row.kind, row.group, row.label, *cells])
    return out.getvalue()


def plot(tables: list[Table], path: str | os.PathLike) -> Path:
    """Grouped bars, one panel per metric: every task, group mean and mean, one bar per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    n_rows = len(tables[0].rows)
    fig, axes = plt.subplots(len(tables), 1, figsize=(max(8.0, 0.55 * n_rows + 2), 3.8 * len(tables)), squeeze=False)
    for ax, table in zip(axes[:, 0], tables):
        width = 0.8 / max(len(table.methods), 1)
        for i, method in enumerate(table.methods):
            xs = [j + (i - (len(table.methods) - 1) / 2) * width for j in range(n_rows)]
            ys = [row.values[method] or 0.0 for row in table.rows]
            errors = [row.spread.get(method) or 0.0 for row in table.rows]
            label = method + (f" ({table.params[method]} trainable)" if method in table.params else "")
            ax.bar(xs, ys, width, yerr=errors if any(errors) else None, capsize=2, label=label)
        for j, row in enumerate(table.rows):  # chance: 100 / classes of the row's task(s)
            ax.hlines(chance(row_tasks(table, row)), j - 0.45, j + 0.45, colors="k", linestyles=":", lw=1,
                      label="chance" if j == 0 else None)
        ax.set_xticks(range(n_rows), [r.label for r in table.rows], rotation=60, ha="right", fontsize=8)
        for tick, row in zip(ax.get_xticklabels(), table.rows):
            tick.set_fontweight("normal" if row.kind == "task" else "bold")
        ax.set_ylabel("top-1 (%), mean ± std over seeds")
        ax.set_ylim(0, 100)
        ax.set_title(f"{table.suite}: {METRIC_TITLES[table.metric]}", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    finally:
        plt.close(fig)


def report(paths: list[str | os.PathLike], out_dir: str | os.PathLike | None = None,
           metrics: tuple[str, ...] = ("final", "best")) -> tuple[str, list[Table]]:
    """Markdown of the tables; with ``out_dir`` also ``vtab_report.{md,csv,png}`` there."""
    records = load_records(paths)
    tables = [build_table(records, m) for m in metrics]
    markdown = "\n".join(to_markdown(t) for t in tables)
    if out_dir is not None:
        out_dir = Path(out_dir)
        write_text_atomic(out_dir / "vtab_report.md", markdown)
        write_text_atomic(out_dir / "vtab_report.csv", to_csv(tables))
        plot(tables, out_dir / "vtab_report.png")
    return markdown, tables


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Print the VTAB table of one or more runs; write CSV and PNG.")
    parser.add_argument("paths", nargs="+", help="results.jsonl / result.json files, sweep or single-run folders, "
                                                 "or folders holding them")
    parser.add_argument("--metric", choices=["final", "best", "both"], default="both")
    parser.add_argument("--out", help="folder for vtab_report.{md,csv,png} (default: the first path's folder)")
    args = parser.parse_args(argv)
    first = Path(args.paths[0])
    out = Path(args.out) if args.out else (first if first.is_dir() else first.parent)
    metrics = ("final", "best") if args.metric == "both" else (args.metric,)
    try:
        markdown, _ = report(args.paths, out, metrics)
    except (ValueError, OSError) as err:  # bad or missing result files: the message names them
        print(f"vtab_report: error: {err}", file=sys.stderr)
        return 2
    print(markdown)
    print(f"wrote {out / 'vtab_report.md'}, {out / 'vtab_report.csv'}, {out / 'vtab_report.png'}")
    return 0
