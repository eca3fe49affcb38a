"""Dropout masks: distribution x structure x scaling, as pure functions of a shape and a generator.

The one line every variant of dropout in this framework is built on (``p`` = **drop** probability,
``keep = 1 - p``)::

    A ~ i.i.d. Bernoulli(keep), broadcast to x.shape     (which units share a draw: the *structure*)
    y = A * x / keep                                     (``scale="inverted"``)

Every sampler below returns *unit-mean multiplicative noise* ``A / keep``: mean 1 and variance
``p / keep`` (the variance of inverted Bernoulli dropout). Scaling then decides what the network sees:

- ``inverted``: ``y = noise * x`` in training, ``y = x`` in the deterministic pass;
- ``none``: ``y = keep * noise * x`` in training (for Bernoulli that is the raw 0/1 mask), and the
  deterministic pass multiplies by ``keep`` (weight scaling, Srivastava et al. 2014).

Distributions (all with mean 1 and variance ``p / keep``; extensible with :func:`register_sampler`):

- ``bernoulli``: ``A / keep`` with ``A ~ Bernoulli(keep)`` (Srivastava et al. 2014);
- ``gaussian``: ``N(1, p / keep)`` (Gaussian dropout, Srivastava et al. 2014 sec. 10; Wang & Manning 2013);
- ``uniform``: ``U(1 - a, 1 + a)`` with ``a = sqrt(3 p / keep)`` (variance ``a^2 / 3``). For
  ``p > 1/4`` the support reaches below 0: the multiplier can flip a unit's sign.

Structures, for an input ``(N, C, *spatial)`` (which units share one draw):

- ``element``: one draw per unit (``nn.Dropout``);
- ``channel``: one draw per (n, c), shared over all positions (``nn.Dropout1d/2d/3d``; Tompson et al. 2015);
- ``location``: one draw per (n, position), shared over all channels: blinds the network at a place;
- ``block``: DropBlock (Ghiasi et al. 2018): seeds drawn at rate ``gamma``, each dropping the
  ``block_size``-wide cube it starts; per channel, or shared over channels with
  ``share_channels=True``. Seeds are drawn on the extended grid of all block starts that overlap
  the map (blocks clipped at the border), so *every position* is dropped with probability exactly
  ``p`` (:func:`block_seed_rate`; the paper and torchvision seed only where a whole block fits,
  which under-drops the border). Bernoulli only.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from dropens.errors import ConfigError, bad_choice, check_choice

# A sampler draws unit-mean multiplicative noise of `shape` with variance p / (1 - p).
Sampler = Callable[
    [tuple[int, ...], float, "torch.Generator | None", torch.device, torch.dtype], Tensor
]

SAMPLERS: dict[str, Sampler] = {}
STRUCTURES = ("element", "channel", "location", "block")
SCALES = ("inverted", "none")


def register_sampler(name: str) -> Callable[[Sampler], Sampler]:
    """Register a mask distribution under ``name`` (the ``dropout.dist`` config value).

    The sampler is called as ``sampler(shape, p, generator, device, dtype)`` and must return noise of
    ``shape`` with mean 1 and variance ``p / (1 - p)``, drawing only from ``generator`` (or the global
    RNG of ``device`` when it is ``None``) so that member masks stay pure functions of their seed.
    """

    def add(fn: Sampler) -> Sampler:
        SAMPLERS[name] = fn
        return fn

    return add


def _draw_dtype(dtype: torch.dtype) -> torch.dtype:
    """Draw 16-bit noise in float32: bfloat16 ``torch.rand`` is too coarse for small thresholds."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _uniform(shape, generator, device, dtype) -> Tensor:
    """U(0, 1) of ``shape``, drawn at float32 or better precision (compare before casting)."""
    return torch.rand(shape, generator=generator, device=device, dtype=_draw_dtype(dtype))


@register_sampler("bernoulli")
def bernoulli_noise(shape, p, generator, device, dtype) -> Tensor:
    """``A / keep`` with ``A ~ Bernoulli(keep)``: values in {0, 1/keep}; mean 1, variance p/keep."""
    keep = 1.0 - p
    # In place on the fresh draw: bit for bit ``(u < keep).to(dtype) / keep`` (the same values and
    # the same RNG stream; tests/test_masks.py checks it) without the bool and float temporaries.
    # Mask sampling is ~40% of MC inference time on CPU; this removes a quarter of it.
    return _uniform(shape, generator, device, dtype).lt_(keep).to(dtype).div_(keep)


