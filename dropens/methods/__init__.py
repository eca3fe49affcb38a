"""Training methods: LightningModules over the same backbone.

- ``plain``: dropout layers at p = 0;
- ``dropout``: masks sampled per example and step (objective ``member`` or ``ensemble``).
"""

from __future__ import annotations

from dropens.errors import bad_choice
from dropens.methods.base import Method
from dropens.methods.dropout import DropoutMethod
from dropens.methods.plain import Plain

METHODS: dict[str, type[Method]] = {cls.name: cls for cls in (Plain, DropoutMethod)}


def method_class(name: str) -> type[Method]:
    """The Method subclass registered as ``name`` (the ``method.name`` config value)."""
    if name not in METHODS:
        raise bad_choice("method.name", name, sorted(METHODS))
    return METHODS[name]


__all__ = ["METHODS", "DropoutMethod", "Method", "Plain", "method_class"]
