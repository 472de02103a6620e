"""Run one configuration over many tasks, one ``train_vtab.py fit`` process per task, resumably.

Run folder layout::

    <run dir>/sweep.json              the settings the folder was run with (resolved, see below), the config files
    <run dir>/results.jsonl           one JSON line per finished task (appended atomically)
    <run dir>/<task>/result.json      the task's record, written by ``fit`` after its test
    <run dir>/<task>/checkpoints/last.ckpt, adapter.safetensors, lightning_logs/...

Running the same sweep again skips tasks already in ``results.jsonl``, adds the record of a task
that finished but was not yet appended (the sweep died in between), and resumes an unfinished
task from its ``last.ckpt``. Each task runs in its own process, so DDP (``--trainer.devices N``)
works per task and a crash in one task does not take the finished ones with it.

**A run folder's identity** is the configuration the tasks resolve to — the config files in order
*and* the overrides after ``--``, resolved by LightningCLI itself (``fit --print_config``) — minus
the run-only settings of :data:`RUN_ONLY` (where and how it runs, logs and checkpoints; the task,
folder and checkpoint the sweep sets per task). The first call records it in ``sweep.json``; a later
call whose settings differ — for finished and unfinished tasks alike — is refused with a
``ValueError`` that lists each differing setting (old and new value). Use another ``--run-dir`` for
other settings.

The parent process stays light (no torch, Lightning, timm): it resolves the settings in a child
process (``in_process=False``) and reads result files.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .results import RESULT_FILE, RESULTS_FILE, append_jsonl_atomic, read_json, read_jsonl, write_json_atomic

SWEEP_FILE = "sweep.json"
SWEEP_VERSION = 2
# Settings that do not change results, so a run folder may be continued with other values (dotted keys of
# the resolved configuration; a key covers everything below it). Everything else is the folder's identity.
RUN_ONLY = (
    "trainer.accelerator", "trainer.devices", "trainer.num_nodes", "trainer.strategy",  # where it runs
    "trainer.logger", "trainer.log_every_n_steps", "trainer.enable_progress_bar", "trainer.enable_model_summary",
    "trainer.enable_autolog_hparams", "trainer.profiler", "trainer.model_registry",     # what it reports
    "trainer.enable_checkpointing", "checkpoint", "weights_only",                       # checkpoint files
    "data.num_workers", "data.pin_memory", "data.eval_batch_size",                      # loader plumbing
    "data.task", "trainer.default_root_dir", "ckpt_path",                               # set per task by the sweep
)
# set by the sweep for each task; the same flags after -- would be overridden or would send every task to one place
PER_TASK_FLAGS = {"--data.task": "the sweep sets it per task: use --tasks",
                  "--trainer.default_root_dir": "the sweep sets it per task: use --run-dir",
                  "--ckpt_path": "the sweep resumes from <run dir>/<task>/checkpoints/last.ckpt itself",
                  "--run_name": "the sweep sets it: use --name"}


@dataclass
class SweepSummary:
    run_dir: Path
    finished: list[str] = field(default_factory=list)  # trained (or recovered) in this call
    skipped: list[str] = field(default_factory=list)   # already in results.jsonl
    failed: dict[str, int] = field(default_factory=dict)  # task -> exit code

    @property
    def ok(self) -> bool:
        return not self.failed


@dataclass
class TaskRun:
    """One task's ``train_vtab.py fit``: its arguments and the checkpoint it resumes from (``None``: fresh)."""

    task: str
    task_dir: Path
    args: list[str]  # the arguments of train_vtab.py (subcommand first)
    resume_from: Path | None

    def command(self, python: str = sys.executable) -> list[str]:
        return [python, "-m", "liera_vision.vtab.cli", *self.args]


def config_args(configs: Sequence[str | os.PathLike]) -> list[str]:
    return [arg for config in configs for arg in ("--config", str(config))]


def task_run(configs: Sequence[str | os.PathLike], task: str, task_dir: Path, name: str,
             extra_args: Sequence[str] = ()) -> TaskRun:
    """The ``fit`` of ``task`` into ``task_dir``; resumes from its ``last.ckpt`` when there is one."""
    last = task_dir / "checkpoints" / "last.ckpt"
    resume = last if last.is_file() else None
    args = ["fit", *config_args(configs), *extra_args, "--data.task", task, "--trainer.default_root_dir",
            str(task_dir), "--run_name", name, *(["--ckpt_path", str(resume)] if resume else [])]
    return TaskRun(task, task_dir, args, resume)


