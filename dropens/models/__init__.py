"""Backbones shared unchanged by every training method, and :func:`build_model`.

Every model maps ``x`` of shape ``(N, *input_shape)`` to logits ``[N, n_classes]`` and carries
:class:`dropens.layers.Dropout` layers at its selected dropout *sites* (see
:mod:`dropens.models.base`). All models are ``torch.func`` friendly (``functional_call``,
``vmap``, ``stack_module_state``): no in-place ops, no data-dependent Python control flow.

=========  ===========================================  ==============================
name       model                                         sites (flat ones: element only)
=========  ===========================================  ==============================
mlp        :class:`MLP` (MNIST-1D reference MLP)         input*, hidden*
cnn1d      :class:`CNN1d` (MNIST-1D reference CNN)       input, conv, head*
cnn2d      :class:`CNN2d` (small CNN for 28x28)          input, conv, hidden*
resnet20   :class:`CifarResNet` (He et al. 2016)         block, head*
wrn        :class:`WideResNet` (Zagoruyko 2016)          block, head*
custom     :class:`Custom`: any model from a factory     own (its dropout modules),
           (``model.target``), :mod:`.custom`            after (``model.dropout_after``)
=========  ===========================================  ==============================

(* flat site: input ``(N, F)``.)
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from dropens.config import plain_dict
from dropens.errors import ConfigError, bad_choice
from dropens.models.base import (
    DROPOUT_FIELDS,
    MODELS,
    Backbone,
    dropout_spec,
    register_model,
)
from dropens.models.cnn import CNN1d, CNN2d
from dropens.models.custom import Custom
from dropens.models.mlp import MLP
from dropens.models.resnet import CifarResNet, WideResNet

__all__ = [
    "DROPOUT_FIELDS",
    "MLP",
    "MODELS",
    "Backbone",
    "CNN1d",
    "CNN2d",
    "CifarResNet",
    "Custom",
    "WideResNet",
    "architecture_fields",
    "build_model",
    "count_parameters",
    "dropout_spec",
    "register_model",
]

# Constructor arguments of every Backbone that do not come from the model config node.
_RESERVED = ("self", "input_shape", "n_classes", "sites", "dropout")


def architecture_fields(cls: type[Backbone]) -> tuple[str, ...]:
    """The architecture fields of model ``cls`` (its constructor arguments from the config)."""
    params = inspect.signature(cls.__init__).parameters
    return tuple(name for name in params if name not in _RESERVED)


def build_model(
    model_cfg: Mapping[str, Any],
    dropout_cfg: Mapping[str, Any],
    input_shape: Sequence[int],
    n_classes: int,
) -> nn.Module:
    """Build the backbone of ``model_cfg`` with dropout layers of spec ``dropout_cfg``.

    Args:
        model_cfg: a ``configs/model/<name>.yaml`` node: ``name``, architecture fields, and
            ``dropout_sites`` (the selected sites; default: the model's ``default_sites``).
        dropout_cfg: a ``configs/dropout`` node: ``p, dist, structure, scale, block_size,
            share_channels`` (the :class:`dropens.layers.Dropout` arguments).
        input_shape: per-example input shape of the data, without the batch axis.
        n_classes: number of logits.

    Returns:
        A module mapping ``(N, *input_shape)`` to logits ``[N, n_classes]``.

    Raises:
        ConfigError (one line): unknown ``model.name``, field or dropout site; an input shape the
        model cannot take; a non-element structure with only flat sites; an invalid dropout spec.
    """
    cfg = plain_dict(model_cfg)
    name = cfg.pop("name", None)
    if name not in MODELS:
        raise bad_choice("model.name", name, MODELS)
    cls = MODELS[name]
    sites = cfg.pop("dropout_sites", None)
    if sites is not None and (isinstance(sites, str) or not isinstance(sites, Sequence)):
        raise ConfigError(
            f"model.dropout_sites={sites!r} is not valid; give a list of sites from: "
            f"{', '.join(cls.dropout_sites)}"
        )
    fields = architecture_fields(cls)
    for key in cfg:
        if key not in fields:
            valid = ", ".join((*fields, "dropout_sites"))
            raise ConfigError(f"model.{key} is not a field of model.name={name!r}; valid: {valid}")
    return cls(
        tuple(int(s) for s in input_shape),
        n_classes,
        sites=sites,
        dropout=plain_dict(dropout_cfg),
        **cfg,
    )


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Scalar parameters of ``model`` (``requires_grad`` ones only if ``trainable_only``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
