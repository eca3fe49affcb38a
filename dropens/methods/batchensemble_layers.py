"""BatchEnsemble layers (Wen, Tran & Ba, ICLR 2020) and the conversion of a plain backbone.

Member ``k`` of a BatchEnsemble layer has the weight ``W_k = W * (s_k r_k^T)`` (paper eq. 1): a
shared "slow" weight ``W`` and rank-one "fast" weights ``r_k`` (input side) and ``s_k`` (output
side), plus its own bias ``b_k``. The batched forward never builds ``W_k`` (paper eq. 2):

    y_k = ((x_k * r_k) W^T) * s_k + b_k          (Linear; for a convolution, r_k and s_k scale
                                                   the input and output channels)

on rows stacked member-major ``(m b)`` (:mod:`dropens.layout`): rows ``k*B .. (k+1)*B - 1`` of a
``(K*B, ...)`` input are member ``k``'s. Conventions follow TorchUncertainty's ``BatchLinear`` /
``BatchConv2d`` (``torch_uncertainty/layers/batch_ensemble.py``): fast weights ``[K, in]`` and
``[K, out]``, bias ``[K, out]``, same member-major row order; one class serves ``nn.Linear`` and
``nn.Conv1d/2d/3d`` here (the channel axis is the only difference).

Initialization of the fast weights (``init``): ``normal`` draws ``N(1, std^2)`` (TorchUncertainty's
``N(1, 0.5)``; uncertainty-baselines' CIFAR default ``random_sign_init=-0.5``), ``random_sign``
draws ``+1`` or ``-1`` with probability 1/2 each (the paper's random-sign vectors; edward2
``RandomSign(0.5)``). The shared ``W`` is the plain layer's own (so it starts where the ``plain``
run of the same seed starts) and every member's bias starts as a copy of the plain layer's bias
(edward2 also starts all members at one bias, zeros; TorchUncertainty draws each member's bias
independently): the members differ at initialization by their fast weights only.
"""

from __future__ import annotations

import copy
from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.nn.modules.conv import _ConvNd

from dropens.errors import ConfigError, bad_choice
from dropens.layout import stack, unstack

FAST_INITS = ("normal", "random_sign")


def _check_rows(n: int, k: int) -> int:
    if n % k:
        raise ConfigError(
            f"batch of {n} rows is not a multiple of the {k} BatchEnsemble members "
            "(layout (m b): stack the input once per member)"
        )
    return n // k