def check_extra_args(extra_args: Sequence[str]) -> None:
    """``ValueError`` for a flag the sweep sets per task (:data:`PER_TASK_FLAGS`)."""
    for arg in extra_args:
        flag = arg.split("=", 1)[0]
        if flag in PER_TASK_FLAGS:
            raise ValueError(f"{flag} after -- is not allowed: {PER_TASK_FLAGS[flag]}")


@contextlib.contextmanager
def _own_argv():
    """``sys.argv`` without this process's arguments while the CLI runs in it: the CLI's arguments are passed
    explicitly (LightningCLI warns when it sees both)."""
    saved = sys.argv
    sys.argv = saved[:1]
    try:
        yield
    finally:
        sys.argv = saved


# --- the run folder's identity -----------------------------------------------------------------------
def _flatten(value, prefix: str = "") -> dict:
    if isinstance(value, dict) and value:
        out = {}
        for key, item in value.items():
            out |= _flatten(item, f"{prefix}.{key}" if prefix else str(key))
        return out
    return {prefix: value}


def is_run_only(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in RUN_ONLY)


def resolve_config(configs: Sequence[str | os.PathLike], extra_args: Sequence[str] = (), name: str | None = None,
                   python: str = sys.executable, in_process: bool = False) -> dict:
    """The whole configuration ``train_vtab.py fit`` resolves ``configs`` (in order) + ``extra_args`` to, flattened
    to dotted keys (``model.adapter.alpha``). LightningCLI resolves it (``fit … --print_config``): in a child
    process, or in this one with ``in_process``. ``ValueError`` with LightningCLI's message when the arguments
    do not parse."""
    import yaml

    args = ["fit", *config_args(configs), *(["--run_name", name] if name else []), *extra_args, "--print_config"]
    if in_process:
        from .cli import main

        out, err = io.StringIO(), io.StringIO()
        code = 0
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), _own_argv():
            try:
                main(args)
            except SystemExit as exit_:  # --print_config exits 0; a user error exits with its message
                code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
                if isinstance(exit_.code, str):
                    err.write(exit_.code + "\n")
        stdout, stderr = out.getvalue(), err.getvalue()
    else:
        proc = subprocess.run([python, "-m", "liera_vision.vtab.cli", *args], capture_output=True, text=True,
                              stdin=subprocess.DEVNULL)
        code, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
    if code != 0:
        lines = [line.strip() for line in stderr.splitlines() if line.strip()]
        reason = next((line for line in reversed(lines) if line.startswith("error:")), lines[-1] if lines else "")
        raise ValueError("the sweep's arguments do not resolve to a train_vtab.py configuration: "
                         f"{reason.removeprefix('error:').strip() or f'exit status {code}'}")
    return dict(sorted(_flatten(yaml.safe_load(stdout)).items()))


def resolve_settings(configs: Sequence[str | os.PathLike], extra_args: Sequence[str] = (), name: str | None = None,
                     python: str = sys.executable, in_process: bool = False) -> dict:
    """:func:`resolve_config` without the :data:`RUN_ONLY` settings: what a run folder's identity compares."""
    resolved = resolve_config(configs, extra_args, name, python=python, in_process=in_process)
    return {key: value for key, value in resolved.items() if not is_run_only(key)}


def _digest(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def differences(old: dict, new: dict, limit: int = 12) -> list[str]:
    """``key: old -> new`` for every setting that differs (a setting one side lacks shows as ``(absent)``)."""
    missing = object()
    rows = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, missing), new.get(key, missing)
        if a != b:
            rows.append(f"{key}: {'(absent)' if a is missing else json.dumps(a)} -> "
                        f"{'(absent)' if b is missing else json.dumps(b)}")
    return rows[:limit] + ([f"... and {len(rows) - limit} more"] if len(rows) > limit else [])


def check_run_dir(run_dir: Path, configs: Sequence[Path], settings: dict) -> None:
    """Record the folder's settings in ``sweep.json``, or refuse settings that differ from the recorded ones."""
    path = run_dir / SWEEP_FILE
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path}: not valid JSON ({err}); it records what the run folder was run with") from err
        if not isinstance(old, dict) or not isinstance(old.get("settings"), dict):
            raise ValueError(f"{path} does not record the resolved settings (written by an older liera-vision, "
                             "which checked the config file only): the settings of the runs in it cannot be "
                             "compared with these. Continue in another --run-dir, or, if you are sure the settings "
                             "are the same, delete that sweep.json")
        diff = differences(old["settings"], settings)
        if diff:
            raise ValueError(f"{run_dir} was run with other settings ({'; '.join(diff)}); a run folder holds one "
                             "configuration (run-only settings such as trainer.devices or data.num_workers may "
                             "differ): use another --run-dir")
        return
    write_json_atomic(path, {"version": SWEEP_VERSION, "configs": [str(c) for c in configs],
                             "config_texts": [Path(c).read_text() for c in configs], "run_only": list(RUN_ONLY),
                             "settings": settings, "settings_sha256": _digest(settings)})


