"""Training methods: LightningModules over the same backbone.

- ``plain``: dropout layers at p = 0;
- ``dropout``: masks sampled per example and step (objective ``member`` or ``ensemble``);
- ``subnets``: ``K`` fixed-mask subnetworks sharing every weight (batching ``repeat`` or
  ``partition``, objective ``member`` or ``ensemble``);
- ``ensemble``: ``K`` independent backbones trained together, vectorized (``torch.func``);
- ``batchensemble``: ``K`` members sharing every weight up to rank-one fast weights, trained on
  the batch tiled over members (Wen, Tran & Ba 2020);
- ``masksembles``: ``K`` fixed binary masks per site with an overlap set by a scale ``S``
  (Durasov et al. 2021), sharing every weight;
- ``explicit``: no masks: the deterministic pass plus dropout's explicit regularizer at every
  dropout site (Wei, Kakade & Ma 2020);
- ``mimo``: ``M`` subnetworks of one multi-input multi-output backbone (Havasi et al. 2021): first
  layer widened to ``M`` inputs, ``M`` classifier heads, each input slot its own example;
- ``packed``: Packed-Ensembles (Laurent et al. 2023): ``M`` members as the groups of one widened
  backbone's grouped layers (no dropout unless ``member_dropout``).

Every method declares its test-time evaluation plan in ``eval_strategies`` (see
:func:`dropens.evaluation.evaluate`).
"""

from __future__ import annotations

from dropens.errors import bad_choice
from dropens.methods.base import Method
from dropens.methods.batchensemble import BatchEnsemble
from dropens.methods.dropout import DropoutMethod
from dropens.methods.ensemble import Ensemble, StackedEnsemble
from dropens.methods.explicit import Explicit
from dropens.methods.masksembles import Masksembles
from dropens.methods.mimo import Mimo, MimoNet
from dropens.methods.packed import Packed, PackedEnsemble
from dropens.methods.plain import Plain
from dropens.methods.subnets import Subnets

METHODS: dict[str, type[Method]] = {
    cls.name: cls
    for cls in (
        Plain,
        DropoutMethod,
        Subnets,
        Ensemble,
        Explicit,
        Masksembles,
        BatchEnsemble,
        Mimo,
        Packed,
    )
}


def method_class(name: str) -> type[Method]:
    """The Method subclass registered as ``name`` (the ``method.name`` config value)."""
    if name not in METHODS:
        raise bad_choice("method.name", name, sorted(METHODS))
    return METHODS[name]


__all__ = [
    "METHODS",
    "BatchEnsemble",
    "DropoutMethod",
    "Ensemble",
    "Explicit",
    "Masksembles",
    "Method",
    "Mimo",
    "MimoNet",
    "Packed",
    "PackedEnsemble",
    "Plain",
    "StackedEnsemble",
    "Subnets",
    "method_class",
]
