"""The CPU memory method of benchmarks/common.py, checked byte for byte on steps whose answer is known."""

from __future__ import annotations

import torch
from torch import nn

from benchmarks.common import peak_of_events, step_memory, unique_bytes

CPU = torch.device("cpu")


def test_peak_of_events_is_the_highest_running_sum():
    assert peak_of_events([10, 20, -10, 5, -25]) == 30
    assert peak_of_events([]) == 0
    assert peak_of_events([-4, 4]) == 0  # frees of memory allocated before the step do not count


def test_unique_bytes_counts_each_storage_once():
    t = torch.zeros(10, 10)
    assert unique_bytes([t, t[0], t.t(), torch.zeros(3, dtype=torch.float64)]) == 400 + 24


def test_peak_of_raw_allocations():
    def step():
        a = torch.empty(10_000_000, dtype=torch.uint8)
        b = torch.empty(20_000_000, dtype=torch.uint8)
        del a
        c = torch.empty(5_000_000, dtype=torch.uint8)
        del b, c

    memory = step_memory(step, [], CPU)
    assert (memory.static, memory.peak, memory.saved) == (0, 30_000_000, 0)


def test_backward_through_exp():
    # exp allocates and saves y (S); sum allocates the loss (4); backward allocates the seed
    # gradient (4) and y·grad (S), which becomes v.grad: peak 2S + 8 above the static v.
    v = torch.randn(250_000, requires_grad=True)
    memory = step_memory(lambda: v.exp().sum().backward(), [v], CPU)
    assert memory.static == 1_000_000
    assert memory.peak - memory.static == 2 * 1_000_000 + 8
    assert memory.saved == 1_000_000


def mlp_case():
    torch.manual_seed(0)
    n, d, h = 64, 128, 512
    model = nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, d))
    x = torch.randn(n, d)
    return model, x, [*model.parameters(), x], (n, d, h)


def test_forward_of_an_mlp():
    model, x, static, (n, d, h) = mlp_case()
    memory = step_memory(lambda: model(x).square().mean(), static, CPU)
    # peak inside ReLU: its input and its output, both (n, h); kept for backward: ReLU's result and
    # the output that square() keeps (x and the weights are static)
    assert memory.peak - memory.static == 2 * n * h * 4
    assert memory.saved == n * h * 4 + n * d * 4
    assert memory.static == unique_bytes(static)


def test_training_step_of_an_mlp():
    model, x, static, (n, d, h) = mlp_case()
    memory = step_memory(lambda: model(x).square().mean().backward(), static, CPU)
    grads = sum(p.numel() * 4 for p in model.parameters())
    # peak while the first layer's weight gradient is allocated: every parameter gradient, the
    # (n, h) gradient flowing into it, the loss and its seed gradient
    assert memory.peak - memory.static == grads + n * h * 4 + 4 + 4
