"""VTAB fixtures: a tiny NOAH-format folder (generated, 32 px, a handful of images) and a CLI runner."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from liera_vision.vtab import synthetic

ROOT = Path(__file__).resolve().parents[2]
TINY_SIZES = {"train800": 8, "val200": 4, "test": 7}  # odd test size: DDP must count each image once
TINY_TASKS = ["synth_position", "synth_orientation"]
# the overrides that shrink any configs/vtab config to seconds on CPU
TINY_ARGS = ["--model.arch", "atto", "--data.image_size", "32", "--data.batch_size", "4", "--data.num_workers", "0",
             "--trainer.max_epochs", "2", "--trainer.check_val_every_n_epoch", "1", "--model.warmup_epochs", "1",
             "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


@pytest.fixture(scope="session")
def tiny_vtab(tmp_path_factory) -> Path:
    """Two synthetic tasks in NOAH layout: 8 train800, 4 val200, 12 train800val200 and 7 test images of 32 px."""
    return synthetic.generate(tmp_path_factory.mktemp("vtab"), TINY_TASKS, image_size=32, sizes=TINY_SIZES)


# set by a launcher (torchrun, SLURM, Lightning): inherited, they make Lightning wait for ranks nobody starts
DISTRIBUTED_VARIABLES = ("LOCAL_RANK", "RANK", "GLOBAL_RANK", "NODE_RANK", "GROUP_RANK", "WORLD_SIZE",
                         "LOCAL_WORLD_SIZE", "MASTER_PORT", "TORCHELASTIC_RUN_ID", "SLURM_NTASKS", "SLURM_JOB_ID")


def cli_env(**extra) -> dict:
    # gloo binds to loopback: on a machine whose hostname resolves to an unreachable address it would hang
    env = {k: v for k, v in os.environ.items() if k not in DISTRIBUTED_VARIABLES}
    env.update(PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               PYTHONFAULTHANDLER="1", GLOO_SOCKET_IFNAME="lo", MASTER_ADDR="127.0.0.1")
    env.update(extra)
    return env


def run_watched(cmd: list, timeout: float = 240, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``cmd`` (and whatever it spawns) in its own session, stdin closed, output captured.

    A hang fails the test with every process's Python stack: the session gets SIGABRT, which faulthandler
    (``PYTHONFAULTHANDLER=1``) turns into a traceback of all threads, then SIGKILL.
    """
    proc = subprocess.Popen(list(map(str, cmd)), cwd=ROOT, env=env or cli_env(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGABRT)
        try:
            out, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:  # SIGABRT ignored: no stacks, still the output so far
            _kill_session(proc.pid)
            out, err = proc.communicate()
        hung = True
    else:
        hung = False
    _kill_session(proc.pid)  # what is left of the session: children of a killed or hung parent
    if hung:
        pytest.fail(f"{' '.join(map(str, cmd[1:3]))} still running after {timeout:.0f} s; stacks and output:\n"
                    f"--- stderr ---\n{err[-12000:]}\n--- stdout ---\n{out[-3000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _kill_session(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def run_tool(script: str, *args, timeout: float = 240) -> subprocess.CompletedProcess:
    """Run ``tools/<script>`` with this interpreter; output captured, a hang fails instead of blocking CI."""
    return run_watched([sys.executable, ROOT / "tools" / script, *args], timeout=timeout)
