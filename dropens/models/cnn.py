"""Small convolutional networks: the MNIST-1D reference 1-D CNN and a 2-D CNN for 28x28 images."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from torch import Tensor, nn

from dropens.models.base import Backbone, positive_int, register_model, shape_error
from dropens.pooling import MaxPool2x2


def conv_out(length: int, kernel: int, stride: int, padding: int) -> int:
    """Output length of a convolution (0 when the kernel does not fit the padded input)."""
    if length + 2 * padding < kernel:
        return 0
    return (length + 2 * padding - kernel) // stride + 1


@register_model("cnn1d")
class CNN1d(Backbone):
    """The MNIST-1D reference CNN (Greydanus 2020, "Scaling down deep learning"; ``mnist1d`` repo,
    ``models.ConvBase``).

    Layout: ``[input] -> (Conv1d -> ReLU -> [conv]) x 3 -> flatten -> [head] -> Linear``, with
    Conv1d(in, c, 5, stride 2, pad 1), Conv1d(c, c, 3, stride 2, pad 1), Conv1d(c, c, 3, stride 2,
    pad 1); the Linear takes ``c * L'`` features, ``L'`` computed from the input length
    (``L = 40 -> 19 -> 10 -> 5``: 125 features for ``c = 25``, 5,210 parameters with 10 classes).

    Sites: ``input`` (spatial, ``(N, C, L)``), ``conv`` (spatial, after each conv's ReLU),
    ``head`` (flat, the flattened features before the Linear; always ``element``).

    Shapes: input ``(N, L)`` or ``(N, C, L)`` (``input_shape`` ``(L,)`` or ``(C, L)``, ``L >= 3``);
    output logits ``[N, n_classes]``.

    Args:
        channels: channels of every convolution (25 in the reference).
    """

    dropout_sites: ClassVar[tuple[str, ...]] = ("input", "conv", "head")
    flat_sites: ClassVar[tuple[str, ...]] = ("head",)
    default_sites: ClassVar[tuple[str, ...]] = ("conv",)
    # (kernel, stride, padding) of the three convolutions of the reference.
    convs: ClassVar[tuple[tuple[int, int, int], ...]] = ((5, 2, 1), (3, 2, 1), (3, 2, 1))

    def __init__(
        self,
        input_shape: Sequence[int],
        n_classes: int,
        sites: Sequence[str] | None = None,
        dropout: Mapping[str, Any] | None = None,
        channels: int = 25,
    ) -> None:
        super().__init__(input_shape, n_classes, sites, dropout)
        channels = positive_int("model.channels", channels)
        if len(self.input_shape) not in (1, 2):
            raise shape_error(self.name, self.input_shape, "a sequence (L,) or (C, L) with L >= 3")
        in_ch, length = (1, *self.input_shape)[-2:]
        lengths = [length]
        for kernel, stride, padding in self.convs:
            lengths.append(conv_out(lengths[-1], kernel, stride, padding))
        if min(lengths) < 1:
            raise shape_error(self.name, self.input_shape, "a sequence (L,) or (C, L) with L >= 3")
        self.conv_input_shape = (in_ch, length)
        layers: list[nn.Module] = [self.site("input", (in_ch, length))]
        for (kernel, stride, padding), out_len in zip(self.convs, lengths[1:]):
            layers += [
                nn.Conv1d(in_ch, channels, kernel, stride=stride, padding=padding),
                nn.ReLU(),
                self.site("conv", (channels, out_len)),
            ]
            in_ch = channels
        features = channels * lengths[-1]
        layers += [nn.Flatten(), self.site("head", (features,))]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(features, self.n_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = x.reshape(x.shape[0], *self.conv_input_shape)
        return self.classifier(self.features(x))


@register_model("cnn2d")
class CNN2d(Backbone):
    """A small VGG-style CNN for 28x28 grayscale images (Fashion-MNIST, MNIST); also 32x32 and 8x8.

    The usual two-block CNN of Fashion-MNIST baselines (3x3 conv stacks as in Simonyan & Zisserman
    2015). Measured here with the default config and dropout p=0.1 at ``conv`` and ``hidden``:
    test accuracy 0.878 / 0.900 / 0.906 after epochs 1 / 2 / 3 of a 3-epoch run (AdamW lr 1e-3,
    weight decay 5e-4, batch 128, cosine decay, inputs standardized, no augmentation).

    Layout: ``[input] -> block(c1) -> block(c2) -> flatten -> Linear(hidden) -> ReLU -> [hidden]
    -> Linear``, where ``block(c) = Conv3x3(c) -> [BN] -> ReLU -> [conv] -> Conv3x3(c) -> [BN]
    -> ReLU -> [conv] -> MaxPool2`` (padding 1, so only the pools shrink the map: 28 -> 14 -> 7).

    Sites: ``input`` (spatial), ``conv`` (spatial, after each ReLU inside the blocks),
    ``hidden`` (flat, after the hidden ReLU; always ``element``).

    Shapes: input ``(N, C, H, W)`` with ``H, W >= 4``; output logits ``[N, n_classes]``.

    Args:
        channels: output channels of each block (one block per entry).
        hidden: width of the hidden fully connected layer.
        batchnorm: BatchNorm2d after every conv (conv bias dropped).
    """

    dropout_sites: ClassVar[tuple[str, ...]] = ("input", "conv", "hidden")
    flat_sites: ClassVar[tuple[str, ...]] = ("hidden",)
    default_sites: ClassVar[tuple[str, ...]] = ("conv", "hidden")

    def __init__(
        self,
        input_shape: Sequence[int],
        n_classes: int,
        sites: Sequence[str] | None = None,
        dropout: Mapping[str, Any] | None = None,
        channels: Sequence[int] = (32, 64),
        hidden: int = 128,
        batchnorm: bool = False,
    ) -> None:
        super().__init__(input_shape, n_classes, sites, dropout)
        channels = [positive_int(f"model.channels[{i}]", c) for i, c in enumerate(channels)]
        hidden = positive_int("model.hidden", hidden)
        min_side = 2 ** len(channels)  # every block halves the map
        need = f"an image (C, H, W) with H, W >= {min_side}"
        if len(self.input_shape) != 3:
            raise shape_error(self.name, self.input_shape, need)
        in_ch, h, w = self.input_shape
        if min(h, w) < min_side:
            raise shape_error(self.name, self.input_shape, need)
        layers: list[nn.Module] = [self.site("input", (in_ch, h, w))]
        for out_ch in channels:
            for conv_in in (in_ch, out_ch):
                layers.append(nn.Conv2d(conv_in, out_ch, 3, padding=1, bias=not batchnorm))
                if batchnorm:
                    layers.append(nn.BatchNorm2d(out_ch))
                layers += [nn.ReLU(), self.site("conv", (out_ch, h, w))]
            layers.append(MaxPool2x2())
            in_ch, h, w = out_ch, h // 2, w // 2
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.head = nn.Sequential(
            nn.Linear(in_ch * h * w, hidden),
            nn.ReLU(),
            self.site("hidden", (hidden,)),
            nn.Linear(hidden, self.n_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))
