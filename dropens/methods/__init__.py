"""Training methods: LightningModules over the same backbone.

- ``plain``: dropout layers at p = 0;
- ``dropout``: masks sampled per example and step (objective ``member`` or ``ensemble``);
- ``subnets``: ``K`` fixed-mask subnetworks sharing every weight (batching ``repeat`` or
  ``partition``, objective ``member`` or ``ensemble``);
- ``ensemble``: ``K`` independent backbones trained together, vectorized (``torch.func``);
- ``explicit``: no masks: the deterministic pass plus dropout's explicit regularizer at every
  dropout site (Wei, Kakade & Ma 2020);
- ``packed``: Packed-Ensembles (Laurent et al. 2023): ``M`` members as the groups of one widened
  backbone's grouped layers, no dropout.

Every method declares its test-time evaluation plan in ``eval_strategies`` (see
:func:`dropens.evaluation.evaluate`).
"""

from __future__ import annotations

from dropens.errors import bad_choice
from dropens.methods.base import Method
from dropens.methods.dropout import DropoutMethod
from dropens.methods.ensemble import Ensemble, StackedEnsemble
from dropens.methods.explicit import Explicit
from dropens.methods.packed import Packed, PackedEnsemble
from dropens.methods.plain import Plain
from dropens.methods.subnets import Subnets

METHODS: dict[str, type[Method]] = {
    cls.name: cls for cls in (Plain, DropoutMethod, Subnets, Ensemble, Explicit, Packed)
}


def method_class(name: str) -> type[Method]:
    """The Method subclass registered as ``name`` (the ``method.name`` config value)."""
    if name not in METHODS:
        raise bad_choice("method.name", name, sorted(METHODS))
    return METHODS[name]


__all__ = [
    "METHODS",
    "DropoutMethod",
    "Ensemble",
    "Explicit",
    "Method",
    "Packed",
    "PackedEnsemble",
    "Plain",
    "StackedEnsemble",
    "Subnets",
    "method_class",
]
