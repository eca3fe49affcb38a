"""``plain``: the backbone with every dropout layer at p = 0 (same layers, same parameter count)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from torch import nn

from dropens.methods.base import Method
from dropens.models import build_model


class Plain(Method):
    """No dropout: the regularization-free reference every dropout variant is compared with."""

    name: ClassVar[str] = "plain"

    @classmethod
    def build_backbone(
        cls, cfg: Mapping[str, Any], input_shape: tuple[int, ...], n_classes: int
    ) -> nn.Module:
        return build_model(cfg["model"], {**cfg["dropout"], "p": 0.0}, input_shape, n_classes)
