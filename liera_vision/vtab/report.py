"""The VTAB table: per task, per group, the mean of the tasks and the mean of the group means.

Reads the ``results.jsonl`` of one or more runs (one method each; the method name is the
records' ``method``), prints Markdown, writes a CSV and a PNG bar chart. Accuracies are shown
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
from dataclasses import dataclass
from pathlib import Path

from .results import RESULTS_FILE, read_jsonl, write_text_atomic
from .tasks import ALIASES, SUITES, TASKS, groups

METRICS = {"final": "acc_final", "best": "acc_best"}
METRIC_TITLES = {"final": "final (after the last epoch)", "best": "best over the periodic evaluations"}


@dataclass
class Row:
    kind: str   # task | group_mean | mean_tasks | mean_groups
    group: str
    label: str
    values: dict[str, float | None]  # method -> accuracy in percent (None: missing)


@dataclass
class Table:
    suite: str
    metric: str
    methods: list[str]
    rows: list[Row]
    missing: dict[str, list[str]]  # method -> tasks without a result


def find_results(paths: list[str | os.PathLike]) -> list[Path]:
    """``results.jsonl`` files from files, run folders, or folders of run folders."""
    found = []
    for path in map(Path, paths):
        if path.is_file():
            found.append(path)
        elif (path / RESULTS_FILE).is_file():
            found.append(path / RESULTS_FILE)
        elif path.is_dir() and sorted(path.glob(f"*/{RESULTS_FILE}")):
            found += sorted(path.glob(f"*/{RESULTS_FILE}"))
        else:
            raise FileNotFoundError(f"{path}: no {RESULTS_FILE} there (expected a results file, a run folder "
                                    "or a folder of run folders)")
    return found


def load_records(paths: list[str | os.PathLike]) -> list[dict]:
    return [record for file in find_results(paths) for record in read_jsonl(file)]


def _mean(values: list[float | None]) -> float | None:
    return None if not values or any(v is None for v in values) else sum(values) / len(values)


def aggregate(records: list[dict], metric: str) -> dict[tuple[str, str], float]:
    """``(method, task) -> accuracy in percent``: the mean over seeds, the latest record per seed."""
    key = METRICS[metric]
    latest: dict[tuple[str, str], dict] = {}
    for r in records:
        task = ALIASES.get(r["task"], r["task"])
        latest.setdefault((r["method"], task), {})[r.get("seed")] = r[key]
    return {mt: 100 * sum(v.values()) / len(v) for mt, v in latest.items()}


def suite_of(records: list[dict]) -> str:
    tasks = {ALIASES.get(r["task"], r["task"]) for r in records}
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
    return Table(suite, metric, methods, rows, {m: ts for m, ts in missing.items() if ts})


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def to_markdown(table: Table) -> str:
    lines = [f"**{table.suite} top-1 accuracy (%), {METRIC_TITLES[table.metric]}**", "",
             "| group | task | " + " | ".join(table.methods) + " |",
             "|:--|:--|" + "--:|" * len(table.methods)]
    for row in table.rows:
        label = row.label if row.kind == "task" else f"**{row.label}**"
        lines.append(f"| {row.group} | {label} | " + " | ".join(_fmt(row.values[m]) for m in table.methods) + " |")
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
            ax.bar(xs, ys, width, label=method)
        ax.set_xticks(range(n_rows), [r.label for r in table.rows], rotation=60, ha="right", fontsize=8)
        for tick, row in zip(ax.get_xticklabels(), table.rows):
            tick.set_fontweight("normal" if row.kind == "task" else "bold")
        ax.set_ylabel("top-1 (%)")
        ax.set_ylim(0, 100)
        ax.set_title(f"{table.suite}: {METRIC_TITLES[table.metric]}", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
    return path


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Print the VTAB table of one or more runs; write CSV and PNG.")
    parser.add_argument("paths", nargs="+", help="results.jsonl files, run folders, or folders of run folders")
    parser.add_argument("--metric", choices=["final", "best", "both"], default="both")
    parser.add_argument("--out", help="folder for vtab_report.{md,csv,png} (default: the first path's folder)")
    args = parser.parse_args(argv)
    first = Path(args.paths[0])
    out = Path(args.out) if args.out else (first if first.is_dir() else first.parent)
    metrics = ("final", "best") if args.metric == "both" else (args.metric,)
    markdown, _ = report(args.paths, out, metrics)
    print(markdown)
    print(f"wrote {out / 'vtab_report.md'}, {out / 'vtab_report.csv'}, {out / 'vtab_report.png'}")
