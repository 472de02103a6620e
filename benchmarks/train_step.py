"""One training step of ConvNeXt-V2 under every fine-tuning method, side by side in one run.

    python -m benchmarks.train_step                                   # atto, 224², batch 8, CPU
    python -m benchmarks.train_step --layers common                   # like for like with PEFT's methods
    python -m benchmarks.train_step --arch base --batch 2 --rounds 3  # base, 224², CPU (slow)
    python -m benchmarks.train_step --device cuda --arch base --batch 32

Variants (all train the classifier ``head``):

=============  ===========================================================================
full           every parameter trains
linear-probe   only the head; nothing back-propagates into the backbone
floor          only the head, but the input requires grad, so backward runs through every
               activation of the frozen backbone: what any in-backbone adapter must pay
lora           ours, additive ``W + ΔW`` (same factorization as LieRA)
liera-taylor   ours, ``W + W ⊙ ΔW`` (the default)
liera-exp      ours, ``W ⊙ exp(ΔW)``
dora+liera     ours, Taylor composition renormalised per output channel
pissa+liera    ours, Taylor composition from the principal singular triplets
peft-lora      Hugging Face PEFT's LoRA
peft-loha      PEFT's LoHa (Hadamard product of two low-rank kernels, added)
peft-lokr      PEFT's LoKr (Kronecker product, added)
peft-hira      PEFT's HiRA (``W ⊙ (B @ A)`` added: LieRA-Taylor's update with alpha / rank = 1)
=============  ===========================================================================

``--layers paper`` (default): our adapters sit on the paper's layers (every conv with a kernel
larger than 1×1), each PEFT method on those of them it accepts, all at ``--rank``.
``--layers common``: every adapter sits on the layers that every requested PEFT method accepts
(HiRA refuses grouped convs, PEFT's LoRA depthwise ones at ranks their groups do not divide), ours
at ``--rank`` and each PEFT method at the rank whose trainable adapter parameters come closest to
LieRA-Taylor's (``benchmarks.common.match_peft``). Our adapters use alpha = rank (scale 1).

Step = zero_grad, forward, cross-entropy, backward, AdamW step. Reported: the median step time
over interleaved rounds and the peak memory of one step (method: ``benchmarks/common.py``), each
also as a ratio to ``full`` and to ``floor``. PEFT is optional (``pip install -e ".[peft]"``);
without it its rows say so. Writes ``<out>/train_step-<arch>-<device>[-common].{csv,png,json}``.
"""

from __future__ import annotations

import argparse
import copy
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.common import (
    ADAPTER_METHODS,
    MB,
    PEFT_METHODS,
    RESULTS,
    StepMemory,
    Timings,
    build_peft_model,
    configure,
    console,
    environment,
    markdown_table,
    median,
    plan_peft,
    print_table,
    ratio_to,
    save_figure,
    step_memory,
    sync,
    threads_label,
    time_interleaved,
    write_csv,
    write_json,
)
from liera_vision.core import AdapterConfig, adapter_layers, apply_adapters, count_parameters, select_targets
from liera_vision.models import create_convnextv2

VARIANTS = ("full", "linear-probe", "floor", *ADAPTER_METHODS, *PEFT_METHODS)
LAYERS = ("paper", "common")
HEAD = "head"
TARGETS = (
    ("LieRA Taylor step time ≤ 1.0× LoRA additive", "liera-taylor", "lora", "time", 1.0),
    ("LieRA Taylor step time ≤ 0.8× full fine-tune", "liera-taylor", "full", "time", 0.8),
    ("LieRA Taylor memory above floor ≤ 0.7× LieRA exact's", "liera-taylor", "liera-exp", "memory", 0.7),
)


