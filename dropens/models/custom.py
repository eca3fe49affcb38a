"""``model=custom``: any PyTorch model, built by its own factory and given dropens dropout sites.

::

    dropens train model=custom model.target=torchvision.models:resnet18 \\
        model.kwargs.num_classes=2 model.dropout_after=[layer4] data=folder data.root=PATH

``model.target`` names a factory (``package.module:factory`` or ``package.module.factory``), built
with Hydra's ``instantiate`` from ``model.kwargs`` (nested ``_target_`` nodes work too); a factory
that takes ``num_classes`` and is not given it gets the data's number of classes. The model is then
given dropens sites (:mod:`dropens.conversion`), two kinds, selected by ``model.dropout_sites``
(default both):

- ``own``: every torch / torchvision dropout module of the model, converted
  (:func:`dropens.convert`) with the run's ``dropout.p``, ``dropout.dist`` and ``dropout.scale``
  (so ``method=plain`` sets them to 0 and a study can sweep ``dropout.p``); each keeps its own
  structure (``Dropout``: element, ``Dropout2d``: channel, ``DropBlock2d``: block and its size).
  Not selected: converted at ``p = 0`` (off for every method, same modules);
- ``after``: one new site after each module of ``model.dropout_after`` (names or glob patterns,
  :func:`dropens.add_dropout`) with the whole ``dropout`` spec (``structure`` too; a site whose
  output is flat ``(N, F)`` gets ``element``, as the flat sites of the built-in backbones do).

The dry forward of two examples at build time refuses, with one line, a factory that cannot be
imported or called, a model whose logits are not ``[N, n_classes]``, a reused module after which
dropout is asked for, and a structure that does not fit a site. Models whose ``forward`` returns a
named tuple with ``logits`` in training (torchvision's GoogLeNet / Inception with auxiliary heads)
are trained on ``logits`` alone.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from dropens import control
from dropens.conversion import add_dropout, convert, torch_dropout_modules
from dropens.errors import ConfigError
from dropens.models.base import Backbone, register_model

_ALPHA = (nn.AlphaDropout, nn.FeatureAlphaDropout)


def _first_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return f"{type(err).__name__}: {text}"[:300]


def import_target(target: Any) -> Any:
    """The object ``target`` names (``package.module:name`` or ``package.module.name``).

    Raises:
        ConfigError: one line naming ``model.target`` and why it cannot be imported.
    """
    from hydra.utils import get_object

    if not isinstance(target, str) or not target.strip() or target.strip() in ("???", "null"):
        raise ConfigError(
            f"model.target={target!r} is not valid; give the factory as package.module:factory, "
            "e.g. model.target=torchvision.models:resnet18"
        )
    path = target.strip().replace(":", ".")
    try:
        return get_object(path)
    except Exception as err:
        raise ConfigError(
            f"model.target={target!r} cannot be imported ({_first_line(err)}); give "
            "package.module:factory of an installed package or a module on PYTHONPATH"
        ) from None


def build_target(target: str, kwargs: Mapping[str, Any] | None, n_classes: int) -> nn.Module:
    """``factory(**kwargs)`` through ``hydra.utils.instantiate`` (``num_classes`` filled in)."""
    from hydra.utils import instantiate

    factory = import_target(target)
    kwargs = dict(kwargs or {})
    if not isinstance(kwargs, dict):
        raise ConfigError(f"model.kwargs={kwargs!r} is not valid; give a mapping")
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    if "num_classes" in params and "num_classes" not in kwargs:
        kwargs["num_classes"] = int(n_classes)
    node = {"_target_": target.strip().replace(":", "."), "_convert_": "all", **kwargs}
    try:
        model = instantiate(node)
    except Exception as err:
        cause = err.__cause__ or err
        raise ConfigError(
            f"model.target={target!r} with model.kwargs={kwargs} fails to build "
            f"({_first_line(cause)})"
        ) from None
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"model.target={target!r} returned a {type(model).__name__}, not a torch.nn.Module"
        )
    return model


def logits_of(out: Any) -> Tensor:
    """The logits of a model output: a tensor, or a named tuple's ``logits`` field."""
    if isinstance(out, Tensor):
        return out
    logits = getattr(out, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    raise ConfigError(
        f"the model returned a {type(out).__name__}, not logits; model=custom needs a model whose "
        "forward returns a tensor [N, n_classes] (or a named tuple with logits)"
    )


@register_model("custom")
class Custom(Backbone):
    """A model built by ``target(**kwargs)`` with dropens sites (module docstring).

    Args:
        target: the factory, ``package.module:factory``.
        kwargs: its keyword arguments.
        dropout_after: module names / glob patterns to add a dropout site after.
    """

    dropout_sites: ClassVar[tuple[str, ...]] = ("own", "after")
    default_sites: ClassVar[tuple[str, ...]] = ("own", "after")

    def __init__(
        self,
        input_shape: Sequence[int],
        n_classes: int,
        sites: Sequence[str] | None = None,
        dropout: Mapping[str, Any] | None = None,
        target: str | None = None,
        kwargs: Mapping[str, Any] | None = None,
        dropout_after: Sequence[str] | None = (),
    ) -> None:
        super().__init__(input_shape, n_classes, sites=sites, dropout=dropout)
        if dropout_after is None:
            dropout_after = []
        if isinstance(dropout_after, str) or not isinstance(dropout_after, Sequence):
            raise ConfigError(
                f"model.dropout_after={dropout_after!r} is not valid; give a list of module names "
                "or glob patterns, e.g. [layer4]"
            )
        self.target = target
        self.net = build_target(target, kwargs, n_classes)
        spec = self._spec
        example = torch.zeros(2, *self.input_shape)
        own = {k: spec[k] for k in ("dist", "scale")}
        own["p"] = spec["p"] if "own" in self.selected_sites else 0.0
        alpha = [
            n for n, m in torch_dropout_modules(self.net) if isinstance(m, _ALPHA) and own["p"] > 0
        ]
        if alpha:
            raise ConfigError(
                f"model.target={target!r} has alpha dropout ({alpha[0]}), which keeps SELU's mean "
                "and variance: not a mask dropens can switch; use model.dropout_sites=[after] "
                "(its own dropout off) or convert it yourself with dropens.convert(structure=...)"
            )
        converted = convert(self.net, **own)
        added: list[str] = []
        if dropout_after and "after" in self.selected_sites:
            added = add_dropout(self.net, list(dropout_after), example=example, **spec)
        self._occurrences = {"own": len(converted), "after": len(dropout_after)}
        self.converted, self.added = converted, added
        self._check_forward(example)

    def _check_forward(self, example: Tensor) -> None:
        """One eval-mode forward of zeros: logits ``[2, n_classes]`` and every structure fits."""
        with control.preserved(self), torch.no_grad(), torch.random.fork_rng(devices=[]):
            self.eval()
            try:
                out = self(example)
            except ConfigError:
                raise
            except Exception as err:
                raise ConfigError(
                    f"model.target={self.target!r} does not run on the data's inputs "
                    f"{tuple(self.input_shape)} ({_first_line(err)})"
                ) from None
        if out.dim() != 2 or out.shape != (len(example), self.n_classes):
            raise ConfigError(
                f"model.target={self.target!r} returns {tuple(out.shape)} for inputs "
                f"{tuple(example.shape)}, but the data has {self.n_classes} classes: expected "
                f"({len(example)}, {self.n_classes}); set model.kwargs.num_classes={self.n_classes}"
            )

    def forward(self, x: Tensor) -> Tensor:
        return logits_of(self.net(x))

    def extra_repr(self) -> str:
        left = len(torch_dropout_modules(self.net))
        return f"target={self.target!r}, own={len(self.converted)}, after={self.added}" + (
            f", unconverted={left}" if left else ""
        )