# --- running -------------------------------------------------------------------------------------------
def _run(run: TaskRun, in_process: bool, python: str) -> int:
    if not in_process:
        return subprocess.call(run.command(python))
    from .cli import main

    try:
        with _own_argv():
            main(run.args)
    except SystemExit as exit_:
        if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # Lightning's graceful Ctrl+C shutdown: stop the sweep
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt from None
        return exit_.code if isinstance(exit_.code, int) else 1
    except Exception:
        traceback.print_exc()
        return 1
    return 0


def run_sweep(config: str | os.PathLike | Sequence[str | os.PathLike], run_dir: str | os.PathLike, tasks: list[str],
              extra_args: Sequence[str] = (), name: str | None = None, echo=print, python: str = sys.executable,
              in_process: bool = False) -> SweepSummary:
    """Train ``config`` (one file, or several composed in order) on each of ``tasks`` (canonical names) into
    ``run_dir``; see the module docstring.

    ``in_process`` runs the tasks (and the settings' resolution) in this process instead of one process
    each: it saves the start-up of Python, torch and Lightning per task (seconds, which matter for small
    demos) but gives up the isolation and cannot launch DDP.

    Errors (``ValueError`` / ``FileNotFoundError``, before any task runs): a missing config file, a per-task
    flag in ``extra_args``, arguments that do not parse, settings that differ from the run folder's.
    """
    configs = [Path(config)] if isinstance(config, (str, os.PathLike)) else [Path(c) for c in config]
    run_dir = Path(run_dir)
    if not configs:
        raise ValueError("no config file given")
    for path in configs:
        if not path.is_file():
            raise FileNotFoundError(f"config {path} does not exist")
    extra_args = list(extra_args)
    check_extra_args(extra_args)
    name = name or run_dir.name
    settings = resolve_settings(configs, extra_args, name, python=python, in_process=in_process)
    run_dir.mkdir(parents=True, exist_ok=True)
    check_run_dir(run_dir, configs, settings)
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
        if not (task_dir / RESULT_FILE).is_file():
            run = task_run(configs, task, task_dir, name, extra_args)
            echo(f"{tag}: " + (f"resuming from {run.resume_from}" if run.resume_from else "training"))
            code = _run(run, in_process, python)
            if code != 0:
                echo(f"{tag}: FAILED (exit code {code}); its checkpoints stay in {task_dir} for a later resume")
                summary.failed[task] = code
                continue
        record = read_json(task_dir / RESULT_FILE)
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
        description="Train one configuration on many VTAB-1k tasks, resumably; arguments after -- go to every "
                    "train_vtab.py fit (e.g. -- --data.root data/vtab-1k --model.checkpoint w.pt --trainer.devices 2)")
    parser.add_argument("--config", required=True, type=Path, action="append",
                        help="a configs/vtab/*.yaml file; repeat to compose (later files override earlier ones): "
                             "--config configs/vtab/protocol/vtab1k.yaml --config configs/vtab/liera_r8.yaml")
    parser.add_argument("--run-dir", type=Path, help="default: runs/vtab/<name of the last config file>")
    parser.add_argument("--tasks", default="all",
                        help="'all', a group (natural, specialized, structured) or comma-separated task names")
    parser.add_argument("--suite", default="vtab-1k", choices=list(SUITES))
    parser.add_argument("--name", help="method label in the results (default: the run folder's name)")
    args = parser.parse_args(argv)
    run_dir = args.run_dir or Path("runs/vtab") / args.config[-1].stem
    try:
        tasks = select_tasks(args.tasks, args.suite)
        summary = run_sweep(args.config, run_dir, tasks, extra, name=args.name, echo=lambda s: print(s, flush=True))
        markdown = report([run_dir], out_dir=run_dir)[0] if (run_dir / RESULTS_FILE).is_file() else None
    except (ValueError, OSError) as err:  # a user error: one line, no traceback
        print(f"vtab_sweep: error: {err}", file=sys.stderr)
        return 2
    if markdown:
        print("\n" + markdown)
    if not summary.ok:
        print(f"failed tasks (exit codes): {summary.failed}; run the same command again to resume them")
        return 1
    return 0
