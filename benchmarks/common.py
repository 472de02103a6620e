"""What the benchmark scripts share: set-up and environment record, our adapter methods and PEFT's
baselines on the same layers (``plan_peft``, ``build_peft_model``), interleaved timing,
the memory of one step, and atomically written result files.

Timing. Variants run round-robin inside one process (the start of the order rotates every
round), after warm-up steps; ratios are taken within a round, so a neighbour's load that comes
and goes slows the variants of that round alike, and the median over rounds is reported.

Memory. On CUDA: ``torch.cuda.max_memory_allocated`` over the step. On CPU torch keeps no peak
statistics, so the step runs once under ``torch.profiler`` with ``profile_memory=True``: every
allocation and free of the c10 CPU allocator is an event carrying its signed size, and the
running sum of the events, started from the bytes alive before the step (parameters, buffers,
optimizer state, the batch), is the live tensor memory at each moment; its maximum is the peak.
Left out: oneDNN scratch buffers (allocated outside the c10 allocator) and allocator overhead.
RSS would include them, but also the interpreter, the libraries and whatever the allocator has
not returned yet. ``tests/benchmarks`` checks the method byte for byte on cases whose answer is
known. The same step also records, through ``torch.autograd.graph.saved_tensors_hooks``, the
tensors autograd keeps for backward (unique storages not alive before the step): the
activation memory, which explains most of the peak.
"""

from __future__ import annotations

import copy
import csv
import datetime
import io
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from torch import nn

from liera_vision.fileio import atomic_write

RESULTS = Path(__file__).resolve().parent / "results"
# our adapter methods by benchmark name -> AdapterConfig fields (the method axes; alpha is the caller's choice)
ADAPTER_METHODS = {
    "lora": dict(composition="additive"),
    "liera-taylor": dict(composition="taylor"),
    "liera-exp": dict(composition="exp"),
    "dora+liera": dict(composition="taylor", post="dora"),
    "pissa+liera": dict(composition="taylor", init="pissa"),
}
# Hugging Face PEFT's methods the benchmarks compare against (peft_config builds them)
PEFT_METHODS = ("peft-lora", "peft-loha", "peft-lokr", "peft-hira")
MB = 2**20
# wide enough for the result tables when the output is a file or a pipe (rich assumes 80 columns)
console = Console(width=None if sys.stdout.isatty() else 200)


# --- set-up and environment -----------------------------------------------------------------
def configure(device: str, threads: int, seed: int = 0) -> torch.device:
    """Fix the thread count and seed; ``ValueError`` naming the argument when it cannot be honoured."""
    if threads < 1:
        raise ValueError(f"--threads must be a positive integer, got {threads}")
    torch.set_num_threads(threads)
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: CUDA is not available in this torch build / on this machine")
        torch.backends.cudnn.benchmark = True
    elif dev.type != "cpu":
        raise ValueError(f"--device must be 'cpu' or 'cuda[:N]', got {device!r}")
    torch.manual_seed(seed)
    return dev


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_commit() -> str:
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True,
                               check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+uncommitted changes" if dirty else "")


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def threads_label() -> str:
    n = torch.get_num_threads()
    return f"{n} thread" + ("" if n == 1 else "s")


def environment(device: torch.device, module: str, argv: list[str]) -> dict:
    """The machine and software a result was measured on (stored beside every result)."""
    env = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python -m", module, *argv]),
        "git_commit": _git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1_5_15": [round(v, 2) for v in os.getloadavg()],
        "device": str(device),
        "versions": {p: _version(p) for p in ("torch", "timm", "peft", "numpy")},
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


