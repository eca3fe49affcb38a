"""Residual networks for 32x32 images: the CIFAR ResNet (He et al. 2016) and Wide ResNet
(Zagoruyko & Komodakis 2016)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from dropens.errors import ConfigError
from dropens.models.base import Backbone, positive_int, register_model, shape_error

_IMAGE = "an image (C, H, W) with H, W >= 4"


def _image_shape(model: Backbone) -> tuple[int, int, int]:
    if len(model.input_shape) != 3 or min(model.input_shape[1:]) < 4:
        raise shape_error(model.name, model.input_shape, _IMAGE)
    c, h, w = model.input_shape
    return c, h, w


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)


def _down(size: int, stride: int) -> int:
    return (size - 1) // stride + 1  # 3x3 conv, padding 1


class BasicBlock(nn.Module):
    """CIFAR ResNet block (post-activation):
    ``relu(bn2(conv2(drop(relu(bn1(conv1(x)))))) + sc(x))``.

    The shortcut is **option A** of He et al. (2016, sec. 4.2): identity, and where the shape
    changes, stride-2 subsampling plus zero-padded channels (parameter-free, as in the paper's
    CIFAR nets).
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, drop: nn.Module) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_ch, out_ch, stride)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.drop = drop
        self.conv2 = _conv3x3(out_ch, out_ch)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.stride = stride
        extra = out_ch - in_ch
        self.pad = (extra // 2, extra - extra // 2)

    def shortcut(self, x: Tensor) -> Tensor:
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.pad != (0, 0):
            x = F.pad(x, (0, 0, 0, 0, *self.pad))
        return x

    def forward(self, x: Tensor) -> Tensor:
        out = self.drop(F.relu(self.bn1(self.conv1(x))))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


@register_model("resnet20")
class CifarResNet(Backbone):
    """CIFAR ResNet of He et al. (2016), "Deep residual learning for image recognition", sec. 4.2.

    ``conv3x3(16) -> BN -> ReLU -> 3 stages x n BasicBlocks (16, 32, 64 channels; stages 2 and 3
    start with stride 2) -> global average pool -> [head] -> Linear``, ``depth = 6n + 2``
    (20 -> 0.27M parameters with 10 classes, as in the paper). Shortcuts: option A (identity with
    zero-padded channels, no parameters). Weights: Kaiming-normal (He et al. 2015).

    Sites: ``block`` (spatial, between the two convolutions of every BasicBlock, after the first
    ReLU, as dropout in Wide ResNets), ``head`` (flat, the pooled features before the Linear).

    Shapes: input ``(N, C, H, W)``, ``H, W >= 4`` (32x32 for CIFAR); output ``[N, n_classes]``.

    Args:
        depth: ``6n + 2`` (20, 32, 44, 56, 110).
    """

    dropout_sites: ClassVar[tuple[str, ...]] = ("block", "head")
    flat_sites: ClassVar[tuple[str, ...]] = ("head",)
    default_sites: ClassVar[tuple[str, ...]] = ("block",)
    widths: ClassVar[tuple[int, ...]] = (16, 32, 64)

    def __init__(
        self,
        input_shape: Sequence[int],
        n_classes: int,
        sites: Sequence[str] | None = None,
        dropout: Mapping[str, Any] | None = None,
        depth: int = 20,
    ) -> None:
        super().__init__(input_shape, n_classes, sites, dropout)
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
            raise ConfigError(
                f"model.depth={depth!r} is not valid; choose 6n+2 with n >= 1 (20, 32, 44, 56, 110)"
            )
        n = (depth - 2) // 6
        in_ch, h, w = _image_shape(self)
        self.stem = nn.Sequential(_conv3x3(in_ch, self.widths[0]), nn.BatchNorm2d(self.widths[0]))
        blocks: list[nn.Module] = []
        in_ch = self.widths[0]
        for stage, out_ch in enumerate(self.widths):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                h, w = _down(h, stride), _down(w, stride)
                blocks.append(BasicBlock(in_ch, out_ch, stride, self.site("block", (out_ch, h, w))))
                in_ch = out_ch
        self.blocks = nn.Sequential(*blocks)
        self.drop_head = self.site("head", (in_ch,))
        self.classifier = nn.Linear(in_ch, self.n_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: Tensor) -> Tensor:
        x = self.blocks(F.relu(self.stem(x)))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.classifier(self.drop_head(x))


class WideBlock(nn.Module):
    """Wide ResNet block (pre-activation, Zagoruyko & Komodakis 2016, "B(3,3)" with dropout):
    ``conv2(drop(relu(bn2(conv1(relu(bn1(x))))))) + sc(x)``; the shortcut is the identity, or a
    1x1 conv of ``relu(bn1(x))`` where the shape changes (as in the authors' code)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, drop: nn.Module) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = _conv3x3(in_ch, out_ch, stride)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.drop = drop
        self.conv2 = _conv3x3(out_ch, out_ch)
        same = in_ch == out_ch and stride == 1
        self.shortcut = None if same else nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        o = F.relu(self.bn1(x))
        out = self.conv2(self.drop(F.relu(self.bn2(self.conv1(o)))))
        return out + (x if self.shortcut is None else self.shortcut(o))


@register_model("wrn")
class WideResNet(Backbone):
    """Wide ResNet WRN-depth-widen of Zagoruyko & Komodakis (2016), "Wide residual networks".

    ``conv3x3(16) -> 3 stages x n WideBlocks (16k, 32k, 64k channels; stages 2 and 3 start with
    stride 2) -> BN -> ReLU -> global average pool -> [head] -> Linear``, ``depth = 6n + 4``
    (WRN-28-10: n = 4, 36.5M parameters with 10 classes). Weights: Kaiming-normal (fan-out) for
    convolutions, BN weight 1 / bias 0, Linear bias 0 (as in the authors' code).

    Sites: ``block`` (spatial, between the two convolutions of every block, where the paper puts
    its dropout), ``head`` (flat, the pooled features before the Linear).

    Shapes: input ``(N, C, H, W)``, ``H, W >= 4`` (32x32 for CIFAR); output ``[N, n_classes]``.

    Args:
        depth: ``6n + 4`` (16, 22, 28, 40).
        widen: width multiplier ``k``.
    """

    dropout_sites: ClassVar[tuple[str, ...]] = ("block", "head")
    flat_sites: ClassVar[tuple[str, ...]] = ("head",)
    default_sites: ClassVar[tuple[str, ...]] = ("block",)

    def __init__(
        self,
        input_shape: Sequence[int],
        n_classes: int,
        sites: Sequence[str] | None = None,
        dropout: Mapping[str, Any] | None = None,
        depth: int = 28,
        widen: int = 10,
    ) -> None:
        super().__init__(input_shape, n_classes, sites, dropout)
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 10 or (depth - 4) % 6:
            raise ConfigError(
                f"model.depth={depth!r} is not valid; choose 6n+4 with n >= 1 (10, 16, 22, 28, 40)"
            )
        widen = positive_int("model.widen", widen)
        n = (depth - 4) // 6
        in_ch, h, w = _image_shape(self)
        self.stem = _conv3x3(in_ch, 16)
        blocks: list[nn.Module] = []
        in_ch = 16
        for stage, out_ch in enumerate((16 * widen, 32 * widen, 64 * widen)):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                h, w = _down(h, stride), _down(w, stride)
                blocks.append(WideBlock(in_ch, out_ch, stride, self.site("block", (out_ch, h, w))))
                in_ch = out_ch
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(in_ch)
        self.drop_head = self.site("head", (in_ch,))
        self.classifier = nn.Linear(in_ch, self.n_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn(self.blocks(self.stem(x))))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.classifier(self.drop_head(x))
