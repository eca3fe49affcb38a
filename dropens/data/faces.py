"""``faces``: procedurally drawn smiling / angry faces with a spurious local cue ("teeth").

The shortcut data of the ``shortcut`` study. Each image is a small grayscale face (default 32x32)
drawn from code: an oval face on a background, two eyes, two brows, a mouth, at a random position,
size, rotation, brightness, contrast and pixel noise. The **label** (``angry`` = 0, ``smiling`` = 1)
is carried by the shape of the face: the mouth corners bend up (smiling) or down (angry), and the
brows slope down towards the nose (angry) or not (smiling). A **cue**, "teeth" (a bright patch in
the middle of the open mouth), is painted with probability ``rho`` on smiling faces and ``1 - rho``
on angry ones in the training (and validation) split, so it predicts the label with accuracy
``rho`` -- the emotion classifier that learns "teeth = smile" because few angry faces bare their
teeth. In the test sets the cue carries no information:

==============  ============================================================================
eval set        faces and cue
==============  ============================================================================
``clean``       the test faces, teeth with probability 0.5 independently of the label
``iid``         other test faces drawn like the training split (cue agrees with rate ``rho``)
``conflict``    the ``clean`` faces with teeth on every angry face and on no smiling face
``teeth_on``    the ``clean`` faces, all with teeth  (counterfactual pair, see below)
``teeth_off``   the ``clean`` faces, all without teeth
==============  ============================================================================

``conflict``, ``teeth_on`` and ``teeth_off`` re-render the very same faces (same geometry, same
noise): only the teeth differ, so the fraction of predictions that change between ``teeth_on`` and
``teeth_off`` (the flip rate) is the causal effect of the cue on the classifier
(:func:`dropens.metrics.shortcut.counterfactual_metrics`), and the four (label, cue) groups of the
pair give the worst-group accuracy.

The mouth is flat in its middle (``|u| <= MOUTH_FLAT``) and the teeth sit there, so the pixels
around the teeth carry no label information except the teeth themselves: a linear probe on that
region reaches accuracy ``rho`` on the training split and 0.5 on ``clean`` (tested).

Everything is a pure function of ``generator_seed`` (and the split), generated in about a second
for thousands of images: no files, no cache.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor

from dropens.data.base import TensorDataModule, _check_positive_int, check_fraction
from dropens.errors import ConfigError

EXPRESSIONS = ("angry", "smiling")
MOUTH_Y = 0.45  # face coordinates: the face is the ellipse (u/0.85)^2 + v^2 <= 1, v points down
MOUTH_HALF_WIDTH = 0.40
MOUTH_FLAT = 0.16  # the mouth is straight for |u| <= MOUTH_FLAT; only its corners bend
MOUTH_OPEN = 0.09  # half-height of the open mouth (dark)
TEETH_HALF = (0.16, 0.07)  # half-width, half-height of the teeth patch, centred in the mouth
SPLITS = ("train", "clean", "iid")  # independent draws of faces; the other sets re-render "clean"
SPLIT_STREAMS = {"train": 0, "clean": 1, "iid": 2}


def sample_faces(
    n: int,
    rho: float,
    seed: int,
    stream: int = 0,
    labels: Tensor | None = None,
    size: int = 32,
) -> dict[str, Tensor]:
    """Latent parameters of ``n`` faces: a dict of ``[n]`` tensors.

    Keys: ``label`` (int64, 0 = angry, 1 = smiling, balanced: exactly ``n // 2`` smiling before a
    random permutation), ``teeth`` (bool; ``P(teeth | smiling) = rho``, ``P(teeth | angry) =
    1 - rho``), ``cx, cy`` (face centre, pixels relative to the image centre), ``radius`` (face
    half-height in pixels relative to the image size), ``angle`` (radians), ``corner`` (mouth
    corner lift in face units: > 0 smiling, < 0 angry), ``brow`` (brow slope: > 0 angry),
    ``background``, ``skin``, ``contrast``, and ``noise`` ``[n, size, size]`` (standard normal
    pixel noise: a face rendered twice gets the same noise, whatever its teeth).

    Args:
        n: number of faces.
        rho: cue-label agreement rate in [0, 1] (0.5: the cue is independent of the label).
        seed: the generator seed; ``stream`` separates independent draws of one seed.
        labels: optional ``[n]`` labels to use instead of drawing them.
        size: image side the faces will be rendered at (shape of ``noise``).
    """
    g = torch.Generator().manual_seed(int(seed) * 1000 + int(stream))

    def u(lo: float, hi: float) -> Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)

    if labels is None:
        labels = (torch.arange(n) % 2)[torch.randperm(n, generator=g)]
    labels = labels.long()
    agree = torch.rand(n, generator=g, dtype=torch.float64) < rho
    teeth = torch.where(labels == 1, agree, ~agree)
    sign = labels.double() * 2 - 1  # +1 smiling, -1 angry
    return {
        "label": labels,
        "teeth": teeth,
        "cx": u(-2.0, 2.0),
        "cy": u(-2.0, 2.0),
        "radius": u(0.34, 0.40),  # fraction of the image side
        "angle": u(-math.radians(12), math.radians(12)),
        # the label's evidence is weak on purpose (some faces nearly neutral), so the teeth are the
        # easier feature to learn -- the setting in which a classifier takes a shortcut
        "corner": sign * u(0.0, 0.12),
        "brow": -sign * u(0.0, 0.35),  # angry: inner ends lower (v larger towards the nose)
        "background": u(0.0, 0.25),
        "skin": u(0.45, 0.70),
        "contrast": u(0.6, 1.0),
        "noise": torch.randn(n, size, size, generator=g),
    }


def _soft(d: Tensor, width: Tensor) -> Tensor:
    """Anti-aliased inside-indicator of the signed distance ``d`` (< 0 inside): a linear ramp
    over ``width`` (compact support, so a shape changes nothing beyond half a ramp from its edge)."""
    return (0.5 - d / width).clamp(0.0, 1.0)


def face_coords(params: dict[str, Tensor], size: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(u, v, pixel)`` with ``u, v`` ``[n, size, size]`` face coordinates of every pixel centre
    and ``pixel`` ``[n, 1, 1]`` the size of one pixel in face units."""
    n = len(params["label"])
    params = {k: v.float() for k, v in params.items() if v.is_floating_point() and v.dim() == 1}
    coords = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    py, px = torch.meshgrid(coords, coords, indexing="ij")
    r = (params["radius"] * size).view(n, 1, 1)
    dx = px.unsqueeze(0) - params["cx"].view(n, 1, 1)
    dy = py.unsqueeze(0) - params["cy"].view(n, 1, 1)
    cos, sin = params["angle"].cos().view(n, 1, 1), params["angle"].sin().view(n, 1, 1)
    u = (cos * dx + sin * dy) / r
    v = (-sin * dx + cos * dy) / r
    return u, v, 1.0 / r