@dataclass
class Variant:
    name: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    input_grad: bool = False
    adapted: str = "-"
    note: str = ""
    rank: int | None = None
    adapter_params: int | None = None

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def forward_backward_step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        inputs = x.detach().requires_grad_() if self.input_grad else x
        F.cross_entropy(self.model(inputs), y).backward()
        self.optimizer.step()

    def static_tensors(self) -> list[torch.Tensor]:
        state = [t for s in self.optimizer.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
        return [*self.model.parameters(), *self.model.buffers(), *state]


def _optimizer(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)


def _head_only(model: nn.Module) -> nn.Module:
    model.requires_grad_(False)
    model.get_submodule(HEAD).requires_grad_(True)
    return model


def build_variants(base: nn.Module, names: list[str], rank: int,
                   layers: str = "paper") -> tuple[list[Variant], dict[str, str], dict]:
    """The requested variants over copies of ``base``; skipped ones with the reason; PEFT's probe record."""
    paper = select_targets(base, AdapterConfig(rank=rank, modules_to_save=[HEAD]))
    head_params = sum(p.numel() for p in base.get_submodule(HEAD).parameters())
    plan = plan_peft(base, [n for n in names if n in PEFT_METHODS], rank, paper, layers)
    variants = []
    for name in names:
        model = copy.deepcopy(base).train()
        if name == "full":
            variants.append(Variant(name, model, _optimizer(model)))
        elif name in ("linear-probe", "floor"):
            model = _head_only(model)
            variants.append(Variant(name, model, _optimizer(model), input_grad=name == "floor"))
        elif name in ADAPTER_METHODS:
            where = "spatial" if layers == "paper" else [re.escape(t) for t in plan.targets]
            model, report = apply_adapters(model, AdapterConfig(rank=rank, alpha=float(rank), targets=where,
                                                                modules_to_save=[HEAD], **ADAPTER_METHODS[name]))
            variants.append(Variant(name, model, _optimizer(model), adapted=f"{len(report.layers)}/{len(paper)}",
                                    rank=rank, adapter_params=report.adapter_params))
        elif name in plan.methods:
            method = plan.methods[name]
            model = build_peft_model(model, name, method["rank"], method["layers"], [HEAD], **method["options"])
            trainable = count_parameters(model).trainable
            variants.append(Variant(name, model, _optimizer(model), adapted=f"{len(method['layers'])}/{len(paper)}",
                                    note=method["note"], rank=method["rank"], adapter_params=trainable - head_params))
    return variants, plan.skipped, plan.record


def measure(variants: list[Variant], x: torch.Tensor, y: torch.Tensor, *, rounds: int, warmup: int,
            device: torch.device) -> tuple[Timings, dict[str, StepMemory]]:
    def step(v: Variant):
        return lambda: (v.zero_grad(), v.forward_backward_step(x, y))

    times = time_interleaved({v.name: step(v) for v in variants}, rounds=rounds, warmup=warmup, device=device,
                             label="train steps")
    memory = {}
    for v in variants:
        if not v.optimizer.state:  # optimizer state exists from the second step on: make it exist
            step(v)()
        v.zero_grad()
        memory[v.name] = step_memory(lambda v=v: v.forward_backward_step(x, y), [*v.static_tensors(), x, y], device)
    return times, memory


def composition_cost(variant: Variant, device: torch.device, repeats: int = 10) -> float | None:
    """Seconds to compose every adapted weight and back-propagate into its factors (best of ``repeats``).

    This is all our adapter code adds to a step besides the convolutions' weight gradients and
    the optimizer; CPU time on CPU (insensitive to other load), wall clock on CUDA.
    """
    layers = list(adapter_layers(variant.model).values())
    if not layers:
        return None
    grads = [torch.ones_like(layer.base_layer.weight) for layer in layers]
    clock = time.process_time if device.type == "cpu" else time.perf_counter
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        start = clock()
        for layer, grad in zip(layers, grads):
            layer.effective_weight().backward(grad)
        sync(device)
        best = min(best, clock() - start)
    variant.zero_grad()
    return best


def summarize(variants: list[Variant], times: Timings, memory: dict[str, StepMemory],
              skipped: dict[str, str], device: torch.device) -> list[dict]:
    rows = []  # parse_args guarantees "full" and "floor" are among the variants
    for v in variants:
        mem = memory[v.name]
        row = {
            "variant": v.name,
            "trainable_params": count_parameters(v.model).trainable,
            "adapted_layers": v.adapted,
            "rank": v.rank if v.rank is not None else "",
            "adapter_params": v.adapter_params if v.adapter_params is not None else "",
            "step_s": round(median(times.wall[v.name]), 4),
            "step_s_min": round(min(times.wall[v.name]), 4),
            "step_s_max": round(max(times.wall[v.name]), 4),
            "cpu_s": round(median(times.cpu[v.name]), 4),
        }
        compose = composition_cost(v, device)
        step = median(times.cpu[v.name] if device.type == "cpu" else times.wall[v.name])
        row["compose_ms"] = round(1e3 * compose, 2) if compose is not None else ""
        row["compose_pct_of_step"] = round(100 * compose / step, 2) if compose is not None else ""
        for ref in ("full", "floor"):
            row[f"time_x_{ref}"] = round(median(ratio_to(times.wall, v.name, ref)), 3)
            row[f"cpu_x_{ref}"] = round(median(ratio_to(times.cpu, v.name, ref)), 3)
        row["peak_mb"] = round(mem.peak / MB, 1)
        row["static_mb"] = round(mem.static / MB, 1)
        row["saved_for_backward_mb"] = round(mem.saved / MB, 1)
        for ref in ("full", "floor"):
            row[f"mem_x_{ref}"] = round(mem.peak / memory[ref].peak, 3)
        row["mem_above_floor_mb"] = round((mem.peak - memory["floor"].peak) / MB, 1)
        row["note"] = v.note
        rows.append(row)
    for name, reason in skipped.items():
        rows.append({**dict.fromkeys(rows[0], ""), "variant": name, "note": f"not measured: {reason}"})
    return rows


def check_targets(variants: list[Variant], times: Timings, memory: dict[str, StepMemory],
                  device: torch.device) -> list[dict]:
    """Each target's ratio and verdict. On a CPU shared with other work a time verdict needs the
    wall-clock and the CPU-time medians to agree; where they fall on both sides of the limit it
    is "within noise". (On CUDA the CPU time of the host says nothing: wall clock alone.)"""
    names = {v.name for v in variants}
    results = []
    for label, name, ref, kind, limit in TARGETS:
        if not {name, ref} <= names:
            continue
        if kind == "time":
            ratios = ratio_to(times.wall, name, ref)
            wall, cpu = median(ratios), median(ratio_to(times.cpu, name, ref))
            measured = f"{wall:.3f} wall, {cpu:.3f} CPU" if device.type == "cpu" else f"{wall:.3f}"
            detail = f"per-round wall {min(ratios):.3f}–{max(ratios):.3f}"
            verdicts = {wall <= limit, cpu <= limit} if device.type == "cpu" else {wall <= limit}
        else:
            floor = memory["floor"].peak
            above, above_ref = memory[name].peak - floor, memory[ref].peak - floor
            value = above / above_ref if above_ref > 0 else float("nan")
            measured, detail = f"{value:.3f}", f"{above / MB:.1f} MB vs {above_ref / MB:.1f} MB"
            verdicts = {value <= limit}
        met = "within noise" if len(verdicts) == 2 else "yes" if verdicts.pop() else "no"
        results.append({"target": label, "measured": measured, "detail": detail, "met": met})
    return results


def plot(rows: list[dict], title: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r["time_x_full"] != ""]
    names = [r["variant"] for r in rows][::-1]
    labels = [r["variant"] + ("" if r["adapted_layers"] == "-" else f" ({r['adapted_layers']})") for r in rows][::-1]
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.45 * len(rows) + 1.5), sharey=True)
    for ax, key, label in ((axes[0], "time_x_full", "step time / full fine-tune"),
                           (axes[1], "mem_x_full", "peak memory / full fine-tune")):
        values = [r[key] for r in rows][::-1]
        colors = ["tab:red" if "liera" in n else "tab:blue" if n == "lora" else "silver" if n.startswith("peft")
                  else "dimgray" for n in names]
        ax.barh(labels, values, color=colors)
        floor = next((r[key] for r in rows if r["variant"] == "floor"), None)
        if floor is not None:
            ax.axvline(floor, color="k", ls="--", lw=1, label="floor")
            ax.legend(loc="lower right")
        ax.axvline(1.0, color="k", lw=0.8)
        for i, v in enumerate(values):
            ax.text(v, i, f" {v:.2f}", va="center", fontsize=8)
        ax.set_xlabel(label)
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


