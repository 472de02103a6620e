"""Run one config over many tasks, one ``train_vtab.py fit`` process per task, resumably.

Run folder layout::

    <run dir>/sweep.json              the config's path, text and hash, and the method name
    <run dir>/results.jsonl           one JSON line per finished task (appended atomically)
    <run dir>/<task>/result.json      the task's record, written by ``fit`` after its test
    <run dir>/<task>/checkpoints/last.ckpt, adapter.safetensors, lightning_logs/...

Running the same sweep again skips tasks already in ``results.jsonl``, adds the record of a task
that finished but was not yet appended (the sweep died in between), and resumes an unfinished
task from its ``last.ckpt``. Each task runs in its own process, so DDP (``--trainer.devices N``)
works per task and a crash in one task does not take the finished ones with it.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from .results import RESULTS_FILE, append_jsonl_atomic, read_json, read_jsonl, write_json_atomic


@dataclass
class SweepSummary:
    run_dir: Path
    finished: list[str] = field(default_factory=list)  # trained (or recovered) in this call
    skipped: list[str] = field(default_factory=list)   # already in results.jsonl
    failed: dict[str, int] = field(default_factory=dict)  # task -> exit code

    @property
    def ok(self) -> bool:
        return not self.failed


def _check_run_dir(run_dir: Path, config: Path, name: str) -> None:
    """The run folder belongs to one config: resuming it with another would mix methods in one results file."""
    text = config.read_text()
    meta = {"config": str(config), "config_sha256": hashlib.sha256(text.encode()).hexdigest(), "name": name}
    path = run_dir / "sweep.json"
    if path.is_file():
        old = json.loads(path.read_text())
        if (old.get("config_sha256"), old.get("name")) != (meta["config_sha256"], meta["name"]):
            raise ValueError(f"{run_dir} holds a sweep of {old.get('config')} (name {old.get('name')!r}); "
                             f"{config} (name {name!r}) differs: use another --run-dir")
        return
    write_json_atomic(path, {**meta, "config_text": text})


def task_command(config: Path, task: str, task_dir: Path, name: str, extra_args: list[str],
                 python: str = sys.executable) -> list[str]:
    cmd = [python, "-m", "liera_vision.vtab.cli", "fit", "--config", str(config), "--data.task", task,
           "--trainer.default_root_dir", str(task_dir), "--run_name", name, *extra_args]
    last = task_dir / "checkpoints" / "last.ckpt"
    if last.is_file():
        cmd += ["--ckpt_path", str(last)]
    return cmd


def _run(cmd: list[str], in_process: bool) -> int:
    if not in_process:
        return subprocess.call(cmd)
    from .cli import main

    try:
        main(cmd[3:])  # the arguments after "python -m liera_vision.vtab.cli"
    except SystemExit as exit_:
        if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # Lightning's graceful Ctrl+C shutdown: stop the sweep
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt from None
        return exit_.code if isinstance(exit_.code, int) else 1
    except Exception:
        traceback.print_exc()
        return 1
    return 0


def run_sweep(config: str | os.PathLike, run_dir: str | os.PathLike, tasks: list[str], extra_args: list[str] = (),
              name: str | None = None, echo=print, python: str = sys.executable,
              in_process: bool = False) -> SweepSummary:
    """Train ``config`` on each of ``tasks`` (canonical names) into ``run_dir``; see the module docstring.

    ``in_process`` runs the tasks in this process instead of one process each: it saves the start-up
    of Python, torch and Lightning per task (seconds, which matter for small demos) but gives up
    the isolation and cannot launch DDP.
    """
    config, run_dir = Path(config), Path(run_dir)
    if not config.is_file():
        raise FileNotFoundError(f"config {config} does not exist")
    name = name or run_dir.name
    run_dir.mkdir(parents=True, exist_ok=True)
    _check_run_dir(run_dir, config, name)
    results = run_dir / RESULTS_FILE
    summary = SweepSummary(run_dir)
    done = {r["task"] for r in read_jsonl(results)} if results.is_file() else set()
    for i, task in enumerate(tasks, start=1):
        tag = f"[{i}/{len(tasks)}] {name} / {task}"
        if task in done:
            echo(f"{tag}: finished earlier, skipped")
            summary.skipped.append(task)
            continue
        task_dir = run_dir / task
        if not (task_dir / "result.json").is_file():
            cmd = task_command(config, task, task_dir, name, list(extra_args), python)
            echo(f"{tag}: " + ("resuming from " + cmd[-1] if "--ckpt_path" in cmd else "training"))
            code = _run(cmd, in_process)
            if code != 0:
                echo(f"{tag}: FAILED (exit code {code}); its checkpoints stay in {task_dir} for a later resume")
                summary.failed[task] = code
                continue
        record = read_json(task_dir / "result.json")
        append_jsonl_atomic(results, record)
        summary.finished.append(task)
        echo(f"{tag}: top-1 {100 * record['acc_final']:.2f}% final, {100 * record['acc_best']:.2f}% best "
             f"-> {results}")
    return summary


def main(argv: list[str] | None = None) -> int:
    import argparse

    from .report import report
    from .tasks import SUITES, select_tasks

    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(
        description="Train one config on many VTAB-1k tasks, resumably; arguments after -- go to every "
                    "train_vtab.py fit (e.g. -- --data.root data/vtab-1k --model.checkpoint w.pt --trainer.devices 2)")
    parser.add_argument("--config", required=True, type=Path, help="a configs/vtab/*.yaml file")
    parser.add_argument("--run-dir", type=Path, help="default: runs/vtab/<config name>")
    parser.add_argument("--tasks", default="all",
                        help="'all', a group (natural, specialized, structured) or comma-separated task names")
    parser.add_argument("--suite", default="vtab-1k", choices=list(SUITES))
    parser.add_argument("--name", help="method label in the results (default: the run folder's name)")
    args = parser.parse_args(argv)
    run_dir = args.run_dir or Path("runs/vtab") / args.config.stem
    try:
        tasks = select_tasks(args.tasks, args.suite)
        summary = run_sweep(args.config, run_dir, tasks, extra, name=args.name, echo=lambda s: print(s, flush=True))
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    if (run_dir / RESULTS_FILE).is_file():
        markdown, _ = report([run_dir], out_dir=run_dir)
        print("\n" + markdown)
    if not summary.ok:
        print(f"failed tasks (exit codes): {summary.failed}; run the same command again to resume them")
        return 1
    return 0
