"""BatchNorm after dropout: running statistics recomputed with dropout off (Li et al. 2019).

The ``bn_recomputed`` strategy (:mod:`dropens.inference`) evaluates a copy of the backbone whose
BatchNorm statistics are those of the deterministic pass, which removes the variance shift that
dropout in training leaves in them ("precise BN", Wu & Johnson 2021).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from dropens import control
from dropens.errors import ConfigError

BN_BATCH_SIZE = 128  # rows per forward of recompute_bn when no training batch size is given


def batchnorm_layers(model: nn.Module) -> list[_BatchNorm]:
    """Every BatchNorm of ``model`` that keeps running statistics, in ``modules()`` order."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recompute_bn(model: nn.Module, x: Tensor, batch_size: int = BN_BATCH_SIZE) -> nn.Module:
    """A deep copy of ``model`` with BatchNorm running statistics recomputed with dropout off.

    The copy's running statistics are reset (``momentum=None``: cumulative), then ``x`` is
    forwarded in ``ceil(N / batch_size)`` near-equal chunks without gradients, with BatchNorm in
    train mode (each chunk normalized by its own statistics, as in training) and every dropout
    layer in its deterministic mode (:func:`dropens.control.deterministic`, which follows the
    layer's ``scale``). Each BatchNorm's ``running_mean`` / ``running_var`` are then set to the
    exact mean and unbiased variance of its input over all ``N`` rows (per channel, pooled over
    the chunks in float64): what ``momentum=None`` gives with one chunk of all of ``x``, for any
    chunking. A BatchNorm with no BatchNorm upstream therefore gets exactly the statistics of its
    input in the deterministic pass; deeper ones see upstream layers normalized by chunk
    statistics, as the running statistics of training do ("precise BN", Wu & Johnson 2021).

    ``model`` itself is not changed. The copy is returned in eval mode, on ``model``'s device.

    Args:
        model: a backbone mapping ``(N, *input_shape)`` to logits (not a stacked ensemble).
        x: ``[N, *input_shape]`` training inputs, ``N >= 2``.
        batch_size: rows per forward (the training batch size keeps upstream normalization as in
            training); chunks have ``N // n_chunks`` or one more rows.

    Returns:
        The copy, with ``running_mean``/``running_var`` ``[C]`` of every BatchNorm recomputed and
        ``num_batches_tracked`` the number of chunks.
    """
    if len(x) < 2:
        raise ConfigError(
            f"recomputing BatchNorm statistics needs at least 2 training inputs; got {len(x)}"
        )
    fresh = copy.deepcopy(model)
    bns = batchnorm_layers(fresh)
    moments: dict[_BatchNorm, tuple[int, Tensor, Tensor]] = {}  # count, mean [C], M2 [C]

    def accumulate(bn: _BatchNorm, args: tuple) -> None:
        h = args[0].detach().double()
        dims = [0, *range(2, h.dim())]
        n = h.numel() // h.shape[1]
        mean = h.mean(dims)
        m2 = (h - mean.view(1, -1, *([1] * (h.dim() - 2)))).square().sum(dims)
        if bn in moments:  # Chan et al. (1979): merge (count, mean, M2) of two parts exactly
            n0, mean0, m20 = moments[bn]
            delta = mean - mean0
            total = n0 + n
            mean = mean0 + delta * (n / total)
            m2 = m20 + m2 + delta.square() * (n0 * n / total)
            n = total
        moments[bn] = (n, mean, m2)

    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    device = next((t.device for t in (*fresh.parameters(), *fresh.buffers())), x.device)
    handles = [bn.register_forward_pre_hook(accumulate) for bn in bns]
    try:
        fresh.train()
        with control.deterministic(fresh):
            n_chunks = -(-len(x) // max(1, int(batch_size)))
            for chunk in torch.tensor_split(x, n_chunks):
                fresh(chunk.to(device))
    finally:
        for handle in handles:
            handle.remove()
        fresh.eval()
    for bn in bns:
        if bn not in moments:  # not called by the forward: nothing to recompute
            continue
        n, mean, m2 = moments[bn]
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(m2 / max(n - 1, 1))
    return fresh