@register_sampler("gaussian")
def gaussian_noise(shape, p, generator, device, dtype) -> Tensor:
    """``N(1, p/keep)``: Gaussian multiplicative noise with the variance of inverted Bernoulli."""
    std = math.sqrt(p / (1.0 - p))
    noise = torch.randn(shape, generator=generator, device=device, dtype=_draw_dtype(dtype))
    return (1.0 + std * noise).to(dtype)


@register_sampler("uniform")
def uniform_noise(shape, p, generator, device, dtype) -> Tensor:
    """``U(1 - a, 1 + a)``, ``a = sqrt(3 p / keep)``: mean 1, variance ``a^2/3 = p/keep``."""
    half_width = math.sqrt(3.0 * p / (1.0 - p))
    return (1.0 + half_width * (2.0 * _uniform(shape, generator, device, dtype) - 1.0)).to(dtype)


# ----------------------------------------------------------------------------- validation


def validate_spec(
    p: float,
    dist: str,
    structure: str,
    scale: str,
    block_size: int | None,
    prefix: str = "dropout",
) -> None:
    """Check a dropout spec on its own (shape-dependent checks happen in :func:`check_input`)."""
    if not isinstance(p, int | float) or not 0.0 <= float(p) < 1.0:
        raise ConfigError(f"{prefix}.p={p!r} is not valid; choose a drop probability in [0, 1)")
    check_choice(f"{prefix}.dist", dist, sorted(SAMPLERS))
    check_choice(f"{prefix}.structure", structure, STRUCTURES)
    check_choice(f"{prefix}.scale", scale, SCALES)
    if structure == "block":
        if block_size is None or not isinstance(block_size, int) or block_size < 1:
            raise ConfigError(
                f"{prefix}.block_size={block_size!r} is not valid; structure=block needs an integer >= 1"
            )
        if dist != "bernoulli":
            raise bad_choice(f"{prefix}.dist (with structure=block)", dist, ["bernoulli"])


def check_input(
    shape: Sequence[int],
    structure: str,
    block_size: int | None,
    where: str = "dropout",
) -> None:
    """Raise a one-line :class:`ConfigError` if ``structure`` cannot apply to an input of ``shape``.

    Args:
        shape: full input shape ``(N, F)`` or ``(N, C, *spatial)``.
        structure: one of :data:`STRUCTURES`.
        block_size: DropBlock width (``structure="block"`` only).
        where: the layer's name, for the message.
    """
    if structure != "element" and len(shape) < 3:
        raise ConfigError(
            f"dropout.structure={structure!r} needs spatial axes (N, C, *spatial) but layer "
            f"{where!r} gets input {tuple(shape)}; valid there: element"
        )
    if structure == "block":
        spatial = tuple(shape[2:])
        if len(spatial) > 3:
            raise ConfigError(
                f"dropout.structure='block' supports 1-3 spatial axes, layer {where!r} has {len(spatial)}"
            )
        if block_size is None or block_size > min(spatial):
            raise ConfigError(
                f"dropout.block_size={block_size!r} is larger than the feature map {spatial} at layer "
                f"{where!r}; choose 1..{min(spatial)}"
            )


# ----------------------------------------------------------------------------- structures


def noise_shape(shape: Sequence[int], structure: str) -> tuple[int, ...]:
    """Shape of one draw of noise for an input of ``shape`` (broadcastable to it).

    ``element`` -> ``shape``; ``channel`` -> ``(N, C, 1, ...)``; ``location`` -> ``(N, 1, *spatial)``.
    """
    shape = tuple(shape)
    if structure == "element":
        return shape
    n_spatial = len(shape) - 2
    if structure == "channel":
        return shape[:2] + (1,) * n_spatial
    if structure == "location":
        return (shape[0], 1, *shape[2:])
    raise bad_choice("dropout.structure", structure, ["element", "channel", "location"])


