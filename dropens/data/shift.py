"""Dataset shift: corruptions of raw image batches at five severities (Ovadia et al. 2019).

Every corruption is a pure function ``f(x, severity, generator) -> x'`` of a raw image batch
``x`` ``(N, C, H, W)`` with values in ``[0, 1]``; it returns a new float32 batch of the same shape
and device, clipped to ``[0, 1]``. Randomness (noise, rotation sign, shift direction) is drawn
only from ``generator`` (a CPU ``torch.Generator``; ``None``: a fresh one seeded 0), so the same
seed gives the same corrupted images bit for bit, and every example is corrupted independently.

Severities 1..5, parameters chosen for 28x28 images (CIFAR-10-C and ImageNet-C scales,
Hendrycks & Dietterich 2019, where they apply; rotation as in Ovadia et al.'s rotated MNIST):

============== ===================================== ===================================
corruption     parameter at severity 1..5             per example
============== ===================================== ===================================
rotate         angle 15, 30, 45, 60, 75 degrees       random sign; bilinear, zero fill
gaussian_noise sigma 0.08, 0.12, 0.18, 0.26, 0.38      ``x + sigma * eps``, eps ~ N(0, 1)
               (ImageNet-C)
gaussian_blur  sigma 0.5, 0.75, 1.0, 1.5, 2.0 pixels   kernel ``2 * ceil(3 sigma) + 1``
contrast       factor 0.75, 0.5, 0.4, 0.3, 0.15        ``m + c (x - m)``, m = image mean
               (CIFAR-10-C)                           (grayscale mean for 3 channels)
translate      shift 2, 4, 6, 8, 10 pixels            random direction; zero fill
============== ===================================== ===================================

Rotation, blur and contrast are torchvision's (``transforms.v2.functional``: ``rotate``,
``gaussian_blur``, ``adjust_contrast``); the whole-pixel translation is an indexing (the same
images as torchvision's ``affine`` with integer ``translate``, one example at a time; tested),
vectorized over examples with different directions.

>>> x = torch.rand(8, 1, 28, 28)
>>> corrupt(x, "rotate", 3, torch.Generator().manual_seed(0)).shape
torch.Size([8, 1, 28, 28])
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable

import torch
from torch import Tensor
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from dropens.errors import ConfigError, bad_choice

SEVERITIES = (1, 2, 3, 4, 5)

# parameter of each corruption at severities 1..5 (module docstring)
PARAMETERS: dict[str, tuple[float, ...]] = {
    "rotate": (15.0, 30.0, 45.0, 60.0, 75.0),  # degrees; rotated MNIST of Ovadia et al. steps by 15
    "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),  # ImageNet-C gaussian_noise
    "gaussian_blur": (0.5, 0.75, 1.0, 1.5, 2.0),  # pixels; CIFAR-10-C's 0.4..1 is mild at 28 px
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),  # CIFAR-10-C contrast
    "translate": (2.0, 4.0, 6.0, 8.0, 10.0),  # pixels (an object fills most of a 28 px image)
}

Corruption = Callable[[Tensor, int, "torch.Generator | None"], Tensor]


def _check(x: Tensor, severity: int, name: str) -> float:
    """The parameter of ``name`` at ``severity``, after checking the batch and the severity."""
    if not isinstance(x, Tensor) or x.dim() != 4 or not x.is_floating_point():
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ConfigError(f"{name}: images have shape {got}; expected a float batch (N, C, H, W)")
    if isinstance(severity, bool) or severity not in SEVERITIES:
        raise bad_choice(f"{name} severity", severity, SEVERITIES)
    return PARAMETERS[name][severity - 1]


def _generator(generator: torch.Generator | None) -> torch.Generator:
    return generator if generator is not None else torch.Generator().manual_seed(0)


def rotate(x: Tensor, severity: int, generator: torch.Generator | None = None) -> Tensor:
    """Rotate each image by ``±angle`` (sign drawn per example) about its centre.

    Args:
        x: ``(N, C, H, W)`` raw images in ``[0, 1]``.
        severity: 1..5 (angle 15..75 degrees).
        generator: draws the signs.

    Returns:
        ``(N, C, H, W)`` float32 in ``[0, 1]``; bilinear interpolation, zero (black) fill.
    """
    angle = _check(x, severity, "rotate")
    sign = torch.randint(0, 2, (len(x),), generator=_generator(generator)).to(x.device).bool()
    out = torch.empty_like(x, dtype=torch.float32)
    for mask, a in ((sign, angle), (~sign, -angle)):
        if mask.any():
            # fill None: grid_sample's zero padding (an explicit fill=0 would also multiply the
            # border pixels by an interpolated validity mask)
            out[mask] = TF.rotate(x[mask].float(), a, interpolation=InterpolationMode.BILINEAR)
    return out.clamp_(0.0, 1.0)


def gaussian_noise(x: Tensor, severity: int, generator: torch.Generator | None = None) -> Tensor:
    """Additive Gaussian noise ``x + sigma * eps``, ``eps ~ N(0, 1)`` per pixel, clipped.

    Args:
        x: ``(N, C, H, W)`` raw images in ``[0, 1]``.
        severity: 1..5 (sigma 0.08..0.38).
        generator: draws the noise.

    Returns:
        ``(N, C, H, W)`` float32 in ``[0, 1]``.
    """
    sigma = _check(x, severity, "gaussian_noise")
    eps = torch.randn(x.shape, generator=_generator(generator)).to(x.device)
    return (x.float() + sigma * eps).clamp_(0.0, 1.0)


def gaussian_blur(x: Tensor, severity: int, generator: torch.Generator | None = None) -> Tensor:
    """Gaussian blur with standard deviation ``sigma`` pixels (deterministic; ``generator`` unused).

    Args:
        x: ``(N, C, H, W)`` raw images in ``[0, 1]``.
        severity: 1..5 (sigma 0.5..2 pixels; kernel ``2 * ceil(3 sigma) + 1``, reflect padding).

    Returns:
        ``(N, C, H, W)`` float32 in ``[0, 1]``.
    """
    sigma = _check(x, severity, "gaussian_blur")
    kernel = 2 * math.ceil(3 * sigma) + 1
    return TF.gaussian_blur(x.float(), [kernel, kernel], [sigma, sigma]).clamp_(0.0, 1.0)


def contrast(x: Tensor, severity: int, generator: torch.Generator | None = None) -> Tensor:
    """Reduce contrast: ``m + c (x - m)`` with ``m`` the image's mean (deterministic).

    torchvision's ``adjust_contrast`` (``m``: mean of the grayscale image, for 1 or 3 channels).

    Args:
        x: ``(N, C, H, W)`` raw images in ``[0, 1]``, ``C`` in (1, 3).
        severity: 1..5 (factor ``c`` 0.75..0.15).

    Returns:
        ``(N, C, H, W)`` float32 in ``[0, 1]``.
    """
    factor = _check(x, severity, "contrast")
    return TF.adjust_contrast(x.float(), factor).clamp_(0.0, 1.0)


def translate(x: Tensor, severity: int, generator: torch.Generator | None = None) -> Tensor:
    """Shift each image by ``s`` pixels in a random direction (whole pixels, zero fill).

    The direction ``theta ~ U[0, 2 pi)`` is drawn per example; the shift is
    ``(round(s cos theta), round(s sin theta))`` pixels (length ``s`` up to rounding).

    Args:
        x: ``(N, C, H, W)`` raw images in ``[0, 1]``.
        severity: 1..5 (``s`` = 2..10 pixels).
        generator: draws the directions.

    Returns:
        ``(N, C, H, W)`` float32 in ``[0, 1]``: pixels moved out of the frame are lost, the
        uncovered border is 0.
    """
    shift = _check(x, severity, "translate")
    n, _, h, w = x.shape
    theta = torch.rand(n, generator=_generator(generator), dtype=torch.float64) * 2 * math.pi
    dx = torch.round(shift * torch.cos(theta)).long().to(x.device)
    dy = torch.round(shift * torch.sin(theta)).long().to(x.device)
    # out[n, :, i, j] = x[n, :, i - dy_n, j - dx_n] where inside the frame, else 0: the integer
    # translation of torchvision's affine (right by dx, down by dy), vectorized over examples
    rows = torch.arange(h, device=x.device)[None, :] - dy[:, None]  # (N, H)
    cols = torch.arange(w, device=x.device)[None, :] - dx[:, None]  # (N, W)
    inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
    idx = torch.arange(n, device=x.device)[:, None, None]
    moved = x.float()[idx, :, rows.clamp(0, h - 1)[:, :, None], cols.clamp(0, w - 1)[:, None, :]]
    out = moved.permute(0, 3, 1, 2) * inside[:, None].float()  # (N, H, W, C) -> (N, C, H, W)
    return out.contiguous().clamp_(0.0, 1.0)


CORRUPTIONS: dict[str, Corruption] = {
    "rotate": rotate,
    "gaussian_noise": gaussian_noise,
    "gaussian_blur": gaussian_blur,
    "contrast": contrast,
    "translate": translate,
}


def corrupt(
    x: Tensor, name: str, severity: int, generator: torch.Generator | None = None
) -> Tensor:
    """Apply corruption ``name`` at ``severity`` to raw images ``x`` ``(N, C, H, W)`` in [0, 1].

    Raises:
        ConfigError: unknown corruption or severity (one line, with the valid choices).
    """
    if name not in CORRUPTIONS:
        raise bad_choice("corruption", name, CORRUPTIONS)
    return CORRUPTIONS[name](x, severity, generator)


def set_name(name: str, severity: int) -> str:
    """Eval-set name of a corruption at a severity: ``rotate_3``."""
    return f"{name}_{severity}"


def parse_set_name(set_name: str) -> tuple[str, int] | None:
    """``("rotate", 3)`` for ``rotate_3``; ``None`` for a name that is not a shifted set."""
    name, _, severity = set_name.rpartition("_")
    if name in CORRUPTIONS and severity.isdigit() and int(severity) in SEVERITIES:
        return name, int(severity)
    return None


def set_seed(split_seed: int, name: str, severity: int) -> int:
    """The seed of one shifted set: a pure function of ``(split_seed, corruption, severity)``.

    Independent of the training seed, so every run of a study is evaluated on identical shifted
    images (differences between methods are paired by example). ``crc32``: stable across
    processes (Python's ``hash`` of a string is salted per process).
    """
    return zlib.crc32(f"{int(split_seed)}/{name}/{int(severity)}".encode())


def shifted_sets(
    raw: Tensor, names: list[str] | tuple[str, ...], split_seed: int = 0
) -> dict[str, Tensor]:
    """Every corruption of ``names`` at every severity of raw images ``raw`` ``(N, C, H, W)``.

    Returns:
        ``{"<name>_<severity>": (N, C, H, W) float32 in [0, 1]}``, corruption-major, severities
        1..5, each drawn with :func:`set_seed`.
    """
    out = {}
    for name in names:
        for severity in SEVERITIES:
            gen = torch.Generator().manual_seed(set_seed(split_seed, name, severity))
            out[set_name(name, severity)] = corrupt(raw, name, severity, gen)
    return out


__all__ = [
    "CORRUPTIONS",
    "PARAMETERS",
    "SEVERITIES",
    "contrast",
    "corrupt",
    "gaussian_blur",
    "gaussian_noise",
    "parse_set_name",
    "rotate",
    "set_name",
    "set_seed",
    "shifted_sets",
    "translate",
]