COLUMNS = {
    "variant": "variant", "trainable_params": "trainable", "adapted_layers": "adapted", "rank": "rank",
    "adapter_params": "adapter params",
    "step_s": "step s", "time_x_full": "× full", "time_x_floor": "× floor", "cpu_s": "CPU s",
    "cpu_x_full": "CPU × full",
    "peak_mb": "peak MB", "mem_x_full": "× full", "mem_x_floor": "× floor", "mem_above_floor_mb": "above floor MB",
    "saved_for_backward_mb": "saved MB", "compose_pct_of_step": "compose % of step",
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--arch", default="atto", help="ConvNeXt-V2 size (atto, femto, ..., base, ...)")
    parser.add_argument("--size", type=int, default=224, help="input resolution")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--layers", default="paper", choices=LAYERS,
                        help="paper: ours on the paper's layers, PEFT's where it accepts them, all at --rank; "
                             "common: everyone on the layers every PEFT method accepts, PEFT at matched parameters")
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=7, help="timed steps per variant (interleaved)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per variant first")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS, metavar="NAME",
                        help=f"subset of {', '.join(VARIANTS)}")
    parser.add_argument("--channels-last", action="store_true",
                        help="run model and batch in channels_last memory format (faster depthwise convs on CPU)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (1: least disturbed by other work on a shared machine)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for the CSV / PNG / JSON")
    args = parser.parse_args(argv)
    for required in ("full", "floor"):
        if required not in args.variants:
            parser.error(f"--variants must include '{required}': every ratio is taken against it")
    for key in ("size", "batch", "rank", "classes"):
        if getattr(args, key) < 1:
            parser.error(f"--{key} must be a positive integer, got {getattr(args, key)}")
    return args


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    device = configure(args.device, args.threads)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    base = create_convnextv2(args.arch, num_classes=args.classes).to(device, memory_format=memory_format)
    variants, skipped, peft_record = build_variants(base, args.variants, args.rank, args.layers)
    del base
    x = torch.randn(args.batch, 3, args.size, args.size, device=device).contiguous(memory_format=memory_format)
    y = torch.randint(0, args.classes, (args.batch,), device=device)
    console.print(f"convnextv2_{args.arch} {args.size}² batch {args.batch} rank {args.rank} on {device}, "
                  f"{threads_label()}: {len(variants)} variants × ({args.warmup} warm-up + "
                  f"{args.rounds} timed) steps, then one memory step each")
    times, memory = measure(variants, x, y, rounds=args.rounds, warmup=args.warmup, device=device)
    rows = summarize(variants, times, memory, skipped, device)
    targets = check_targets(variants, times, memory, device)

    stem = (f"train_step-{args.arch}-{device.type}" + ("-channels_last" if args.channels_last else "")
            + ("-common" if args.layers == "common" else ""))
    title = (f"Training step, convnextv2_{args.arch} {args.size}² batch {args.batch}, rank {args.rank}, "
             f"{args.layers} layers, "
             f"{device.type}{', channels_last' if args.channels_last else ''}, {threads_label()} "
             f"(median of {args.rounds} interleaved rounds)")
    print_table(title, rows, COLUMNS)
    for row in rows:
        if row["note"]:
            console.print(f"  {row['variant']}: {row['note']}")
    if targets:
        print_table("Targets", targets, {"target": "target", "measured": "measured", "detail": "detail", "met": "met"})
    write_csv(args.out / f"{stem}.csv", [{"arch": args.arch, "size": args.size, "batch": args.batch,
                                          "rank": args.rank, "device": device.type, **r} for r in rows])
    plot(rows, title, args.out / f"{stem}.png")
    write_json(args.out / f"{stem}.json", {
        "environment": environment(device, "benchmarks.train_step", list(argv if argv is not None else [])),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "memory_method": next(iter(memory.values())).method,
        "wall_s": times.wall, "cpu_s": times.cpu, "targets": targets, "peft": peft_record,
        "markdown": markdown_table(rows, COLUMNS) + "\n\n" + markdown_table(
            targets, {"target": "target", "measured": "measured", "detail": "detail", "met": "met"}),
    })
    console.print(f"wrote {args.out / stem}.{{csv,png,json}}")
    return rows


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