# --- PEFT baselines -------------------------------------------------------------------------
def peft_config(kind: str, rank: int, targets: list[str], modules_to_save: list[str] | None = None, *,
                scale: float = 1.0, **options):
    """PEFT's config for ``kind`` (one of :data:`PEFT_METHODS`) on exactly the modules ``targets``, at ``rank``.

    LoRA / LoHa / LoKr get ``alpha = scale · rank`` (default scale 1, as our additive LoRA); HiRA has no alpha
    (its update ``W ⊙ (B @ A)`` is LieRA-Taylor's with ``alpha / rank = 1``: its learning rate has to carry the
    ``1 / mean|W|`` our weight-derived scale supplies), so a ``scale`` other than 1 is refused for it. ``targets``
    becomes one regex of the exact names (a list would also match them as dotted suffixes). ``options``: further
    fields of PEFT's config (e.g. LoKr's ``decompose_factor``).
    """
    import peft

    exact = "|".join(re.escape(name) for name in targets)
    common = dict(r=rank, target_modules=exact, modules_to_save=modules_to_save, **options)
    if kind == "peft-lora":
        return peft.LoraConfig(lora_alpha=scale * rank, **common)
    if kind == "peft-loha":
        return peft.LoHaConfig(alpha=scale * rank, **common)
    if kind == "peft-lokr":
        return peft.LoKrConfig(alpha=scale * rank, **common)
    if kind == "peft-hira":
        if scale != 1:
            raise ValueError(f"peft-hira has no alpha: scale must be 1, got {scale} (tune its lr instead)")
        return peft.HiraConfig(**common)
    raise ValueError(f"unknown PEFT method {kind!r}; expected one of {PEFT_METHODS}")


@dataclass
class PeftOutcome:
    """Which target layers a PEFT method accepts, PEFT's own error text for each one it refuses, its warnings."""

    accepted: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def _holder(base: nn.Module, names: list[str]) -> tuple[nn.Module, list[str]]:
    """Copies of the layers ``names`` of ``base`` in a small module (as ``l0``, ``l1`` …), to probe / count cheaply."""
    holder = nn.Module()
    for i, name in enumerate(names):
        holder.add_module(f"l{i}", copy.deepcopy(base.get_submodule(name)))
    return holder, [f"l{i}" for i in range(len(names))]


def probe_peft(base: nn.Module, kind: str, rank: int, targets: list[str]) -> PeftOutcome:
    """Which of ``targets`` PEFT's ``kind`` accepts at ``rank``, one layer at a time (its error text for the others)."""
    import peft

    outcome = PeftOutcome()
    for name in targets:
        holder, (inner,) = _holder(base, [name])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                peft.inject_adapter_in_model(peft_config(kind, rank, [inner]), holder)
                outcome.accepted.append(name)
            except Exception as err:  # PEFT's own refusal, recorded verbatim
                outcome.refused[name] = f"{type(err).__name__}: {err}"
        outcome.warnings += [str(w.message) for w in caught if str(w.message) not in outcome.warnings]
    return outcome


def adapter_params(base: nn.Module, method: str, rank: int, targets: list[str], **options) -> int:
    """Trainable adapter parameters of ``method`` (one of ours in :data:`ADAPTER_METHODS`, or PEFT's with its
    config ``options``) on ``targets``."""
    holder, names = _holder(base, targets)
    if method in ADAPTER_METHODS:
        from liera_vision.core import AdapterConfig, apply_adapters

        config = AdapterConfig(rank=rank, alpha=float(rank), targets=[re.escape(n) for n in names],
                               **ADAPTER_METHODS[method])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # zero weights etc. do not change a count
            return apply_adapters(holder, config)[1].adapter_params
    import peft

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft.inject_adapter_in_model(peft_config(method, rank, names, **options), holder)
    return sum(p.numel() for p in holder.parameters() if p.requires_grad)