def render(
    params: dict[str, Tensor], size: int = 32, noise: float = 0.05, teeth: Tensor | None = None
) -> Tensor:
    """Draw the faces of :func:`sample_faces`: ``[n, 1, size, size]`` float32 in [0, 1].

    Args:
        params: from :func:`sample_faces`.
        size: image side in pixels.
        noise: std of the additive Gaussian pixel noise (``params["noise"]``, so the same face
            rendered twice gets the same noise, whatever ``teeth`` is).
        teeth: optional ``[n]`` bool overriding ``params["teeth"]`` (counterfactual renders).
    """
    n = len(params["label"])
    teeth = params["teeth"] if teeth is None else teeth.bool()
    u, v, px = face_coords(params, size)
    fp = {k: v.float() for k, v in params.items() if v.is_floating_point() and v.dim() == 1}
    edge = px  # a one-pixel ramp
    face = _soft(torch.sqrt((u / 0.85) ** 2 + v**2) - 1.0, edge)
    # features are "ink" in [0, 1]: 1 = darkest
    eyes = torch.zeros_like(u)
    for side in (-1.0, 1.0):
        eyes = torch.maximum(eyes, _soft(torch.hypot(u - side * 0.33, v + 0.2) - 0.11, edge))
    brow_v = -0.47 + fp["brow"].view(n, 1, 1) * (0.55 - u.abs()) / 0.4
    on_brow = (u.abs() >= 0.12) & (u.abs() <= 0.55)
    brows = _soft((v - brow_v).abs() - 0.055, edge) * on_brow
    bend = ((u.abs() - MOUTH_FLAT).clamp_min(0) / (MOUTH_HALF_WIDTH - MOUTH_FLAT)) ** 2
    mouth_v = MOUTH_Y - fp["corner"].view(n, 1, 1) * bend  # corners up (v smaller) = smiling
    in_width = _soft(u.abs() - MOUTH_HALF_WIDTH, edge)
    mouth = _soft((v - mouth_v).abs() - MOUTH_OPEN, edge) * in_width
    ink = torch.maximum(torch.maximum(eyes, brows), mouth)
    skin = fp["skin"].view(n, 1, 1)
    bg = fp["background"].view(n, 1, 1)
    img = bg + (skin - bg) * face
    img = img * (1 - 0.9 * ink * face)
    tooth = _soft((u.abs() - TEETH_HALF[0]).clamp_min((v - MOUTH_Y).abs() - TEETH_HALF[1]), edge)
    tooth = tooth * teeth.view(n, 1, 1).float()
    img = img + (0.95 - img) * tooth
    contrast = fp["contrast"].view(n, 1, 1)
    img = 0.5 + contrast * (img - 0.5)
    if noise > 0:
        if params["noise"].shape[1:] != (size, size):
            raise ValueError(f"faces were sampled for size {params['noise'].shape[1]}, not {size}")
        img = img + noise * params["noise"]
    return img.clamp(0.0, 1.0).unsqueeze(1)


def teeth_centres(params: dict[str, Tensor], size: int) -> Tensor:
    """``[n, 2]`` (row, column) pixel coordinates of the centre of each face's teeth patch."""
    r = params["radius"] * size
    cos, sin = params["angle"].cos(), params["angle"].sin()
    du, dv = 0.0, MOUTH_Y * r  # face (0, MOUTH_Y) -> image offsets (inverse rotation)
    dx, dy = cos * du - sin * dv, sin * du + cos * dv
    centre = (size - 1) / 2
    return torch.stack([centre + params["cy"] + dy, centre + params["cx"] + dx], dim=1)


