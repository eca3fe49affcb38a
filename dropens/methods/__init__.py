"""Training methods: LightningModules over the same backbone.

- ``plain``: dropout layers at p = 0;
- ``dropout``: masks sampled per example and step (objective ``member`` or ``ensemble``);
- ``subnets``: ``K`` fixed-mask subnetworks sharing every weight (batching ``repeat`` or
  ``partition``, objective ``member`` or ``ensemble``);
- ``ensemble``: ``K`` independent backbones trained together, vectorized (``torch.func``);
- ``masksembles``: ``K`` fixed binary masks per site with an overlap set by a scale ``S``
  (Durasov et al. 2021), sharing every weight;
- ``explicit``: no masks: the deterministic pass plus dropout's explicit regularizer at every
  dropout site (Wei, Kakade & Ma 2020).

Every method declares its test-time evaluation plan in ``eval_strategies`` (see
:func:`dropens.evaluation.evaluate`).
"""

from __future__ import annotations

from dropens.errors import bad_choice
from dropens.methods.base import Method
from dropens.methods.dropout import DropoutMethod
from dropens.methods.ensemble import Ensemble, StackedEnsemble
from dropens.methods.explicit import Explicit
from dropens.methods.masksembles import Masksembles
from dropens.methods.plain import Plain
from dropens.methods.subnets import Subnets

METHODS: dict[str, type[Method]] = {
    cls.name: cls for cls in (Plain, DropoutMethod, Subnets, Ensemble, Explicit, Masksembles)
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
    "Masksembles",
    "Method",
    "Plain",
    "StackedEnsemble",
    "Subnets",
    "method_class",
]
