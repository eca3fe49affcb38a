"""Multi-layer perceptron: the MNIST-1D reference MLP and its variants."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from torch import Tensor, nn

from dropens.errors import ConfigError
from dropens.models.base import Backbone, positive_int, register_model


@register_model("mlp")
class MLP(Backbone):
    """Fully connected ReLU network on the flattened input.

    The default ``widths=(100, 100)`` on MNIST-1D is the reference MLP of Greydanus (2020),
    "Scaling down deep learning" (``mnist1d`` repo, ``models.MLP``):
    Linear(40, 100)-ReLU-Linear(100, 100)-ReLU-Linear(100, 10).

    Layout: ``flatten -> [input] -> (Linear -> [BatchNorm1d] -> ReLU -> [hidden]) x len(widths)
    -> [head] -> Linear``, where ``[site]`` marks a dropout site.

    Sites (all flat, always ``structure="element"``): ``input`` (on the flattened input),
    ``hidden`` (after every hidden ReLU) and ``head`` (once, after the last hidden ReLU, just
    before the classifier Linear; on the input when ``widths`` is empty). With ``batchnorm=True``,
    ``hidden`` puts dropout before the next Linear -> BatchNorm1d ("dropout before BN", whose
    variance shift Li et al. 2019 describe), while ``head`` puts it after every BatchNorm
    ("dropout after BN", their remedy). Selecting both ``hidden`` and ``head`` draws two
    independent masks on the last hidden layer.

    Shapes: input ``(N, *input_shape)`` (any shape, flattened to ``(N, prod(input_shape))``);
    output logits ``[N, n_classes]``.

    Args:
        widths: hidden layer widths.
        batchnorm: BatchNorm1d after each hidden Linear, before the ReLU (Linear bias dropped).
        residual: every hidden layer whose input and output widths agree adds its input to its
            output, ``h <- h + ReLU(Linear(h))``: with ``widths=(100, 100)`` on MNIST-1D the
            published reference MLP exactly (``mnist1d`` repo ``models.MLP``, whose second layer
            is residual; 68% test accuracy without dropout). Off by default (absent from
            ``configs/model/mlp.yaml``, so run ids do not change; ``+model.residual=true``).
    """

    dropout_sites: ClassVar[tuple[str, ...]] = ("input", "hidden", "head")
    flat_sites: ClassVar[tuple[str, ...]] = ("input", "hidden", "head")
    default_sites: ClassVar[tuple[str, ...]] = ("hidden",)

    def __init__(
        self,
        input_shape: Sequence[int],
        n_classes: int,
        sites: Sequence[str] | None = None,
        dropout: Mapping[str, Any] | None = None,
        widths: Sequence[int] = (100, 100),
        batchnorm: bool = False,
        residual: bool = False,
    ) -> None:
        super().__init__(input_shape, n_classes, sites, dropout)
        widths = [positive_int(f"model.widths[{i}]", w) for i, w in enumerate(widths)]
        features = math.prod(self.input_shape)
        layers: list[nn.Module] = [self.site("input", (features,))]
        if not isinstance(residual, bool):
            raise ConfigError(
                f"model.residual={residual!r} is not valid; choose one of: true, false"
            )
        for width in widths:
            block: list[nn.Module] = [nn.Linear(features, width, bias=not batchnorm)]
            if batchnorm:
                block.append(nn.BatchNorm1d(width))
            block.append(nn.ReLU())
            if residual and width == features:
                layers.append(Residual(nn.Sequential(*block)))
            else:
                layers += block
            layers.append(self.site("hidden", (width,)))
            features = width
        layers.append(self.site("head", (features,)))  # last: indices of the others do not move
        self.body = nn.Sequential(*layers)
        self.classifier = nn.Linear(features, self.n_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.body(x.flatten(1)))


class Residual(nn.Module):
    """``x + f(x)``."""

    def __init__(self, f: nn.Module) -> None:
        super().__init__()
        self.f = f

    def forward(self, x: Tensor) -> Tensor:
        return x + self.f(x)
