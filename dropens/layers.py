"""The generalized dropout layer: a thin ``nn.Module`` over :mod:`dropens.masks`.

Follows Srivastava et al. (2014) "Dropout: a simple way to prevent neural networks from
overfitting" for ``bernoulli``/``element``; Tompson et al. (2015) for ``channel`` (spatial dropout);
Ghiasi et al. (2018) "DropBlock" for ``block``; Srivastava et al. (2014, sec. 10) for ``gaussian``.

Mask modes (``Dropout.mode``; ``None`` = follow ``self.training``):

- ``sample``: a fresh mask every forward, from the global RNG (default in ``model.train()``);
- ``member``: the fixed mask of subnetwork ``k`` — a pure function of (layer seed, k, per-example
  shape), the same for every example, call, process and checkpoint reload (the layer seed is a
  buffer, so it is saved in ``state_dict``). Several members run batched on the batch axis
  ``(m b)``, or one member per example (``assignment``). With an *explicit mask bank* set
  (:meth:`Dropout.set_bank`, e.g. every mask of the layer for exhaustive inference), member ``k`` is
  row ``k`` of that bank instead of a seeded draw; else, with *fixed member masks* set
  (:meth:`Dropout.set_member_masks`, a persistent buffer saved in checkpoints, e.g. Masksembles'
  masks), member ``k`` is row ``k`` of those;
- ``off``: the deterministic pass (default in ``model.eval()``): identity for ``scale="inverted"``,
  multiply by ``keep`` for ``scale="none"`` (weight scaling). ``Dropout.eval_multiplier`` overrides
  that multiplier whatever ``scale`` is: ``"one"`` (identity) or ``"keep"`` (multiply by ``keep``),
  which makes the *mismatched* deterministic pass (e.g. an inverted-dropout net multiplied by
  ``keep`` once more) for the magnitude study.

Use :mod:`dropens.control` to switch every layer of a model at once.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from dropens import masks
from dropens.errors import ConfigError, InputError, bad_choice
from dropens.layout import unstack

MODES = ("sample", "member", "off")
# What the ``off`` mode multiplies by when ``Dropout.eval_multiplier`` is set (None: by ``scale``).
EVAL_MULTIPLIERS = masks.EVAL_MULTIPLIERS
SEED_RANGE = 2**63  # layer seeds are int64 buffers: valid seeds are integers in [0, 2**63)


def check_seed(seed: object) -> int:
    """A layer seed as ``int``: an integer (Python, NumPy or 0-dim integer tensor, not a bool) in
    ``[0, 2**63)``.

    Raises:
        InputError: one line naming ``seed``, the bad value and what is valid.
    """
    valid = "choose an integer in [0, 2**63), or None to draw one from the global RNG"
    if isinstance(seed, bool):
        raise InputError(f"Dropout seed={seed!r} is not valid (a bool); {valid}")
    try:
        value = operator.index(seed)  # type: ignore[arg-type]
    except TypeError:
        raise InputError(
            f"Dropout seed={seed!r} is not valid (a {type(seed).__name__}); {valid}"
        ) from None
    if not 0 <= value < SEED_RANGE:
        raise InputError(f"Dropout seed={value} is not valid (out of range); {valid}")
    return value


@dataclass(frozen=True)
class Switch:
    """The runtime switches of a :class:`Dropout` layer, as one value (not saved in checkpoints).

    :mod:`dropens.control` replaces a layer's switch for the length of a ``with`` block and puts
    the saved one back, so every way of running a model (deterministic, MC, member masks, the
    weight-scaling probe, explicit mask banks) saves and restores the same single thing.

    Attributes:
        mode: ``sample`` | ``member`` | ``off``, or ``None``: follow ``module.training``.
        members: the member masks in use (``member`` mode), stacked ``(m b)`` on the batch axis.
        assignment: optional ``[N]`` long: example ``n`` goes through ``members[assignment[n]]``.
        eval_multiplier: ``None`` (by ``scale``) | ``one`` | ``keep``: the deterministic pass's factor.
        bank: an explicit mask bank ``[M, *noise unit shape]`` (member ``k`` = row ``k``), or ``None``.
    """

    mode: str | None = None
    members: tuple[int, ...] = (0,)
    assignment: Tensor | None = None
    eval_multiplier: str | None = None
    bank: Tensor | None = None


class Dropout(nn.Module):
    """Generalized dropout ``y = A * x / keep`` (see :mod:`dropens.masks`).

    Args:
        p: **drop** probability in [0, 1) (as in ``torch.nn.Dropout``); ``keep = 1 - p``.
        dist: mask distribution: ``bernoulli`` | ``gaussian`` | ``uniform`` (or a registered one).
        structure: which units share a draw: ``element`` | ``channel`` | ``location`` | ``block``.
        scale: ``inverted`` (divide by keep in training) | ``none`` (weight scaling at eval).
        block_size: DropBlock width (``structure="block"``).
        share_channels: ``block`` only: one block mask for all channels of an example.
        seed: layer seed for member masks, an integer in ``[0, 2**63)`` (default: drawn from the
            global RNG at construction, so it follows the run's seed); stored as an int64 buffer
            and saved in checkpoints.
        site: a readable name of where the layer sits (used in error messages).

    Shapes: input ``(N, F)`` (``element`` only) or ``(N, C, *spatial)``; output the same.
    """

    def __init__(
        self,
        p: float = 0.5,
        dist: str = "bernoulli",
        structure: str = "element",
        scale: str = "inverted",
        block_size: int | None = None,
        share_channels: bool = False,
        seed: int | None = None,
        site: str = "dropout",
    ) -> None:
        super().__init__()
        masks.validate_spec(p, dist, structure, scale, block_size)
        if not isinstance(share_channels, bool):
            raise ConfigError(
                f"dropout.share_channels={share_channels!r} is not valid; choose one of: "
                "true, false"
            )
        seed = None if seed is None else check_seed(seed)
        self.p = float(p)
        self.dist = dist
        self.structure = structure
        self.scale = scale
        self.block_size = block_size
        self.share_channels = share_channels
        self.site = site
        if seed is None:
            seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))
        self.register_buffer("seed", torch.tensor(seed, dtype=torch.int64))
        # fixed binary member masks [K, units] (set_member_masks); None: not in the state_dict
        self.register_buffer("member_masks", None)
        self.switch = Switch()  # runtime switches (mode, members, ...): dropens.control sets them
        self.n_members: int | None = None  # set by methods with a finite family (subnets)
        self._bank_cache: dict[tuple, Tensor] = {}

    # read-only views of the switch (set them with the setters below or dropens.control)
    @property
    def mode(self) -> str | None:
        return self.switch.mode

    @property
    def members(self) -> tuple[int, ...]:
        return self.switch.members

    @property
    def assignment(self) -> Tensor | None:
        return self.switch.assignment

    @property
    def eval_multiplier(self) -> str | None:
        return self.switch.eval_multiplier

    @property
    def bank(self) -> Tensor | None:
        return self.switch.bank

    # ------------------------------------------------------------------ configuration

    @property
    def keep(self) -> float:
        return 1.0 - self.p

    def effective_mode(self) -> str:
        """``self.mode`` if set, else ``sample`` in training and ``off`` in eval."""
        if self.mode is not None:
            return self.mode
        return "sample" if self.training else "off"

    def set_mode(self, mode: str | None) -> None:
        if mode is not None and mode not in MODES:
            raise bad_choice("dropout mode", mode, MODES)
        self.switch = replace(self.switch, mode=mode)

    def set_eval_multiplier(self, multiplier: str | None) -> None:
        """What the ``off`` mode multiplies its input by: ``"one"`` (identity), ``"keep"``
        (``keep = 1 - p``), or ``None`` (by ``scale``: one for ``inverted``, keep for ``none``).

        Prefer :func:`dropens.control.eval_multiplier`, which restores the previous value on exit.
        """
        if multiplier is not None and multiplier not in EVAL_MULTIPLIERS:
            raise bad_choice("dropout eval multiplier", multiplier, EVAL_MULTIPLIERS)
        self.switch = replace(self.switch, eval_multiplier=multiplier)

    def set_members(self, members: Sequence[int] | int, assignment: Tensor | None = None) -> None:
        """Select member masks: ``members`` stacked ``(m b)`` on the batch axis, or, with
        ``assignment`` (``[N]`` long, values indexing ``members``), one member per example."""
        members = (members,) if isinstance(members, int) else tuple(int(k) for k in members)
        if not members:
            raise ConfigError("member list is empty; give at least one member index")
        lo, hi = min(members), max(members)
        if self.bank is not None:
            if lo < 0 or hi >= len(self.bank):
                bad = lo if lo < 0 else hi
                raise ConfigError(
                    f"member k={bad} is outside [0, {len(self.bank)}) of the explicit mask bank "
                    f"of layer {self.site!r}"
                )
        elif lo < 0 or (self.n_members is not None and hi >= self.n_members):
            bad = lo if lo < 0 else hi
            upper = self.n_members if self.n_members is not None else "inf"
            raise ConfigError(f"member k={bad} is outside [0, {upper}) (method.k={self.n_members})")
        self.switch = replace(self.switch, members=members, assignment=assignment)

    def noise_unit_shape(self, unit_shape: Sequence[int]) -> tuple[int, ...]:
        """Per-example shape of one mask for a per-example input ``unit_shape`` (no batch axis).

        ``element``: ``unit_shape``; ``channel``: ``(C, 1, ...)``; ``location``: ``(1, *spatial)``;
        ``block``: ``(C, *spatial)``, or ``(1, *spatial)`` with ``share_channels``.
        """
        unit_shape = tuple(int(s) for s in unit_shape)
        if self.structure == "block":
            return (1 if self.share_channels else unit_shape[0], *unit_shape[1:])
        return masks.noise_shape((1, *unit_shape), self.structure)[1:]

    def set_bank(self, bank: Tensor | None) -> None:
        """Use an explicit mask bank in ``member`` mode (``None``: back to the seeded member masks).

        Args:
            bank: ``[M, *noise unit shape]`` unit-mean noise (for inverted Bernoulli: 0 or 1/keep),
                as :func:`dropens.masks.sample_noise` would draw it for one example; ``scale`` is
                applied by the layer as for any mask. Member ``k`` is then ``bank[k]``, ``k`` in
                ``[0, M)``. The noise unit shape is checked against the input at forward.
                Not a buffer: a bank is an inference-time choice, not part of the model.

        Prefer :func:`dropens.control.explicit_masks`, which restores the previous bank on exit.
        """
        if bank is not None and (
            not isinstance(bank, Tensor)
            or not bank.is_floating_point()
            or bank.dim() < 2
            or len(bank) < 1
        ):
            got = tuple(bank.shape) if isinstance(bank, Tensor) else type(bank).__name__
            raise ConfigError(
                f"explicit mask bank of layer {self.site!r} has shape {got}; expected a float "
                "tensor [M, *noise unit shape] with M >= 1"
            )
        self.switch = replace(self.switch, bank=bank)
        self._bank_cache.clear()

    def set_member_masks(self, member_masks: Tensor | None) -> None:
        """Fix the member masks of this layer: ``member_masks`` ``[K, U]`` binary (0/1 or bool),
        every row with the same number ``m >= 1`` of ones, where ``U`` is the number of noise
        units per example (``prod`` of :meth:`noise_unit_shape`: the features of a flat input,
        the channels with ``structure="channel"``). ``None`` removes them (seeded masks again).

        Stored as a persistent bool buffer ``member_masks`` (saved in ``state_dict``, moved by
        ``.to()``); in ``member`` mode member ``k`` is row ``k`` (unless an explicit bank is set,
        :meth:`set_bank`). The layer then declares the family: ``n_members = K``, and
        ``p = 1 - m / U``, the fraction every mask drops, so that a mask ``A`` is the unit-mean
        noise ``A / keep`` and ``scale`` applies as for any mask (``none``: ``y = A * x``; the
        deterministic pass multiplies by ``keep = m / U``).

        Raises:
            ConfigError: one line if the masks are not ``[K, U]`` binary with equal row sums
                ``1 <= m <= U``.
        """
        if member_masks is None:
            self.member_masks = None
            return
        if (
            not isinstance(member_masks, Tensor)
            or member_masks.dim() != 2
            or not member_masks.numel()
        ):
            got = tuple(member_masks.shape) if isinstance(member_masks, Tensor) else member_masks
            raise ConfigError(
                f"member masks of layer {self.site!r} are {got!r}; expected a tensor [K, units]"
            )
        binary = member_masks.bool()
        if not torch.equal(binary.to(member_masks.dtype), member_masks):
            raise ConfigError(f"member masks of layer {self.site!r} are not binary (0/1)")
        ones = binary.sum(dim=1)
        m, units = int(ones[0]), binary.shape[1]
        if not bool((ones == m).all()) or m < 1:
            raise ConfigError(
                f"member masks of layer {self.site!r} have {sorted(set(ones.tolist()))} ones per "
                "mask; every mask needs the same number m >= 1"
            )
        self.member_masks = binary.to(self.seed.device).clone()
        self.n_members = len(binary)
        self.p = 1.0 - m / units
        self._bank_cache.clear()

    def extra_repr(self) -> str:
        s = f"p={self.p}, dist={self.dist}, structure={self.structure}, scale={self.scale}"
        if self.structure == "block":
            s += f", block_size={self.block_size}, share_channels={self.share_channels}"
        if self.mode is not None:
            s += f", mode={self.mode}"
        if self.eval_multiplier is not None:
            s += f", eval_multiplier={self.eval_multiplier}"
        if self.member_masks is not None:
            s += f", member_masks={tuple(self.member_masks.shape)}"
        return s

    # ------------------------------------------------------------------ member masks

    def member_bank(
        self, unit_shape: Sequence[int], device: torch.device, dtype: torch.dtype
    ) -> Tensor:
        """Unit-mean noise of ``self.members``: ``[M, *noise unit shape]`` (cached per shape/device).

        Rows of the explicit bank (:meth:`set_bank`) if one is set, else of the fixed member
        masks (:meth:`set_member_masks`) if set, else the seeded member masks.
        """
        explicit = self.bank is not None
        if not explicit and self.member_masks is not None:
            return self._fixed_rows(unit_shape, device, dtype)  # not cached: a buffer can change
        key = (
            "explicit" if explicit else int(self.seed),
            self.members,
            tuple(unit_shape),
            device,
            dtype,
        )
        bank = self._bank_cache.get(key)
        if bank is None:
            if explicit:
                bank = self._explicit_rows(unit_shape, device, dtype)
            else:
                spec = (self.p, self.dist, self.structure, self.block_size, self.share_channels)
                bank = torch.cat(
                    [masks.member_noise(int(self.seed), k, unit_shape, *spec) for k in self.members]
                ).to(device=device, dtype=dtype)
            if len(self._bank_cache) > 64:
                self._bank_cache.clear()
            self._bank_cache[key] = bank
        return bank

    def _explicit_rows(
        self, unit_shape: Sequence[int], device: torch.device, dtype: torch.dtype
    ) -> Tensor:
        assert self.bank is not None
        expected = self.noise_unit_shape(unit_shape)
        if tuple(self.bank.shape[1:]) != expected:
            raise ConfigError(
                f"explicit mask bank of layer {self.site!r} has masks of shape "
                f"{tuple(self.bank.shape[1:])}, but input {tuple(unit_shape)} with "
                f"structure={self.structure!r} needs {expected}"
            )
        hi = max(self.members)
        if hi >= len(self.bank):  # the bank was replaced after set_members
            raise ConfigError(
                f"member k={hi} is outside [0, {len(self.bank)}) of the explicit mask bank "
                f"of layer {self.site!r}"
            )
        m = len(self.members)
        if self.members == tuple(range(m)):  # the common case: a slice, no gather
            rows = self.bank[:m]
        else:
            rows = self.bank.index_select(0, torch.tensor(self.members, device=self.bank.device))
        return rows.to(device=device, dtype=dtype)

    def _fixed_rows(
        self, unit_shape: Sequence[int], device: torch.device, dtype: torch.dtype
    ) -> Tensor:
        """``[M, *noise unit shape]``: rows ``self.members`` of the fixed masks, as ``A / keep``."""
        assert self.member_masks is not None
        expected = self.noise_unit_shape(unit_shape)
        units = self.member_masks.shape[1]
        if math.prod(expected) != units:
            raise ConfigError(
                f"member masks of layer {self.site!r} have {units} units, but input "
                f"{tuple(unit_shape)} with structure={self.structure!r} has noise units {expected}"
            )
        if max(self.members) >= len(self.member_masks):  # n_members was changed after setting
            raise ConfigError(
                f"member k={max(self.members)} is outside [0, {len(self.member_masks)}) of the "
                f"fixed member masks of layer {self.site!r}"
            )
        index = torch.tensor(self.members, device=self.member_masks.device)
        rows = self.member_masks.index_select(0, index).reshape(len(self.members), *expected)
        return rows.to(device=device, dtype=dtype) * (1.0 / self.keep)

    def _member_noise(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(x viewed as the stacked members, their noise)``: ``[m, b, ...]`` and ``[m, 1, *unit]``
        for ``m`` stacked members, or ``x`` and one mask per example with an ``assignment``."""
        bank = self.member_bank(x.shape[1:], x.device, x.dtype)  # [M, *unit]
        if self.assignment is not None:
            return x, bank[self.assignment.to(x.device)]
        m = bank.shape[0]
        if x.shape[0] % m:
            raise ConfigError(
                f"batch of {x.shape[0]} is not a multiple of the {m} stacked members (layout (m b))"
            )
        return unstack(x, m), bank.unsqueeze(1)

    # ------------------------------------------------------------------ forward

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0:
            return x
        masks.check_input(x.shape, self.structure, self.block_size, self.site)
        mode = self.effective_mode()
        view, noise = self._member_noise(x) if mode == "member" else (x, None)
        y = masks.dropout(
            view,
            self.p,
            self.dist,
            self.structure,
            self.scale,
            self.block_size,
            self.share_channels,
            training=mode != "off",
            noise=noise,
            multiplier=self.eval_multiplier,
        )
        return y.reshape(x.shape) if view is not x else y


# The fields of a ``dropout`` config node: the :class:`dropens.layers.Dropout` arguments.
DROPOUT_FIELDS = ("p", "dist", "structure", "scale", "block_size", "share_channels")
# Keys a dropout node may carry that are not layer arguments (ignored here).
_DROPOUT_META = ("name",)


def dropout_spec(dropout_cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``Dropout`` keyword arguments of a ``dropout`` config node (``None``: ``p = 0``).

    Raises:
        ConfigError: a key that is not one of :data:`DROPOUT_FIELDS`, or an invalid spec.
    """
    if dropout_cfg is None:
        dropout_cfg = {"p": 0.0}
    spec: dict[str, Any] = {}
    for key, value in dropout_cfg.items():
        if key in _DROPOUT_META:
            continue
        if key not in DROPOUT_FIELDS:
            raise bad_choice("dropout field", key, DROPOUT_FIELDS)
        spec[key] = value
    defaults = {"p": 0.5, "dist": "bernoulli", "structure": "element", "scale": "inverted"}
    full = {**defaults, "block_size": None, "share_channels": False, **spec}
    masks.validate_spec(
        full["p"], full["dist"], full["structure"], full["scale"], full["block_size"]
    )
    return full
