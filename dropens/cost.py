"""What a method costs: parameter count and floating-point operations per example.

The subnetwork-ensemble family (``subnets``, ``ensemble``, ``masksembles``, ``batchensemble``,
``mimo``, ``packed``) trades parameters and compute for members; a fair comparison states both.
FLOPs are counted by :class:`torch.utils.flop_counter.FlopCounterMode` (matrix multiplications
and convolutions, forward and backward; a multiply-add counts 2), so elementwise work (masks,
activations, BatchNorm) is not in them: they are the cost that grows with width, not wall time
(``benchmarks/bench_family.py`` measures that).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode


def n_params(module: nn.Module) -> int:
    """Number of trainable parameter elements of ``module`` (shared tensors counted once)."""
    return sum(
        p.numel() for p in {id(p): p for p in module.parameters()}.values() if p.requires_grad
    )


def train_flops_per_example(method: Any, x: Tensor, y: Tensor) -> float:
    """FLOPs of one training step's forward and backward pass, per example of the batch.

    Args:
        method: a :class:`dropens.methods.Method` (its ``training_loss(x, y)`` defines the step).
        x: a training batch ``(B, *input_shape)``; y: its labels ``[B]``.

    The module's state is left as it was: the RNG is forked, buffers (BatchNorm statistics) and
    train/eval flags are restored and the gradients it computed are dropped, so calling this
    before, during or after training changes nothing (tested). The optimizer step is not counted.
    """
    module: nn.Module = method
    buffers = {name: b.clone() for name, b in module.named_buffers()}
    grads = {id(p): p.grad for p in module.parameters()}
    flags = [(m, m.training) for m in module.modules()]
    counter = FlopCounterMode(display=False)
    try:
        with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
            module.train()
            with counter:
                method.training_loss(x, y).backward()
    finally:
        for p in module.parameters():
            p.grad = grads[id(p)]
        with torch.no_grad():
            for name, b in module.named_buffers():
                b.copy_(buffers[name])
        for m, flag in flags:
            m.training = flag
    return counter.get_total_flops() / len(x)


def cost_info(method: Any, x: Tensor, y: Tensor) -> dict[str, float | int]:
    """``{"n_params": ..., "train_flops_per_example": ...}`` for the run record (``run.json``)."""
    return {
        "n_params": n_params(method.backbone),
        "train_flops_per_example": train_flops_per_example(method, x, y),
    }
