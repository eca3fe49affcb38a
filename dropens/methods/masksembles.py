"""``masksembles``: ``K`` fixed binary masks per dropout site with a controlled overlap.

Durasov, Bagautdinov, Baque & Fua (2021), "Masksembles for Uncertainty Estimation", CVPR; the
generator follows the authors' code (github.com/nikitadurasov/masksembles, ``common.py``:
``generate_masks_``, ``generate_masks``, ``generation_wrapper``). At a site with ``c`` units
(channels of a spatial input ``(N, C, *spatial)``, features of a flat one ``(N, F)``):

1. ``m = int(c / (S (1 - (1 - 1/S)^K)))`` ones per mask (:func:`ones_per_mask`), from the scale
   ``S`` (``method.scale``) and ``K`` (``method.k``);
2. an internal scale ``s`` by the reference's bisection on ``[0.8 S, 1.2 S]`` such that the
   expected number of used positions
   ``int(m s (1 - (1 - 1/s)^K))`` (:func:`expected_size`) is exactly ``c`` (:func:`internal_scale`);
3. ``K`` masks, each ``m`` positions drawn uniformly without replacement out of ``T = int(m s)``,
   redrawn until exactly ``c`` positions are used by at least one mask; the unused columns are
   dropped (:func:`draw_masks`): ``[K, c]``, every row with ``m`` ones, every column used.

Two masks then share ``m^2 / T ~ m / s`` positions in expectation (each position is in a mask with
probability ``1/s``): ``S = 1`` gives identical all-ones masks (the plain network, refused: use
``method=plain``), a large ``S`` nearly disjoint ones (``m -> c / K`` as ``S`` grows: close to
``K`` independent subnetworks of ``c / K`` units each). The reference redraws with the global NumPy
RNG; here the draws come from a ``torch.Generator`` seeded by :func:`masks_seed` (layer seed, ``c``,
``K``, ``S``), so the masks are a pure function of the layer seed, and they are stored as a
persistent buffer of every dropout layer (:meth:`dropens.layers.Dropout.set_member_masks`), so a
checkpoint holds them bit for bit.
The reference's bisection is deterministic too (the redraw loop forces the size it tests), so
searching ``s`` first and drawing once at the found ``s`` gives masks of the same distribution.

Mapping onto dropens (:mod:`dropens.layers`): the masks are the member masks of the dropout
layers, so ``control.member(model, k)``, the ``members`` strategy and every member-based strategy
apply. The method owns the mask spec: ``dropout.p``, ``dist``, ``structure``, ``scale`` and
``block_size`` are not used (as ``plain`` ignores ``dropout.p``). Every site's layer gets
``structure="channel"`` on spatial inputs (the paper's per-channel masks) and ``element`` on flat
ones, ``p = 1 - m / c`` (the fraction each mask drops; ``1 - keep`` with ``keep ~ 1/S`` for large
``K``), and ``scale="none"``: no rescaling, member ``k`` computes ``y = A_k * x`` as in the paper
(up to one float rounding of ``(1/keep) * keep``). The deterministic pass (not in the paper, whose
inference is the mean of the ``K`` members) is dropout's weight scaling ``y = keep * x``: the mean
of a mask over its units, as ``subnets`` reports it; the exact mean of the ``K`` masks differs per
unit (``n_j / K`` for a unit used by ``n_j`` masks).

Training (``method.batching``, the batching of :mod:`dropens.methods.subnets`): ``partition``
(default, the paper's: the batch is split among the ``K`` masks, each example through one mask,
the cost of one plain pass; the reference splits the batch into ``K`` contiguous groups, here
example ``b`` of step ``t`` goes through mask ``(b + t) mod K`` of the already shuffled batch, the
same in distribution and fine for any batch size) or ``repeat`` (every example through all ``K``
masks stacked ``(m b)``, as TorchUncertainty's wrappers repeat the batch; ``objective=ensemble``
there trains the averaged prediction). BatchNorm (``resnet20``, ``wrn28_10``) is shared as in
``subnets``: its batch statistics pool the rows of every mask of the step.

Sites: every selected dropout site needs ``c >= 10`` units and ``S <= 6`` (the reference refuses
both). The built-in backbones qualify at their default sites (``mlp`` hidden 100, ``cnn1d`` conv 25,
``cnn2d`` conv 32/64 and hidden 128, ``resnet20`` block 16-64, ``wrn28_10`` block 160-640), not at
the ``input`` sites of image or sequence models (1-3 channels: a one-line refusal). ``custom``
models work at every site whose input the masks fit; a module called twice on different shapes is
refused.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from dropens import control
from dropens.batching import probe
from dropens.errors import ConfigError
from dropens.layers import Dropout
from dropens.methods.base import require
from dropens.methods.subnets import Subnets, check_batching, check_k
from dropens.models import build_model

MIN_UNITS = 10  # the reference generator refuses sites with fewer channels
MAX_SCALE = 6.0  # ... and scales above 6
SEARCH_STEPS = 1000  # bisection steps of the reference (it converges in ~60)
MAX_DRAWS = 10_000  # redraws before giving up (the reference loops without end)
# The dropout spec every masksembles site is built with; p is a placeholder (> 0, so the layers
# exist and run), replaced per site by 1 - m / c when the masks are set.
SITE_SPEC = {
    "p": 0.5,
    "dist": "bernoulli",
    "structure": "element",
    "scale": "none",
    "block_size": None,
    "share_channels": False,
}


# ----------------------------------------------------------------------------- mask generation


def expected_size(m: int, s: float, k: int) -> int:
    """``int(m s (1 - (1 - 1/s)^k))``: expected positions used by ``k`` masks of ``m`` ones out of
    ``m s`` (each position is missed by a mask with probability ``1 - 1/s``), as the reference."""
    return int(m * s * (1 - (1 - 1 / s) ** k))


def ones_per_mask(c: int, k: int, scale: float) -> int:
    """``m = int(c / (S (1 - (1 - 1/S)^k)))``: the reference's inverse of :func:`expected_size`."""
    return int(int(c) / (scale * (1 - (1 - 1 / scale) ** k)))