def matched_rank(base: nn.Module, method: str, targets: list[str], params: int, max_rank: int = 1024,
                 **options) -> tuple[int, int]:
    """The rank at which ``method`` on ``targets`` has the trainable adapter parameters closest to ``params``
    (the smaller rank on a tie), and that count. Counts grow with rank, so the search stops once a count passes
    twice the goal or 32 ranks brought nothing closer (PEFT's LoKr saturates: once ``r`` reaches half a Kronecker
    factor's size that factor is stored in full, so its count is bounded by the factor sizes).

    Raises:
        ValueError: ``method`` accepts no rank up to ``max_rank`` on these targets (PEFT's error attached).
    """
    best: tuple[int, int] | None = None
    error = None
    for rank in range(1, max_rank + 1):
        try:
            count = adapter_params(base, method, rank, targets, **options)
        except Exception as err:  # e.g. PEFT's LoRA refuses a rank its groups do not divide
            error = err
            continue
        if best is None or abs(count - params) < abs(best[1] - params):
            best = (rank, count)
        if count > 2 * params or rank - best[0] >= 32:
            break
    if best is None:
        raise ValueError(f"{method} accepts no rank up to {max_rank} on {targets}: {error}")
    return best


# PEFT config options a parameter match may also vary, the default first. LoKr with its default decomposition
# (decompose_factor=-1: factors near the square root of each dimension) saturates at a few thousand parameters
# on small layers; a fixed factor of 2 or 4 keeps a true Kronecker product and reaches larger budgets.
MATCH_OPTIONS: dict[str, list[dict]] = {"peft-lokr": [{}, {"decompose_factor": 2}, {"decompose_factor": 4}]}


def match_peft(base: nn.Module, kind: str, targets: list[str], params: int) -> tuple[int, int, dict]:
    """PEFT's ``kind`` at matched trainable adapter parameters on ``targets``: ``(rank, count, options)``, over
    the options of :data:`MATCH_OPTIONS` (the default kept unless another comes more than 20 % closer).

    Raises:
        ValueError: ``kind`` accepts no rank on these targets.
    """
    best = None
    for options in MATCH_OPTIONS.get(kind, [{}]):
        rank, count = matched_rank(base, kind, targets, params, **options)
        gap = abs(count - params) / params
        if best is None or gap < best[3] - 0.2:
            best = (rank, count, options, gap)
    return best[:3]


def _conv_kind(module: nn.Module) -> str:
    """``Conv2d 7x7 depthwise``, ``Conv2d 4x4``: how PEFT's refusals are grouped in notes."""
    k = "x".join(map(str, module.kernel_size))
    depthwise = module.groups > 1 and module.groups == module.in_channels
    return f"Conv2d {k}" + (" depthwise" if depthwise else "")


@dataclass
class PeftPlan:
    """Where ours and each PEFT method go and at which rank (:func:`plan_peft`).

    ``targets``: our adapters' layers (``paper``: all paper targets; ``common``: those every PEFT method
    accepts). ``budget``: LieRA-Taylor's adapter parameters on them (``common`` only). ``methods``: PEFT
    method -> ``{"rank", "layers", "options", "note"}``; ``skipped``: method -> why; ``record``: what PEFT
    accepted and refused, verbatim, for the result files.
    """

    targets: list[str]
    budget: int | None = None
    methods: dict[str, dict] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    record: dict = field(default_factory=dict)