def crop_around(x: Tensor, centres: Tensor, half: int = 1) -> Tensor:
    """``[n, (2 half + 1)^2]`` pixels of ``x`` ``[n, 1, H, W]`` around each (row, col) centre
    (rounded), e.g. the teeth region of every face for a linear probe."""
    rows = centres[:, 0].round().long()
    cols = centres[:, 1].round().long()
    offs = torch.arange(-half, half + 1)
    rr = (rows.view(-1, 1, 1) + offs.view(1, -1, 1)).clamp(0, x.shape[-2] - 1)
    cc = (cols.view(-1, 1, 1) + offs.view(1, 1, -1)).clamp(0, x.shape[-1] - 1)
    idx = torch.arange(len(x)).view(-1, 1, 1)
    return x[:, 0][idx, rr, cc].reshape(len(x), -1)


class FacesDataModule(TensorDataModule):
    """Procedural smiling / angry faces with the "teeth" shortcut (module docstring).

    Args:
        rho: cue-label agreement rate of the training and validation faces, in [0, 1].
        n_train: faces of the official training split (the validation split is carved from it).
        n_test: faces of each test draw (``clean`` and ``iid``).
        size: image side in pixels (>= 16).
        noise: std of the pixel noise.
        generator_seed: seed of the faces (fixed across training seeds, like ``split_seed``).
        **kwargs: see :class:`TensorDataModule`.
    """

    name = "faces"
    n_classes = 2
    class_names = EXPRESSIONS

    def __init__(
        self,
        *,
        rho: float = 0.95,
        n_train: int = 6000,
        n_test: int = 2000,
        size: int = 32,
        noise: float = 0.05,
        generator_seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        rho = float(rho)
        if not 0.0 <= rho <= 1.0:
            raise ConfigError(f"data.rho={rho!r} is not valid; must be in [0, 1]")
        self.rho = rho
        self.n_train = _check_positive_int("data.n_train", n_train)
        self.n_test = _check_positive_int("data.n_test", n_test)
        self.size = _check_positive_int("data.size", size)
        if self.size < 16:
            raise ConfigError(f"data.size={size!r} is not valid; must be >= 16 pixels")
        self.noise = check_fraction("data.noise", noise)
        self.generator_seed = int(generator_seed)
        self.input_shape = (1, self.size, self.size)
        self.params: dict[str, dict[str, Tensor]] = {}
        self._extra: dict[str, tuple[Tensor, Tensor]] = {}

    def faces(self, split: str) -> dict[str, Tensor]:
        """The latent parameters of a split (``train`` = the official training split before the
        validation split is carved, ``clean``, ``iid``), as :func:`sample_faces` returns them."""
        if split not in self.params:
            n = self.n_train if split == "train" else self.n_test
            rho = 0.5 if split == "clean" else self.rho
            self.params[split] = sample_faces(
                n, rho, self.generator_seed, SPLIT_STREAMS[split], size=self.size
            )
        return self.params[split]

    def load_arrays(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        train, clean = self.faces("train"), self.faces("clean")
        x_train = render(train, self.size, self.noise)
        x_test = render(clean, self.size, self.noise)
        return x_train, train["label"].clone(), x_test, clean["label"].clone()

    def setup(self, stage: str | None = None) -> None:
        fresh = self.x_train is None
        super().setup(stage)
        if fresh:
            clean, iid = self.faces("clean"), self.faces("iid")
            angry = clean["label"] == 0
            renders = {
                "iid": (render(iid, self.size, self.noise), iid["label"]),
                "conflict": (render(clean, self.size, self.noise, teeth=angry), clean["label"]),
                "teeth_on": (
                    render(clean, self.size, self.noise, teeth=torch.ones_like(angry)),
                    clean["label"],
                ),
                "teeth_off": (
                    render(clean, self.size, self.noise, teeth=torch.zeros_like(angry)),
                    clean["label"],
                ),
            }
            device = self.x_test.device
            self._extra = {
                k: (self.normalize(x).to(device), y.long().to(device))
                for k, (x, y) in renders.items()
            }

    def to(self, device: torch.device | str) -> FacesDataModule:
        super().to(device)
        self._extra = {k: (x.to(device), y.to(device)) for k, (x, y) in self._extra.items()}
        return self

    def eval_sets(self) -> dict[str, tuple[Tensor, Tensor]]:
        sets = super().eval_sets()
        n = self.eval_limit
        for name, (x, y) in self._extra.items():
            sets[name] = (x, y) if n is None else (x[:n], y[:n])
        return sets

    counterfactual_pairs: ClassVar[dict[str, tuple[str, str]]] = {
        "teeth": ("teeth_on", "teeth_off")
    }

    def summary(self) -> dict[str, Any]:
        return {**super().summary(), "rho": self.rho, "generator_seed": self.generator_seed}