def internal_scale(c: int, k: int, scale: float, site: str = "site") -> tuple[int, float]:
    """``(m, s)``: ones per mask and the internal scale whose :func:`expected_size` is ``c``.

    The reference's bisection (``generation_wrapper``) on ``[0.8 S, 1.2 S]``, first midpoint
    ``S``, the same sequence of midpoints, except that a midpoint ``s < 1`` (fewer than ``m``
    positions: the reference fails there, possible for ``S < 1.25``) counts as too small.
    ``expected_size`` increases with ``s`` (``s >= 1``), so the bisection finds ``c`` where it is
    reachable. ``S = 1`` gives ``s = 1``: ``m = c``, every mask all ones.

    Raises:
        ConfigError: one line when no ``s`` in the interval gives exactly ``c``.
    """
    m = ones_per_mask(c, k, scale)
    lo, hi = 0.8 * scale, 1.2 * scale
    for _ in range(SEARCH_STEPS):
        s = (lo + hi) / 2
        too_small = s < 1.0 or expected_size(m, s, k) < c
        if not too_small and expected_size(m, s, k) == c:
            return m, s
        if too_small:
            lo = s
        else:
            hi = s
    raise ConfigError(
        f"method=masksembles cannot make method.k={k} masks of {m} ones using exactly {c} units "
        f"at dropout site {site!r} with method.scale={scale}; change method.scale or method.k"
    )


def draw_masks(m: int, s: float, k: int, c: int, generator: torch.Generator) -> Tensor:
    """``[k, c]`` bool: ``k`` masks of ``m`` positions out of ``int(m s)``, uniform without
    replacement, redrawn until exactly ``c`` positions are used; unused columns dropped (in order).

    Raises:
        ConfigError: no draw of :data:`MAX_DRAWS` used exactly ``c`` positions.
    """
    total = int(m * s)
    for _ in range(MAX_DRAWS):
        order = torch.rand(k, total, generator=generator, dtype=torch.float64).argsort(dim=1)
        chosen = torch.zeros(k, total, dtype=torch.bool).scatter_(1, order[:, :m], True)
        used = chosen.any(dim=0)
        if int(used.sum()) == c:
            return chosen[:, used]
    raise ConfigError(
        f"method=masksembles drew {MAX_DRAWS} sets of {k} masks and none used exactly {c} units; "
        "change method.scale or method.k"
    )


def masks_seed(layer_seed: int, c: int, k: int, scale: float) -> int:
    """A 63-bit seed, a pure function of (layer seed, ``c``, ``K``, ``S``) (BLAKE2b, stable
    across processes and platforms)."""
    key = f"masksembles|{int(layer_seed)}|{int(c)}|{int(k)}|{float(scale)!r}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1


