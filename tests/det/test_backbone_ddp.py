"""LieRAConvNeXt under DDP with find_unused_parameters=False (mmengine's default): 2 gloo processes, 2 iterations."""

from __future__ import annotations

import socket
import sys

import pytest

from ..vtab.conftest import cli_env, run_watched

WORKER = r"""
import sys
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def work(rank, port, out_indices, frozen_stages):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    from liera_vision.det import LieRAConvNeXt

    torch.manual_seed(0)  # the same initial adapters on both ranks
    model = LieRAConvNeXt("atto", out_indices=out_indices, frozen_stages=frozen_stages,
                          adapter=dict(method="liera", rank=2))
    ddp = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=False)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.1)
    for step in range(2):
        x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(10 * rank + step))
        loss = sum(o.pow(2).mean() for o in ddp(x))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    flat = torch.cat([p.detach().flatten() for p in params])
    both = [torch.empty_like(flat) for _ in range(2)]
    dist.all_gather(both, flat)
    if rank == 0:
        print(f"DDP-OK iterations=2 trainable={flat.numel()} same={torch.equal(both[0], both[1])}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    out_indices = tuple(int(i) for i in sys.argv[2].split(","))
    mp.spawn(work, args=(int(sys.argv[1]), out_indices, int(sys.argv[3])), nprocs=2)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("out_indices, frozen_stages", [("0,1,2", 0), ("1", 1)])
def test_ddp_trains_two_iterations_without_unused_parameters(out_indices, frozen_stages, tmp_path):
    """Issue 9 §D: with out_indices=(0, 1, 2) the last stage's adapters never got a gradient and DDP failed
    on iteration 2 ("Expected to have finished reduction"); stages after the last output are not built now."""
    script = tmp_path / "ddp_backbone.py"
    script.write_text(WORKER)
    proc = run_watched([sys.executable, script, _free_port(), out_indices, frozen_stages], timeout=240,
                       env=cli_env())
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "DDP-OK iterations=2" in proc.stdout and "same=True" in proc.stdout, proc.stdout + proc.stderr[-2000:]
    assert "Expected to have finished reduction" not in proc.stderr
