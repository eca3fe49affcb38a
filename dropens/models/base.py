"""What every backbone shares: the model registry, dropout sites, and input-shape checks.

A *site* is a named kind of place in a network where a dropout layer can sit (``hidden``, ``conv``,
``block``...). A model lists its valid sites in ``dropout_sites``; at every occurrence ``i`` of a
selected site it inserts one :class:`dropens.layers.Dropout` named ``"<site>.<i>"``, and an
``nn.Identity`` at the occurrences of sites that are not selected (so module indices, and
``state_dict`` keys of parameters, do not move when the selection changes).

Sites whose input is flat ``(N, F)`` (listed in ``flat_sites``) always get ``structure="element"``,
the only structure defined there; the configured structure applies to spatial sites
``(N, C, *spatial)``. Layers are inserted even when ``p == 0`` (they return their input at once),
so ``plain`` and ``dropout`` training use the same backbone: same modules, same parameter count,
same initialization for the same seed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

from torch import nn

from dropens import masks
from dropens.errors import ConfigError, bad_choice
from dropens.layers import DROPOUT_FIELDS as DROPOUT_FIELDS  # re-exported: dropens.models
from dropens.layers import Dropout
from dropens.layers import dropout_spec as dropout_spec  # re-exported: dropens.models

MODELS: dict[str, type[Backbone]] = {}


def register_model(name: str) -> Callable[[type[Backbone]], type[Backbone]]:
    """Register a backbone class under ``name`` (the ``model.name`` config value)."""

    def add(cls: type[Backbone]) -> type[Backbone]:
        cls.name = name
        MODELS[name] = cls
        return cls

    return add


def shape_error(name: str, input_shape: Sequence[int], need: str) -> ConfigError:
    """One-line error: model ``name`` cannot take the data's ``input_shape``; ``need`` fits."""
    return ConfigError(
        f"model.name={name!r} does not fit the data's input shape {tuple(input_shape)}; "
        f"it needs {need}"
    )


def positive_int(field: str, value: Any) -> int:
    """``value`` as an int >= 1, else a one-line :class:`ConfigError` naming ``field``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{field}={value!r} is not valid; choose an integer >= 1")
    return int(value)


class Backbone(nn.Module):
    """Base class of the backbones: maps ``(N, *input_shape)`` to logits ``[N, n_classes]``.

    Args:
        input_shape: per-example input shape (without the batch axis).
        n_classes: number of output logits.
        sites: the selected dropout sites (each one of ``dropout_sites``).
        dropout: the ``Dropout`` arguments (:data:`DROPOUT_FIELDS`); ``None``: ``p = 0``.

    Subclasses set ``dropout_sites`` (valid sites), ``flat_sites`` (those with ``(N, F)`` input)
    and ``default_sites``, call ``super().__init__`` first, then build their layers with
    :meth:`site` at every occurrence of a site.
    """

    name: ClassVar[str] = "backbone"
    dropout_sites: ClassVar[tuple[str, ...]] = ()
    flat_sites: ClassVar[tuple[str, ...]] = ()
    default_sites: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        input_shape: Sequence[int],
        n_classes: int,
        sites: Sequence[str] | None = None,
        dropout: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.input_shape = tuple(int(s) for s in input_shape)
        self.n_classes = positive_int("n_classes", n_classes)
        if not self.input_shape or min(self.input_shape) < 1:
            raise shape_error(self.name, self.input_shape, "a non-empty shape of positive sizes")
        sites = self.default_sites if sites is None else sites
        selected: list[str] = []
        for site in sites:
            if site not in self.dropout_sites:
                raise bad_choice("model.dropout_sites", site, self.dropout_sites)
            if site not in selected:
                selected.append(site)
        self.selected_sites: tuple[str, ...] = tuple(selected)
        self._spec = dropout_spec(dropout)
        structure = self._spec["structure"]
        if structure != "element" and all(s in self.flat_sites for s in selected):
            raise ConfigError(
                f"dropout.structure={structure!r} needs spatial axes, but model {self.name!r} "
                f"dropout sites {list(selected)} are all flat; valid: element"
            )
        self._occurrences: dict[str, int] = {}

    def site(self, site: str, shape: Sequence[int]) -> nn.Module:
        """The layer at the next occurrence of ``site``, whose per-example input has ``shape``.

        A :class:`Dropout` named ``"<site>.<i>"`` if ``site`` is selected, else ``nn.Identity``.
        Checks at build time that the structure fits the feature map (e.g. ``block_size``).
        """
        if site not in self.dropout_sites:  # a bug in a model, not a user error
            raise KeyError(f"{type(self).__name__} has no dropout site {site!r}")
        i = self._occurrences.get(site, 0)
        self._occurrences[site] = i + 1
        if site not in self.selected_sites:
            return nn.Identity()
        spec = dict(self._spec)
        if site in self.flat_sites:
            spec["structure"] = "element"
        name = f"{site}.{i}"
        masks.check_input((1, *shape), spec["structure"], spec["block_size"], name)
        return Dropout(**spec, site=name)

    def extra_repr(self) -> str:
        return f"input_shape={self.input_shape}, n_classes={self.n_classes}"