def generate_masks(c: int, k: int, scale: float, layer_seed: int = 0, site: str = "site") -> Tensor:
    """Masksembles' ``K`` masks of a site with ``c`` units: ``[k, c]`` bool, every row with the
    same number ``m`` of ones, every column used by at least one mask (module docstring).

    A pure function of its arguments (draws from a generator seeded by :func:`masks_seed`).

    Raises:
        ConfigError: one line: ``c < 10``, ``scale`` outside ``[1, 6]``, ``k < 1``, or no masks
            of exactly ``c`` used units (naming ``site``).
    """
    if c < MIN_UNITS:
        raise ConfigError(
            f"method=masksembles needs >= {MIN_UNITS} units (channels or features) at every "
            f"dropout site, but site {site!r} has {c}; remove it from model.dropout_sites"
        )
    require(
        1.0 <= scale <= MAX_SCALE,
        f"method.scale={scale!r} is not valid; choose a number in [1, {MAX_SCALE:g}]",
    )
    require(k >= 1, f"method.k={k!r} is not valid; choose an integer >= 1 (number of masks)")
    m, s = internal_scale(c, k, float(scale), site)
    generator = torch.Generator().manual_seed(masks_seed(layer_seed, c, k, scale))
    return draw_masks(m, s, k, c, generator)


def site_shapes(model: nn.Module, input_shape: Sequence[int]) -> dict[Dropout, tuple[int, ...]]:
    """``{layer: per-example input shape}`` of every dropout layer with ``p > 0`` that one
    deterministic eval-mode forward of a zero input ``(1, *input_shape)`` calls.

    Raises:
        ConfigError: a layer called on two different shapes (one mask set cannot fit both).
    """
    with control.preserved(model), torch.no_grad():
        model.eval()
        _, seen = probe(model, torch.zeros(1, *input_shape))
    shapes = {}
    for layer, found in seen.items():
        if len(found) > 1:
            raise ConfigError(
                f"method=masksembles needs one input shape per dropout site, but site "
                f"{layer.site!r} is called on {found}; select other sites"
            )
        shapes[layer] = found[0]
    return shapes


def install_masks(model: nn.Module, input_shape: Sequence[int], k: int, scale: float) -> None:
    """Give every dropout layer of ``model`` (built with :data:`SITE_SPEC`) its Masksembles masks:
    ``structure`` channel (spatial input) or element (flat), ``K`` masks over its ``c`` units from
    its own seed, ``p = 1 - m / c``, ``n_members = K``. Layers the forward never calls are set to
    ``p = 0`` (they do nothing)."""
    shapes = site_shapes(model, input_shape)
    for layer in control.require_layers(model, "method=masksembles"):
        shape = shapes.get(layer)
        if shape is None:
            layer.p = 0.0
            continue
        layer.structure = "channel" if len(shape) > 1 else "element"
        masks = generate_masks(shape[0], k, scale, int(layer.seed), layer.site)
        layer.set_member_masks(masks)


# ----------------------------------------------------------------------------- the method


def check_scale(scale: Any) -> float:
    """``method.scale`` as a float in ``(1, 6]``, else a one-line ConfigError."""
    valid = isinstance(scale, int | float) and not isinstance(scale, bool)
    require(
        valid and 1.0 < float(scale) <= MAX_SCALE,
        f"method.scale={scale!r} is not valid; choose a number in (1, {MAX_SCALE:g}] "
        "(1 gives K identical all-ones masks, the plain network: use method=plain; the "
        "reference generator refuses scales above 6)",
    )
    return float(scale)


class Masksembles(Subnets):
    """``K`` fixed Masksembles masks per dropout site, sharing every weight (module docstring).

    Reuses :class:`~dropens.methods.subnets.Subnets`' training (``partition`` and ``repeat``
    batching); only the masks differ. Evaluation: the ``K`` members (the paper's inference, their
    mean; every member alone: ``member<k>`` rows) and the deterministic pass (weight scaling by
    ``keep = m / c``, a probe, not the paper's). Validation: both; early stopping selects by the
    members' NLL.
    """

    name: ClassVar[str] = "masksembles"
    eval_strategies: ClassVar[tuple[str, ...]] = ("members", "deterministic")
    selection_label: ClassVar[str] = "members"

    @classmethod
    def validate(cls, cfg: Mapping[str, Any]) -> None:
        method = cfg["method"]
        k = check_k(method["k"])
        require(
            k >= 2,
            f"method.k={k} is not valid for method=masksembles; choose an integer >= 2 (one mask "
            "using every unit is the plain network)",
        )
        check_scale(method["scale"])
        check_batching(method)

    @classmethod
    def build_backbone(
        cls, cfg: Mapping[str, Any], input_shape: tuple[int, ...], n_classes: int
    ) -> nn.Module:
        """The shared backbone with Masksembles masks at its dropout sites (:func:`install_masks`);
        the ``dropout`` node is not used (module docstring)."""
        method = cfg["method"]
        k, scale = check_k(method["k"]), check_scale(method["scale"])
        backbone = build_model(
            cfg["model"], {**cfg["dropout"], **SITE_SPEC}, input_shape, n_classes
        )
        install_masks(backbone, input_shape, k, scale)
        return backbone
