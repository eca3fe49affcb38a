"""Multi-layer perceptron: the MNIST-1D reference MLP and its variants."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from torch import Tensor, nn

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
    ) -> None:
        super().__init__(input_shape, n_classes, sites, dropout)
        widths = [positive_int(f"model.widths[{i}]", w) for i, w in enumerate(widths)]
        features = math.prod(self.input_shape)
        layers: list[nn.Module] = [self.site("input", (features,))]
        for width in widths:
            layers.append(nn.Linear(features, width, bias=not batchnorm))
            if batchnorm:
                layers.append(nn.BatchNorm1d(width))
            layers += [nn.ReLU(), self.site("hidden", (width,))]
            features = width
        layers.append(self.site("head", (features,)))  # last: indices of the others do not move
        self.body = nn.Sequential(*layers)
        self.classifier = nn.Linear(features, self.n_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.body(x.flatten(1)))
