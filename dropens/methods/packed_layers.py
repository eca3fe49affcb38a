"""Packed-Ensembles layers and the conversion of a backbone into one (Laurent et al., ICLR 2023,
"Packed-Ensembles for Efficient Uncertainty Estimation", sec. 3; TorchUncertainty's
``torch_uncertainty/layers/packed.py``).

``M`` members live in one network whose every Linear / Conv is a *grouped* layer: widths multiplied
by ``alpha``, the channel axis split into blocks, block ``k`` belonging to member ``k``.

Layout. Inside the packed network a tensor is ``(B, W', *spatial)`` with its channel (feature) axis
member-major: channels ``k*W'/M .. (k+1)*W'/M - 1`` are member ``k``'s. Outside it follows the
stacked protocol (:mod:`dropens.layout`): input rows ``(m b)``, logits ``(M*B, C)``. The first layer
moves the member axis from the rows onto the channels (``(m b) c -> b (m c)``, :func:`rows_to_channels`)
and is a grouped layer with ``M`` groups on those ``M`` stacked inputs; the last layer moves it back
(``b (m c) -> (m b) c``). The first layer's weight ``[alpha*out, in]`` is the paper's dense first
layer (TorchUncertainty ``first=True``: ``groups=1`` on one copy of the input, its output block
``k`` feeding member ``k``): when the ``M`` row blocks are the same inputs, as in training and in the
``members`` strategy, the grouped layer computes exactly that dense layer; when they differ, member
``k`` sees its own rows (what the stacked protocol asks of a member).

Groups. The first layer has ``M`` groups (dense within a member: the input is not widened), the
last layer ``M`` groups (one head of ``C`` logits per member, as TorchUncertainty's packed ResNets,
whose last ``PackedLinear`` keeps ``gamma=1``), every other layer ``M * gamma`` groups. Widths are
``W' = ceil(alpha * W / (M*gamma)) * M*gamma`` (:func:`packed_width`: rounded up to a multiple of
the groups, as TorchUncertainty rounds up; ``alpha = M = gamma = 1`` gives ``W``).

Parameters. A hidden layer of kernel size ``k`` holds ``W'_out * W'_in / (M*gamma) * k`` weights,
``~ alpha^2 / (M*gamma)`` times the plain layer's (1 for the paper's default ``alpha=2, M=4,
gamma=1``); the first ``W'_out * in * k`` (``~ alpha``x), the last ``M*C * W'_in / M = C * W'_in``
(``~ alpha``x); biases ``W'_out``, BatchNorm ``2 W'``. Member ``k`` alone is the backbone at widths
``W'/M`` (with ``gamma`` groups inside): :func:`member_state_dict` slices its weights.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dropens.errors import ConfigError
from dropens.layers import Dropout
from dropens.models.resnet import BasicBlock

_CONVS = (nn.Conv1d, nn.Conv2d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


def packed_width(width: int, alpha: float, groups: int) -> int:
    """``ceil(alpha * width / groups) * groups``: the widened width, a multiple of ``groups``."""
    return groups * math.ceil(round(alpha * width, 9) / groups)


def rows_to_channels(x: Tensor, m: int) -> Tensor:
    """``(m b) c ... -> b (m c) ...``: ``(M*B, C, *s)`` member-major rows to ``(B, M*C, *s)``."""
    b = x.shape[0] // m
    return x.reshape(m, b, *x.shape[1:]).transpose(0, 1).reshape(b, m * x.shape[1], *x.shape[2:])


def channels_to_rows(y: Tensor, m: int) -> Tensor:
    """``b (m c) ... -> (m b) c ...``: ``(B, M*C, *s)`` to member-major rows ``(M*B, C, *s)``."""
    b, c = y.shape[0], y.shape[1] // m
    return y.reshape(b, m, c, *y.shape[2:]).transpose(0, 1).reshape(m * b, c, *y.shape[2:])


class _Stacking:
    """``first``: the input is ``(m b)`` rows (moved onto the channels); ``last``: the output goes
    back to ``(m b)`` rows."""

    n_members: int
    first: bool
    last: bool

    def _packed(self, x: Tensor, layer) -> Tensor:
        if self.first:
            x = rows_to_channels(x, self.n_members)
        y = layer(x)
        return channels_to_rows(y, self.n_members) if self.last else y

    def _stacking_repr(self) -> str:
        return f", n_members={self.n_members}, first={self.first}, last={self.last}"


class PackedLinear(_Stacking, nn.Module):
    """A grouped Linear: ``groups`` diagonal blocks, weight ``[out, in / groups]`` (block ``g`` is
    rows ``g*out/groups ..``, acting on inputs ``g*in/groups ..``); ``groups=1`` is ``nn.Linear``.

    Shapes: ``(N, in) -> (N, out)``; with ``first``, ``(M*N, in / M)`` rows ``(m b)``; with
    ``last``, output ``(M*N, out / M)`` rows ``(m b)``. Initialized as ``nn.Linear(in/groups, out)``
    (Kaiming-uniform, fan-in of one block).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        groups: int,
        n_members: int,
        bias: bool = True,
        first: bool = False,
        last: bool = False,
    ) -> None:
        super().__init__()
        if in_features % groups or out_features % groups:
            raise ValueError(f"{in_features} -> {out_features} features in {groups} groups")
        self.in_features, self.out_features, self.groups = in_features, out_features, groups
        self.n_members, self.first, self.last = n_members, first, last
        self.weight = nn.Parameter(torch.empty(out_features, in_features // groups))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # as nn.Linear
        if self.bias is not None:
            bound = 1 / math.sqrt(self.weight.shape[1])
            nn.init.uniform_(self.bias, -bound, bound)

    def _grouped(self, x: Tensor) -> Tensor:
        if self.groups == 1:
            return F.linear(x, self.weight, self.bias)
        g, n = self.groups, x.shape[0]
        w = self.weight.reshape(g, self.out_features // g, -1)  # [G, out/G, in/G]
        y = torch.bmm(x.reshape(n, g, -1).transpose(0, 1), w.transpose(1, 2))  # [G, N, out/G]
        y = y.transpose(0, 1).reshape(n, self.out_features)
        return y if self.bias is None else y + self.bias

    def forward(self, x: Tensor) -> Tensor:
        return self._packed(x, self._grouped)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"groups={self.groups}, bias={self.bias is not None}" + self._stacking_repr()
        )


class _PackedConv(_Stacking):
    """A torch convolution (constructed with its ``groups``: the grouped convolution itself), plus
    ``first`` / ``last``; mixed in before ``nn.Conv1d`` / ``nn.Conv2d``."""

    def __init__(self, *args, n_members: int, first: bool = False, last: bool = False, **kw):
        super().__init__(*args, **kw)
        self.n_members, self.first, self.last = n_members, first, last

    def forward(self, x: Tensor) -> Tensor:
        return self._packed(x, super().forward)

    def extra_repr(self) -> str:
        return super().extra_repr() + self._stacking_repr()


class PackedConv1d(_PackedConv, nn.Conv1d):
    """``nn.Conv1d`` with groups, plus ``first`` / ``last`` (:class:`_PackedConv`)."""


class PackedConv2d(_PackedConv, nn.Conv2d):
    """``nn.Conv2d`` with groups, plus ``first`` / ``last`` (:class:`_PackedConv`)."""


PACKED_LAYERS = (PackedLinear, PackedConv1d, PackedConv2d)


class PackedBasicBlock(BasicBlock):
    """The CIFAR ResNet block with its option-A shortcut (zero-padded channels) applied per
    member: each member's channel block is padded on its own, so no member reads another's."""

    def __init__(self, block: BasicBlock, n_members: int) -> None:
        nn.Module.__init__(self)
        self.conv1, self.bn1, self.drop = block.conv1, block.bn1, block.drop
        self.conv2, self.bn2, self.stride = block.conv2, block.bn2, block.stride
        self.n_members = n_members
        extra = (block.conv2.out_channels - block.conv1.in_channels) // n_members
        self.pad = (extra // 2, extra - extra // 2)

    def shortcut(self, x: Tensor) -> Tensor:
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.pad != (0, 0):
            b, c, h, w = x.shape
            per_member = x.reshape(b, self.n_members, c // self.n_members, h, w)
            x = F.pad(per_member, (0, 0, 0, 0, *self.pad)).reshape(b, -1, h, w)
        return x


class _Pending(nn.Module):
    """Stands in for a Linear while the conversion measures its widened input width."""

    def __init__(self, linear: nn.Linear, out_features: int, groups: int, last: bool) -> None:
        super().__init__()
        self.out_features, self.groups, self.last = out_features, groups, last
        self.bias = linear.bias is not None
        self.in_features: int | None = None

    def forward(self, x: Tensor) -> Tensor:
        self.in_features = int(x.shape[-1])
        return x.new_zeros(x.shape[0], self.out_features)


def _call_order(net: nn.Module, x: Tensor) -> list[nn.Module]:
    """The Linear / Conv layers of ``net`` in the order one forward of ``x`` calls them."""
    order: list[nn.Module] = []
    hooks = [
        m.register_forward_pre_hook(lambda mod, args: order.append(mod))
        for m in net.modules()
        if isinstance(m, (nn.Linear, *_CONVS))
    ]
    try:
        with torch.no_grad():
            net(x)
    finally:
        for h in hooks:
            h.remove()
    return order


def _check_convertible(net: nn.Module, order: list[nn.Module]) -> None:
    allowed = (nn.Linear, *_CONVS, *_NORMS, Dropout)
    for name, m in net.named_modules():
        own = [*m.parameters(recurse=False), *m.buffers(recurse=False)]
        if own and not isinstance(m, allowed):
            raise ConfigError(
                f"method=packed cannot convert layer {name!r} ({type(m).__name__}); it packs "
                "Linear, Conv1d, Conv2d and BatchNorm1d/2d layers only"
            )
        if isinstance(m, (nn.Linear, *_CONVS)) and order.count(m) != 1:
            raise ConfigError(
                f"method=packed needs every Linear/Conv called once per forward; layer {name!r} "
                f"is called {order.count(m)} times"
            )


def _conv_like(
    conv: nn.Conv1d | nn.Conv2d, c_in: int, c_out: int, groups: int, m: int, first: bool, last: bool
) -> nn.Module:
    """A packed convolution with ``conv``'s kernel, stride, padding, dilation and bias."""
    cls = PackedConv1d if isinstance(conv, nn.Conv1d) else PackedConv2d
    return cls(
        c_in,
        c_out,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=groups,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
        n_members=m,
        first=first,
        last=last,
    )


def _norm_like(norm: nn.BatchNorm1d | nn.BatchNorm2d, width: int) -> nn.Module:
    """``norm``'s BatchNorm type and settings at ``width`` features."""
    return type(norm)(
        width,
        eps=norm.eps,
        momentum=norm.momentum,
        affine=norm.affine,
        track_running_stats=norm.track_running_stats,
    )


def _convert(
    module: nn.Module, m: int, alpha: float, gamma: int, first: nn.Module, last: nn.Module
) -> None:
    """Replace, in place, the children of ``module`` (recursively) by their packed counterparts;
    Linears other than the first become :class:`_Pending`."""
    g = m * gamma
    for name, child in list(module.named_children()):
        is_first, is_last = child is first, child is last
        groups = m if (is_first or is_last) else g
        if isinstance(child, (nn.Linear, *_CONVS)):
            out = child.out_features if isinstance(child, nn.Linear) else child.out_channels
            out = m * out if is_last else packed_width(out, alpha, g)
        if isinstance(child, nn.Linear):
            if is_first:
                new: nn.Module = PackedLinear(
                    m * child.in_features, out, m, m, child.bias is not None, True, is_last
                )
            else:
                new = _Pending(child, out, groups, is_last)
        elif isinstance(child, _CONVS):
            c_in = m * child.in_channels if is_first else packed_width(child.in_channels, alpha, g)
            new = _conv_like(child, c_in, out, groups, m, is_first, is_last)
        elif isinstance(child, _NORMS):
            new = _norm_like(child, packed_width(child.num_features, alpha, g))
        else:
            _convert(child, m, alpha, gamma, first, last)
            new = PackedBasicBlock(child, m) if isinstance(child, BasicBlock) else child
        setattr(module, name, new)


def _materialize(module: nn.Module, m: int) -> None:
    """Replace every :class:`_Pending` (its input width measured) by a :class:`PackedLinear`."""
    for name, child in list(module.named_children()):
        if isinstance(child, _Pending):
            if child.in_features is None or child.in_features % child.groups:
                raise ConfigError(
                    f"method=packed: layer {name!r} gets {child.in_features} features, not a "
                    f"multiple of its {child.groups} groups; the backbone cannot be packed"
                )
            layer = PackedLinear(
                child.in_features,
                child.out_features,
                child.groups,
                m,
                bias=child.bias,
                last=child.last,
            )
            setattr(module, name, layer)
        else:
            _materialize(child, m)


def pack(net: nn.Module, m: int, alpha: float, gamma: int, input_shape: Sequence[int]) -> nn.Module:
    """Convert ``net`` in place into a Packed-Ensemble of ``m`` members (module docstring).

    Every Linear / Conv1d / Conv2d becomes its packed layer (fresh initialization), every
    BatchNorm1d/2d is widened, and option-A ResNet blocks pad per member. The first and last layers
    are found by one forward of ``(1, *input_shape)`` zeros; Linear input widths by a second.
    Valid for networks whose channel axis only these layers and per-channel (ReLU, pooling,
    BatchNorm, dropout) or order-keeping (flatten) operations touch: the built-in backbones.

    Returns:
        ``net``, mapping ``(M*B, *input_shape)`` rows ``(m b)`` to logits ``(M*B, C)``.

    Raises:
        ConfigError: a layer it cannot pack, a layer called twice, widths that do not split.
    """
    was_training = net.training
    net.eval()
    order = _call_order(net, torch.zeros(1, *input_shape))
    if not order:
        raise ConfigError("method=packed needs a backbone with Linear or Conv layers")
    _check_convertible(net, order)
    _convert(net, m, alpha, gamma, order[0], order[-1])
    net.eval()  # the new BatchNorm layers too
    try:
        with torch.no_grad():
            net(torch.zeros(m, *input_shape))  # measures the Linear input widths
    except RuntimeError as err:  # e.g. a residual around the first layer: (m b) rows + channels
        text = " ".join(str(err).split())[:200]
        raise ConfigError(
            f"method=packed cannot convert {type(net).__name__}: its forward mixes the stacked "
            f"rows and the packed channels ({text}); is the first layer inside a residual block?"
        ) from None
    _materialize(net, m)
    net.train(was_training)
    return net


def member_state_dict(net: nn.Module, k: int, m: int) -> dict[str, Tensor]:
    """Member ``k`` of a packed ``net`` as the ``state_dict`` of the backbone at widths ``W'/M``:
    block ``k`` (dim 0) of every packed layer's and BatchNorm's tensors; other tensors copied."""
    owners = {name: mod for name, mod in net.named_modules()}
    out: dict[str, Tensor] = {}
    for key, value in net.state_dict().items():
        owner = owners[key.rpartition(".")[0]]
        if isinstance(owner, (*PACKED_LAYERS, *_NORMS)) and value.dim() >= 1:
            block = value.shape[0] // m
            value = value[k * block : (k + 1) * block]
        out[key] = value.clone()
    return out


def _shrink(module: nn.Module, m: int) -> None:
    """Divide, in place, every packed dimension (widths, groups) of ``module``'s layers by ``m``."""
    for name, child in list(module.named_children()):
        if isinstance(child, PackedLinear):
            new: nn.Module = PackedLinear(
                child.in_features // m,
                child.out_features // m,
                child.groups // m,
                1,
                child.bias is not None,
                child.first,
                child.last,
            )
        elif isinstance(child, (PackedConv1d, PackedConv2d)):
            c_in, c_out, groups = child.in_channels // m, child.out_channels // m, child.groups // m
            new = _conv_like(child, c_in, c_out, groups, 1, child.first, child.last)
        elif isinstance(child, _NORMS):
            new = _norm_like(child, child.num_features // m)
        else:
            _shrink(child, m)
            if isinstance(child, PackedBasicBlock):
                child.n_members = 1  # its per-member padding is unchanged
            new = child
        setattr(module, name, new)


def member_network(net: nn.Module, k: int, m: int) -> nn.Module:
    """Member ``k`` of a packed ``net`` alone: a copy with every packed width and group count
    divided by ``m`` (one member: ``(B, *input_shape) -> (B, C)``), loaded with
    :func:`member_state_dict`. The global RNG is untouched."""
    single = copy.deepcopy(net)
    with torch.random.fork_rng(devices=[]):
        _shrink(single, m)
    reference = next(iter(net.parameters()), None)
    if reference is not None:
        single.to(reference)  # the new layers take net's dtype and device
    single.load_state_dict(member_state_dict(net, k, m))
    return single.train(net.training)
