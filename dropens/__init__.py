"""dropens: is dropout a regularizer, or an ensemble of subnetworks? Measured.

Where each concept lives (see README "Map of the code"):

- ``dropens.masks``     mask distributions x structures x scaling (pure functions)
- ``dropens.layers``    the ``Dropout`` module (modes sample | member | off)
- ``dropens.control``   switch every dropout layer of a model (deterministic / mc / member)
- ``dropens.models``    backbones shared unchanged by every training method
- ``dropens.data``      LightningDataModules (offline-first)
- ``dropens.methods``   LightningModules: how a backbone is trained
- ``dropens.metrics``   calibration, diversity, magnitude, statistics over seeds
- ``dropens.results``   the run record on disk
- ``dropens.tracking``  W&B / CSV logger wiring
- ``dropens.cli``       ``dropens train | study | report``

Your own model (README "Use dropens on your own model"): ``dropens.convert(model)`` turns its torch dropout modules
into dropens layers, ``dropens.add_dropout(model, after=[...])`` adds sites,
``dropens.evaluate_model(model, data)`` gives a run record's metrics for any weights.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["add_dropout", "convert", "evaluate_model"]

_LAZY = {
    "convert": ("dropens.conversion", "convert"),
    "add_dropout": ("dropens.conversion", "add_dropout"),
    "evaluate_model": ("dropens.external", "evaluate_model"),
}


def __getattr__(name: str) -> Any:
    """``dropens.convert`` etc., imported on first use (``import dropens`` stays free of torch)."""
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'dropens' has no attribute {name!r}")
