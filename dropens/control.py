"""Switch every dropout layer of a model at once: deterministic pass, MC sampling, or member k.

:func:`eval_multiplier` also forces what the deterministic pass multiplies by (one or keep).

Each context manager saves the switch (:class:`dropens.layers.Switch`: mode, members, eval
multiplier, mask bank) of every :class:`dropens.layers.Dropout` in the model and restores it on exit
(also on exceptions). They do not touch ``model.training``: MC dropout at test time is
``model.eval()`` (BatchNorm uses running statistics) plus ``mc(model)``; :func:`preserved` saves and
restores both, around any evaluation.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

from torch import Tensor, nn

from dropens.conversion import torch_dropout_modules
from dropens.errors import ConfigError, check_choice
from dropens.layers import EVAL_MULTIPLIERS, Dropout


def dropout_layers(model: nn.Module) -> list[Dropout]:
    """Every :class:`dropens.layers.Dropout` in ``model``, in ``model.modules()`` order."""
    return [m for m in model.modules() if isinstance(m, Dropout)]


def require_layers(model: nn.Module, what: str) -> list[Dropout]:
    """The dropout layers of ``model`` with ``p > 0``, which ``what`` (e.g. ``"MC dropout"``) needs.

    Raises:
        ConfigError: none, in one line that says which of two different things is wrong: the
            model *has* dropens dropout layers, all at ``p = 0`` (set ``dropout.p > 0``); or it has
            *no* dropens dropout layer at all, whatever ``dropout.p`` is, because its selected
            dropout sites do not occur in this architecture (e.g. ``model=mlp model.widths=[]``
            with the default site ``hidden``: no hidden layer), or it was not built with
            :class:`dropens.layers.Dropout`. Names the model class and the sites.
    """
    layers = dropout_layers(model)
    live = [m for m in layers if m.p > 0]
    if live:
        return live
    name = type(model).__name__
    backbone = next((m for m in model.modules() if hasattr(m, "selected_sites")), None)
    if backbone is not None and backbone is not model:
        name += f" (backbone {type(backbone).__name__})"
    if layers:
        sites = ", ".join(m.site for m in layers)
        raise ConfigError(
            f"{what} needs dropout, but every dropens Dropout layer of {name} ({len(layers)}: "
            f"{sites}) has p=0, so it would silently run the deterministic pass; set dropout.p > 0"
        )
    if backbone is not None:
        selected = list(backbone.selected_sites)
        occurs = getattr(backbone, "_occurrences", {})  # site -> occurrences in the architecture
        present = [s for s in backbone.dropout_sites if occurs.get(s, 0) > 0]
        p = getattr(backbone, "_spec", {}).get("p")
        p_text = f"dropout.p={p} is not the problem" if p else "dropout.p alone cannot fix it"
        raise ConfigError(
            f"{what} needs dropout, but {name} has no dropout layer at all: none of its selected "
            f"dropout sites {selected} (model.dropout_sites) occurs in this architecture, so "
            f"{p_text}; select a site it has ({', '.join(present) or 'none'}), or change the "
            "architecture so that a selected site occurs"
        )
    torch_dropout = len(torch_dropout_modules(model))
    if torch_dropout:
        raise ConfigError(
            f"{what} needs dropout, but {name} has no dropens.layers.Dropout layer: its "
            f"{torch_dropout} torch dropout module(s) are not switched by dropens; convert them "
            "first with dropens.convert(model)"
        )
    raise ConfigError(
        f"{what} needs dropout, but {name} has no dropout layer at all, so dropout.p is not the "
        "problem; add sites with dropens.add_dropout(model, after=[module names]) or build it "
        "with dropens.layers.Dropout at p > 0"
    )


@contextmanager
def preserved(model: nn.Module) -> Iterator[nn.Module]:
    """Restore on exit (also on exceptions) what running a model can change: ``model.training``
    of every submodule and the switch (:class:`dropens.layers.Switch`: mode, members, eval
    multiplier, mask bank) of every dropout layer. Every context manager here, and every
    evaluation (:func:`dropens.inference.predict`), saves and restores through this one place."""
    layers = dropout_layers(model)
    switches = [m.switch for m in layers]
    training = [(m, m.training) for m in model.modules()]
    try:
        yield model
    finally:
        for m, switch in zip(layers, switches):
            if m.switch.bank is not switch.bank:  # cached rows belong to the bank in use
                m._bank_cache.clear()
            m.switch = switch
        for m, flag in training:
            m.training = flag


@contextmanager
def _switched(layers: list[Dropout], mode: str, members=None, assignment=None) -> Iterator[None]:
    saved = [m.switch for m in layers]
    try:
        for m in layers:
            if members is not None:
                m.set_members(members, assignment)
            m.set_mode(mode)
        yield
    finally:
        for m, switch in zip(layers, saved):
            m.switch = switch


@contextmanager
def deterministic(model: nn.Module) -> Iterator[nn.Module]:
    """Every dropout layer in ``off`` mode (weight scaling): the deterministic pass, even in train()."""
    with _switched(dropout_layers(model), "off"):
        yield model


@contextmanager
def mc(model: nn.Module) -> Iterator[nn.Module]:
    """Every dropout layer samples fresh masks, even in ``model.eval()`` (MC dropout, Gal & Ghahramani 2016).

    Raises:
        ConfigError: the model has no dropens dropout layer with ``p > 0``.
    """
    with _switched(require_layers(model, "MC dropout"), "sample"):
        yield model


@contextmanager
def member(
    model: nn.Module, k: int | Sequence[int], assignment: Tensor | None = None
) -> Iterator[nn.Module]:
    """Every dropout layer uses the fixed mask of subnetwork ``k``.

    Args:
        k: one member (same mask for the whole batch), or a sequence of ``M`` members whose inputs
            are stacked on the batch axis as ``(m b)`` (batch ``M * B``).
        assignment: optional ``[N]`` long tensor; example ``n`` goes through member ``k[assignment[n]]``.

    Raises:
        ConfigError: no dropout layer, or ``k`` outside ``[0, n_members)``.
    """
    with _switched(require_layers(model, "member masks"), "member", k, assignment):
        yield model


@contextmanager
def eval_multiplier(model: nn.Module, multiplier: str) -> Iterator[nn.Module]:
    """Force the multiplier of every dropout layer's deterministic pass (``off`` mode).

    ``"one"``: identity at every layer; ``"keep"``: multiply by the layer's ``keep = 1 - p``;
    whatever the layer's ``scale``. So for ``scale="inverted"`` ``"one"`` is the usual
    deterministic pass and ``"keep"`` the mismatched one (scaled twice), and for ``scale="none"``
    ``"keep"`` is the usual one (weight scaling) and ``"one"`` the mismatched one (never scaled).
    Only the ``off`` mode changes (combine with :func:`deterministic`, or ``model.eval()``);
    shapes are unchanged. Previous multipliers are restored on exit (also on exceptions).

    Raises:
        ConfigError: ``multiplier`` not one of ``one`` | ``keep``.
    """
    check_choice("eval multiplier", multiplier, EVAL_MULTIPLIERS)
    layers = dropout_layers(model)
    saved = [m.switch for m in layers]
    try:
        for m in layers:
            m.set_eval_multiplier(multiplier)
        yield model
    finally:
        for m, switch in zip(layers, saved):
            m.switch = switch


def set_n_members(model: nn.Module, n_members: int | None) -> None:
    """Declare a finite family of ``n_members`` subnetworks (member k must lie in [0, n_members))."""
    for m in dropout_layers(model):
        m.n_members = n_members


@contextmanager
def explicit_masks(model: nn.Module, banks: Mapping[Dropout, Tensor]) -> Iterator[nn.Module]:
    """Give dropout layers explicit mask banks; in ``member`` mode, member ``k`` is row ``k``.

    Combine with :func:`member` to run the masks: ``with explicit_masks(model, banks),
    member(model, range(M)): model(layout.stack(x, M))`` runs the ``M`` masks stacked ``(m b)``.
    Layers not in ``banks`` keep what they had (their seeded member masks, unless a bank was set
    before). Previous banks are restored on exit (also on exceptions).

    Args:
        banks: ``{layer: [M_layer, *noise unit shape]}`` unit-mean noise per layer of ``model``
            (see :meth:`dropens.layers.Dropout.set_bank`).

    Raises:
        ConfigError: a key that is not a dropout layer of ``model``, or a malformed bank.
    """
    layers = dropout_layers(model)
    for layer in banks:
        if not any(layer is m for m in layers):
            raise ConfigError(
                f"explicit mask bank given for {type(layer).__name__} {getattr(layer, 'site', '')!r}, "
                f"which is not a dropout layer of {type(model).__name__}"
            )
    saved = [(m, m.bank) for m in banks]
    try:
        for m, bank in banks.items():
            m.set_bank(bank)
        yield model
    finally:
        for m, bank in saved:
            m.set_bank(bank)  # (also empties the layer's cache of the bank's rows)


@contextmanager
def mode(model: nn.Module, mode: str) -> Iterator[nn.Module]:
    """Every dropout layer of ``model`` (whatever its ``p``) in ``mode`` (``sample`` | ``member``
    | ``off``) for the block; unlike :func:`mc` it also accepts a model without dropout."""
    with _switched(dropout_layers(model), mode):
        yield model