class BatchEnsembleLayer(nn.Module):
    """A ``nn.Linear`` or ``nn.ConvNd`` turned into ``K`` BatchEnsemble members (module docstring).

    Args:
        layer: the plain layer; it is taken over: its weight becomes the shared ``W`` (the same
            ``Parameter``), its bias the initial bias of every member (it keeps no bias itself).
        k: the number of members ``K >= 1``.

    Attributes:
        shared: the plain layer without bias (``shared.weight`` is ``W``).
        r: ``[K, in]`` input-side fast weights (``in``: features or input channels).
        s: ``[K, out]`` output-side fast weights.
        bias: ``[K, out]`` per-member bias, or ``None`` where the plain layer had none.

    Shapes: ``(K*B, in)`` (Linear; any middle axes) or ``(K*B, C_in, *spatial)`` (conv) ``->``
    the plain layer's output for ``K*B`` rows, member-major.
    """

    def __init__(self, layer: nn.Linear | _ConvNd, k: int) -> None:
        super().__init__()
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"method.k={k!r} is not valid; choose an integer >= 1 (members)")
        if isinstance(layer, nn.Linear):
            n_in, n_out = layer.in_features, layer.out_features
            self.channel_axis, self.groups = -1, 1
        elif isinstance(layer, _ConvNd) and not layer.transposed:
            n_in, n_out, self.channel_axis = layer.in_channels, layer.out_channels, 1
            self.groups = int(layer.groups)
        else:
            raise TypeError(f"BatchEnsembleLayer takes nn.Linear or nn.ConvNd, not {type(layer)}")
        self.n_members = int(k)
        bias = layer.bias
        layer.register_parameter("bias", None)
        self.shared = layer
        w = layer.weight
        self.r = nn.Parameter(torch.ones(k, n_in, dtype=w.dtype, device=w.device))
        self.s = nn.Parameter(torch.ones(k, n_out, dtype=w.dtype, device=w.device))
        if bias is None:
            self.register_parameter("bias", None)
        else:
            self.bias = nn.Parameter(bias.detach().expand(k, n_out).clone())

    @torch.no_grad()
    def init_fast_weights(self, init: str = "normal", std: float = 0.5) -> None:
        """Draw ``r`` and ``s`` from the global RNG: ``normal`` ``N(1, std^2)`` or ``random_sign``
        (``+-1``, probability 1/2 each)."""
        for t in (self.r, self.s):
            if init == "normal":
                t.normal_(1.0, std)
            elif init == "random_sign":
                t.copy_(torch.randint_like(t, 0, 2) * 2 - 1)
            else:
                raise bad_choice("method.fast_init", init, FAST_INITS)

    def _per_member(self, v: Tensor, dim: int) -> Tensor:
        """``v [K, c]`` as a view broadcasting over the unstacked ``[K, B, *row]`` of a stacked
        ``(K*B, *row)`` tensor of ``dim`` axes, ``c`` on the channel axis of a row."""
        k, c = v.shape
        ones = [1] * (dim - 2)
        if self.channel_axis == -1:
            return v.view(k, 1, *ones, c)
        return v.view(k, 1, c, *ones)

    def forward(self, x: Tensor) -> Tensor:
        """``y_k = shared(x_k * r_k) * s_k + b_k`` for every member ``k`` (rows ``(m b)``)."""
        k = self.n_members
        _check_rows(x.shape[0], k)
        xr = unstack(x, k) * self._per_member(self.r, x.dim())
        out = self.shared(xr.reshape(x.shape))
        y = unstack(out, k) * self._per_member(self.s, out.dim())
        if self.bias is not None:
            y = y + self._per_member(self.bias, out.dim())
        return y.reshape(out.shape)

    def member_weight(self, k: int) -> Tensor:
        """Member ``k``'s effective weight ``W * (s_k r_k^T)``, the shape of ``W``
        (``[out, in]``; a convolution ``[out, in / groups, *kernel]``)."""
        w = self.shared.weight
        out, g = w.shape[0], self.groups
        r = self.r[k].view(g, -1).repeat_interleave(out // g, dim=0)  # [out, in / groups]
        ones = [1] * (w.dim() - 2)
        return w * self.s[k].view(out, 1, *ones) * r.view(*r.shape, *ones)

    def member_layer(self, k: int) -> nn.Module:
        """A plain layer (same type and arguments) computing member ``k`` alone."""
        plain = copy.deepcopy(self.shared)
        with torch.no_grad():
            plain.weight = nn.Parameter(self.member_weight(k).detach().clone())
            if self.bias is not None:
                plain.bias = nn.Parameter(self.bias[k].detach().clone())
        return plain

    def extra_repr(self) -> str:
        return f"n_members={self.n_members}, bias={self.bias is not None}"


def convert(model: nn.Module, k: int, init: str = "normal", std: float = 0.5) -> list[str]:
    """Replace, in place, every ``nn.Linear`` and (non-transposed) ``nn.ConvNd`` of ``model`` by a
    :class:`BatchEnsembleLayer` of ``k`` members taking over its weight; fast weights drawn from
    the global RNG in module order (:meth:`BatchEnsembleLayer.init_fast_weights`).

    Other layers (BatchNorm, dropout, ...) are left as they are: shared by all members.

    Returns:
        The names of the converted layers, in ``named_modules`` order.

    Raises:
        ConfigError: ``model`` has no Linear or convolution (nothing to make members of).
    """
    names = [
        name
        for name, m in model.named_modules()
        if name
        and (isinstance(m, nn.Linear) or (isinstance(m, _ConvNd) and not m.transposed))
        and not isinstance(m, BatchEnsembleLayer)
    ]
    if not names:
        raise ConfigError(
            f"method=batchensemble turns every nn.Linear / nn.ConvNd into members, but "
            f"{type(model).__name__} has none; use a model with Linear or convolution layers"
        )
    for name in names:
        parent_name, _, leaf = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        layer = BatchEnsembleLayer(getattr(parent, leaf), k)
        layer.init_fast_weights(init, std)
        setattr(parent, leaf, layer)
    return names


def be_layers(model: nn.Module) -> list[BatchEnsembleLayer]:
    """The BatchEnsemble layers of ``model``, in module order."""
    return [m for m in model.modules() if isinstance(m, BatchEnsembleLayer)]


class BatchEnsembleNet(nn.Module):
    """A converted backbone as a stacked ensemble of ``K`` members (the ``members`` protocol of
    :mod:`dropens.inference`).

    Args:
        net: a backbone whose layers :func:`convert` has already turned into ``K`` members.
        k: ``K``.

    Attributes:
        net: the converted backbone.
        n_members: ``K``.
        stacked_members: ``True``.

    Shapes: :meth:`forward` ``(K*B, ...) -> (K*B, C)`` member-major; :meth:`forward_members`
    ``(B, ...) -> [K, B, C]``.
    """

    stacked_members: ClassVar[bool] = True

    def __init__(self, net: nn.Module, k: int) -> None:
        super().__init__()
        self.net = net
        self.n_members = int(k)

    def forward(self, x: Tensor) -> Tensor:
        """``(K*B, ...)`` stacked member-major ``->`` logits ``(K*B, C)``."""
        _check_rows(x.shape[0], self.n_members)
        return self.net(x)

    def forward_members(self, x: Tensor) -> Tensor:
        """``[K, B, C]``: every member on the same batch ``x`` ``(B, ...)``."""
        return unstack(self.net(stack(x, self.n_members)), self.n_members)

    def member(self, k: int) -> nn.Module:
        """A standalone plain backbone computing member ``k``: every BatchEnsemble layer replaced
        by a plain layer of weight ``W * (s_k r_k^T)`` and bias ``b_k``; every other layer
        (BatchNorm statistics included) copied."""
        if not 0 <= k < self.n_members:
            raise ConfigError(f"member k={k} is outside [0, {self.n_members})")
        single = copy.deepcopy(self.net)
        for name, m in list(single.named_modules()):
            if isinstance(m, BatchEnsembleLayer):
                parent_name, _, leaf = name.rpartition(".")
                parent = single.get_submodule(parent_name) if parent_name else single
                setattr(parent, leaf, m.member_layer(k))
        return single

    def extra_repr(self) -> str:
        return f"n_members={self.n_members}"


__all__ = [
    "FAST_INITS",
    "BatchEnsembleLayer",
    "BatchEnsembleNet",
    "be_layers",
    "convert",
]