def block_seed_rate(spatial: tuple[int, ...], block_size: int, p: float) -> float:
    """Seed rate ``gamma`` for which DropBlock drops every position with probability exactly ``p``.

    Seeds are drawn on the extended grid of every block start that overlaps the map
    (``L + b - 1`` per axis, blocks clipped at the border), so every position is covered by exactly
    ``b^d`` seed positions and is dropped with probability ``1 - (1 - gamma)^{b^d}``. Solving for
    ``p`` gives the closed form ``gamma = 1 - keep^{1 / b^d}``. The drop probability is then the
    same at every position (so the noise has mean 1 *per unit*, like every other structure, and the
    deterministic pass is the expectation of the training masks). Ghiasi et al. (2018) and
    ``torchvision.ops.drop_block2d`` place seeds only where a whole block fits and use
    ``gamma = p L^2 / (b^2 (L - b + 1)^2)``, which ignores overlaps (drops less than ``p``) and
    drops border positions far less often than the centre.
    """
    if p <= 0.0:
        return 0.0
    return 1.0 - (1.0 - p) ** (1.0 / block_size ** len(spatial))


_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}


def block_keep_mask(
    shape: Sequence[int],
    p: float,
    block_size: int,
    share_channels: bool,
    generator: torch.Generator | None,
    device: torch.device,
    dtype: torch.dtype,
) -> Tensor:
    """0/1 DropBlock keep-mask for an input ``(N, C, *spatial)``; shape ``(N, C or 1, *spatial)``.

    Seeds ``~ Bernoulli(gamma)`` on the extended grid (``L + b - 1`` block starts per axis, every
    block that overlaps the map), each dropping the block ``[s, s + b)`` clipped to the map: a
    stride-1 max-pool of width ``b`` over the seed grid gives exactly the ``L`` map positions.
    """
    n, c, *spatial = shape
    gamma = block_seed_rate(tuple(spatial), block_size, float(p))
    seeds_shape = (n, 1 if share_channels else c, *(s + block_size - 1 for s in spatial))
    seeds = _uniform(seeds_shape, generator, device, dtype).lt_(gamma).to(dtype)  # = (u < gamma)
    return 1.0 - block_max(seeds, block_size)


def block_max(seeds: Tensor, block_size: int) -> Tensor:
    """Stride-1 max over every ``b^d`` window of ``seeds`` ``(N, C, *(L + b - 1))`` -> ``(N, C, *L)``.

    Max is separable: one pass of width ``b`` per spatial axis makes ``d * b`` comparisons per
    position instead of ``b^d``, with identical output. Measured on CPU
    (``benchmarks/bench_dropblock.py``) an extra pass costs about twice its comparisons: separable
    is 1.6x faster at b = 7, 0.75x at b = 3 (2-D), so it is used only where ``b^d > 2 d b``."""
    d = seeds.dim() - 2
    pool = _MAX_POOL[d]
    if block_size**d <= 2 * d * block_size:
        return pool(seeds, kernel_size=block_size, stride=1)
    for axis in range(d):
        kernel = tuple(block_size if a == axis else 1 for a in range(d))
        seeds = pool(seeds, kernel_size=kernel, stride=1)
    return seeds