def plan_peft(base: nn.Module, kinds: list[str], rank: int, paper: list[str], layers: str = "paper") -> PeftPlan:
    """PEFT's ``kinds`` beside ours on ``base``'s ``paper`` target layers.

    ``layers="paper"``: each PEFT method on the paper layers it accepts, at ``rank``. ``layers="common"``:
    everyone on the layers every method of ``kinds`` accepts (HiRA refuses grouped convs), each PEFT method at
    the rank matching LieRA-Taylor's adapter parameters there (:func:`match_peft`).

    Raises:
        ValueError: ``layers="common"`` and the methods share no accepted layer.
    """
    plan = PeftPlan(list(paper))
    try:
        import peft
    except ImportError:
        plan.skipped = dict.fromkeys(kinds, "peft not installed (pip install -e '.[peft]')")
        return plan
    probes = {kind: probe_peft(base, kind, rank, paper) for kind in kinds}
    plan.record = {kind: {"peft_version": peft.__version__, "accepted": o.accepted, "refused": o.refused,
                          "warnings": o.warnings} for kind, o in probes.items()}
    if layers == "common" and kinds:
        plan.targets = [t for t in paper if all(t in outcome.accepted for outcome in probes.values())]
        if not plan.targets:
            raise ValueError(f"layers='common': {', '.join(kinds)} share no accepted layer among the {len(paper)} "
                             "paper targets; drop one of them")
        plan.budget = adapter_params(base, "liera-taylor", rank, plan.targets)
        plan.record["common_layers"] = {"layers": plan.targets, "liera_taylor_adapter_params": plan.budget}
    for kind, outcome in probes.items():
        if layers == "paper":
            refused = {}
            for name, error in outcome.refused.items():
                refused.setdefault(_conv_kind(base.get_submodule(name)), []).append(error)
            note = "; ".join(f"refuses {len(errors)} {k}: {errors[0]}" for k, errors in refused.items())
            if not outcome.accepted:
                plan.skipped[kind] = f"PEFT accepts none of the {len(paper)} target layers; {note}"
                continue
            plan.methods[kind] = {"rank": rank, "layers": outcome.accepted, "options": {}, "note": note}
            continue
        try:
            kind_rank, count, options = match_peft(base, kind, plan.targets, plan.budget)
        except ValueError as err:
            plan.skipped[kind] = str(err)
            continue
        note = (f"rank {kind_rank}{''.join(f', {k}={v}' for k, v in options.items())}: {count:,} adapter "
                f"params for liera-taylor's {plan.budget:,}")
        if abs(count - plan.budget) > 0.2 * plan.budget:
            note += " (the closest it reaches on these layers)"
        plan.methods[kind] = {"rank": kind_rank, "layers": plan.targets, "options": options, "note": note}
    return plan


def build_peft_model(model: nn.Module, kind: str, rank: int, targets: list[str],
                     modules_to_save: list[str] | None = None, *, scale: float = 1.0, **options) -> nn.Module:
    """``model`` adapted by PEFT's ``kind`` on exactly ``targets`` at ``rank`` (a ``PeftModel``; the head in
    ``modules_to_save`` trains in full). With :func:`plan_peft` this is what the benchmarks use to put PEFT's
    HiRA / LoKr / LoHa / LoRA beside ours on the same layers."""
    import peft

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # probe_peft records PEFT's warnings
        return peft.get_peft_model(model, peft_config(kind, rank, targets, modules_to_save, scale=scale, **options))


# --- timing ---------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timings:
    """Seconds per call: wall clock and this process's CPU time (all threads), round by round."""

    wall: dict[str, list[float]]
    cpu: dict[str, list[float]]


def time_interleaved(steps: dict[str, Callable[[], object]], *, rounds: int, warmup: int,
                     device: torch.device, label: str = "timing") -> Timings:
    """Time each step ``rounds`` times, round-robin (the order rotates each round), after ``warmup`` rounds.

    CPU time is the contention-robust companion of wall time on a shared machine: time spent
    waiting for a core does not count. (With several threads it also counts OpenMP spin-waiting,
    so it is most telling with ``--threads 1``.)
    """
    if rounds < 1 or warmup < 0:
        raise ValueError(f"need --rounds >= 1 and --warmup >= 0, got {rounds} and {warmup}")
    names = list(steps)
    timings = Timings({name: [] for name in names}, {name: [] for name in names})
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task(label, total=(warmup + rounds) * len(names))
        for r in range(warmup + rounds):
            phase = f"warm-up {r + 1}" if r < warmup else f"round {r - warmup + 1}/{rounds}"
            for name in names[r % len(names):] + names[: r % len(names)]:
                progress.update(task, description=f"{label}: {name} ({phase})")
                sync(device)
                wall, cpu = time.perf_counter(), time.process_time()
                steps[name]()
                sync(device)
                if r >= warmup:
                    timings.wall[name].append(time.perf_counter() - wall)
                    timings.cpu[name].append(time.process_time() - cpu)
                progress.advance(task)
    return timings


