"""2x2 max-pooling with the values of ``nn.MaxPool2d(2)``, about 8x faster in CPU inference.

PyTorch's CPU ``max_pool2d`` in the usual (N, C, H, W) layout scans each window element by
element; for a 2x2 window with stride 2 the same maximum is three elementwise ``torch.maximum``
over the four strided views ``x[..., i::2, j::2]``, which vectorize. Maxima are exact, so the
outputs are bit for bit those of ``F.max_pool2d(x, 2)`` (odd sizes floor, as there; NaN
propagates, as there). Inference (MC dropout's ``T x N`` stacked rows) is where pooling costs:
``benchmarks/bench_pool.py`` measured 8x on the pooling and 1.28x on MC inference of the family
study's Fashion-MNIST CNN. With gradients enabled (training, including inside ``torch.vmap``,
where a batched tensor's ``requires_grad`` reads False) the native kernel runs: its backward sends each
window's gradient to its first maximum, where ``torch.maximum`` would split it over ties (ReLU
zeros tie often), which would change training. A hand-written first-maximum backward was not faster.
Off the CPU the native kernel runs too (the speed-up was measured on CPUs only).

``dropens.convert(model)`` swaps a model's plain ``nn.MaxPool2d(2)`` modules for :class:`MaxPool2x2`
(``fast_pool=True``), so a user's own CNN gets the same exact speed-up in MC inference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def max_pool2x2(x: Tensor) -> Tensor:
    """``F.max_pool2d(x, 2)`` for ``x (N, C, H, W)`` or ``(C, H, W)``: ``(..., H // 2, W // 2)``."""
    if torch.is_grad_enabled() or x.device.type != "cpu":  # not x.requires_grad: False in vmap
        return F.max_pool2d(x, 2)
    h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
    x = x[..., :h, :w]
    top = torch.maximum(x[..., 0::2, 0::2], x[..., 0::2, 1::2])
    return torch.maximum(top, torch.maximum(x[..., 1::2, 0::2], x[..., 1::2, 1::2]))


class MaxPool2x2(nn.MaxPool2d):
    """``nn.MaxPool2d(2)`` (same state, repr and results) computed by :func:`max_pool2x2`."""

    @staticmethod
    def replaces(module: nn.Module) -> bool:
        """Whether ``module`` is exactly a plain ``nn.MaxPool2d(2)``: kernel 2, stride 2, no
        padding, dilation 1, floor mode, no indices (what :func:`max_pool2x2` computes)."""

        def pair(v: object) -> tuple:
            return tuple(v) if isinstance(v, tuple | list) else (v, v)

        return (
            type(module) is nn.MaxPool2d
            and pair(module.kernel_size) == (2, 2)
            and pair(module.stride or module.kernel_size) == (2, 2)
            and pair(module.padding) == (0, 0)
            and pair(module.dilation) == (1, 1)
            and not module.ceil_mode
            and not module.return_indices
        )

    def __init__(self) -> None:
        super().__init__(2)

    def forward(self, x: Tensor) -> Tensor:
        return max_pool2x2(x)