def sample_noise(
    shape: Sequence[int],
    p: float,
    dist: str = "bernoulli",
    structure: str = "element",
    block_size: int | None = None,
    share_channels: bool = False,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Unit-mean multiplicative noise for an input of ``shape``, broadcastable to it.

    Args:
        shape: input shape ``(N, F)`` or ``(N, C, *spatial)``.
        p: drop probability in [0, 1).
        dist, structure, block_size, share_channels: the mask spec (module docstring).
        generator: the RNG to draw from (``None``: the global RNG of ``device``).

    Returns:
        Tensor of shape :func:`noise_shape` (or ``(N, C|1, *spatial)`` for ``block``) with mean 1
        and variance ``p / (1 - p)`` per unit.
    """
    device = torch.device(device)
    if structure == "block":
        keep_mask = block_keep_mask(shape, p, block_size, share_channels, generator, device, dtype)
        return keep_mask / (1.0 - p)
    return SAMPLERS[dist](noise_shape(shape, structure), float(p), generator, device, dtype)


def apply_noise(x: Tensor, noise: Tensor, p: float, scale: str) -> Tensor:
    """``y = noise * x`` (``inverted``) or ``y = keep * noise * x`` (``none``). Shapes broadcast."""
    if scale == "none":
        return x * (noise * (1.0 - p))
    return x * noise


EVAL_MULTIPLIERS = ("one", "keep")  # a forced multiplier of the deterministic pass (see dropout)


def weight_scaled(x: Tensor, p: float, scale: str, multiplier: str | None = None) -> Tensor:
    """The deterministic pass: ``x`` (``inverted``) or ``keep * x`` (``none``, weight scaling).

    ``multiplier`` forces the factor whatever ``scale`` is: ``"one"`` (identity) or ``"keep"``
    (``keep = 1 - p``): the mismatched passes of the weight-scaling probe (an inverted-dropout net
    multiplied by keep once more, or an unscaled one never scaled)."""
    if multiplier is not None:
        check_choice("eval multiplier", multiplier, EVAL_MULTIPLIERS)
        return x * (1.0 - p) if multiplier == "keep" else x
    return x * (1.0 - p) if scale == "none" and p > 0 else x


def dropout(
    x: Tensor,
    p: float = 0.5,
    dist: str = "bernoulli",
    structure: str = "element",
    scale: str = "inverted",
    block_size: int | None = None,
    share_channels: bool = False,
    training: bool = True,
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
    multiplier: str | None = None,
) -> Tensor:
    """Generalized dropout ``y = g(A * x / keep)``: the one function every dropout pass runs
    (:class:`dropens.layers.Dropout` calls it in each of its modes).

    Args:
        x: ``(N, F)`` or ``(N, C, *spatial)`` (or any shape ``noise`` broadcasts to).
        p, dist, structure, scale, block_size, share_channels: the mask spec (module docstring).
        training: apply a mask (``True``) or take the deterministic pass (``False``,
            :func:`weight_scaled`).
        generator: the RNG of a fresh mask (``None``: the global RNG of ``x``'s device).
        noise: unit-mean noise to apply instead of a fresh draw (a fixed member mask,
            :func:`member_noise`), broadcastable to ``x``.
        multiplier: deterministic pass only: a forced factor, ``"one"`` | ``"keep"``.

    Returns:
        Tensor of ``x.shape``.
    """
    if p == 0.0:
        return x
    if not training:
        return weight_scaled(x, p, scale, multiplier)
    if noise is None:
        noise = sample_noise(
            x.shape, p, dist, structure, block_size, share_channels, generator, x.device, x.dtype
        )
    return apply_noise(x, noise, p, scale)


# ----------------------------------------------------------------------------- member masks


def mask_seed(layer_seed: int, k: int, unit_shape: Sequence[int]) -> int:
    """A 63-bit RNG seed that is a pure function of (layer seed, member k, per-example shape).

    Uses BLAKE2b (stable across processes and platforms, unlike Python's salted ``hash``).
    """
    key = f"{int(layer_seed)}|{int(k)}|{','.join(str(int(s)) for s in unit_shape)}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1


def member_noise(
    layer_seed: int,
    k: int,
    unit_shape: Sequence[int],
    p: float,
    dist: str = "bernoulli",
    structure: str = "element",
    block_size: int | None = None,
    share_channels: bool = False,
) -> Tensor:
    """The fixed mask of subnetwork ``k``: unit-mean noise of shape ``(1, *noise unit shape)``.

    One draw of the same mask spec that ``sample`` mode uses, for a batch of one example with
    per-example shape ``unit_shape`` (``(F,)`` or ``(C, *spatial)``), from a CPU generator seeded by
    :func:`mask_seed` — identical across calls, processes and checkpoint reloads. Float64 on CPU
    (so ``1/keep`` is exact in whatever dtype it is cast to); callers cast and move it.
    """
    generator = torch.Generator().manual_seed(mask_seed(layer_seed, k, unit_shape))
    return sample_noise(
        (1, *unit_shape),
        p,
        dist,
        structure,
        block_size,
        share_channels,
        generator,
        "cpu",
        torch.float64,
    )