def ratio_to(times: dict[str, list[float]], name: str, reference: str) -> list[float]:
    """Per-round ratios ``time[name] / time[reference]`` (both measured in the same round)."""
    return [a / b for a, b in zip(times[name], times[reference])]


def median(values: Iterable[float]) -> float:
    values = list(values)
    return statistics.median(values) if values else float("nan")


# --- memory ---------------------------------------------------------------------------------
def unique_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors`` (views and repeats count once)."""
    seen: dict[int, int] = {}
    for t in tensors:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def peak_of_events(deltas: Iterable[int]) -> int:
    """Highest running sum of signed allocation sizes, in event order (0 if nothing stayed allocated)."""
    live = peak = 0
    for nbytes in deltas:
        live += nbytes
        peak = max(peak, live)
    return peak


def allocation_events(prof) -> list[int]:
    """Signed sizes of the CPU allocations / frees a ``torch.profiler`` run recorded, in time order."""
    try:
        events = prof.profiler.kineto_results.events()
    except AttributeError as err:  # a private path: fail loudly, not with a wrong number
        raise RuntimeError(f"this torch ({torch.__version__}) does not expose profiler memory events "
                           "as benchmarks/common.py expects (prof.profiler.kineto_results)") from err
    memory = [(e.start_ns(), i, e.nbytes()) for i, e in enumerate(events)
              if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU]
    return [nbytes for _, _, nbytes in sorted(memory)]


@dataclass
class StepMemory:
    """Bytes: alive before the step (``static``), at its worst moment (``peak``), kept for backward (``saved``)."""

    static: int
    peak: int
    saved: int
    method: str


def step_memory(step: Callable[[], object], static: Iterable[torch.Tensor], device: torch.device) -> StepMemory:
    """Run ``step`` once and measure its memory (see the module docstring for the method)."""
    static = list(static)
    static_ptrs = {t.untyped_storage().data_ptr() for t in static}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in static_ptrs and storage.nbytes():
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
    if device.type == "cuda":
        sync(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        with hooks:
            step()
        sync(device)
        return StepMemory(before, torch.cuda.max_memory_allocated(device), sum(saved.values()),
                          "torch.cuda.max_memory_allocated")
    from torch.profiler import ProfilerActivity, profile

    before = unique_bytes(static)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof, hooks:
        step()
    peak = before + peak_of_events(allocation_events(prof))
    return StepMemory(before, peak, sum(saved.values()), "torch.profiler allocation trace + static bytes")


# --- output ---------------------------------------------------------------------------------
def write_csv(path: Path, rows: list[dict]) -> Path:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write(path, lambda tmp: Path(tmp).write_text(buffer.getvalue()))


def write_json(path: Path, obj) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2, default=str) + "\n"))


def save_figure(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    finally:
        plt.close(fig)


def print_table(title: str, rows: list[dict], columns: dict[str, str]) -> None:
    """A rich table of ``rows`` showing ``columns`` (key -> header); values print as the caller rounded them."""
    table = Table(title=title, title_justify="left")
    for i, header in enumerate(columns.values()):
        table.add_column(header, justify="left" if i == 0 or header in ("target", "note", "detail") else "right")
    for row in rows:
        table.add_row(*[str(row.get(key, "")) for key in columns])
    console.print(table)


def markdown_table(rows: list[dict], columns: dict[str, str]) -> str:
    """The same table as GitHub markdown (pasted into docs/benchmarks.md)."""

    def cell(value) -> str:
        return str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(map(cell, columns.values())) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(key, "")) for key in columns) + " |" for row in rows]
    return "\n".join(lines)
