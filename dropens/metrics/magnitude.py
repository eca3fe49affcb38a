"""Activation magnitudes around dropout and BatchNorm layers, training pass vs deterministic pass.

Dropout changes the *variance* of what the next layer sees: inverted dropout keeps the mean but
inflates the variance in training, so a BatchNorm after it learns running statistics that do not
match the deterministic pass (Li et al. 2019, "Understanding the disharmony between dropout and
batch normalization by variance shift"). This module holds the statistics (tensors in, numbers out); :mod:`dropens.activations` runs a
model to record them:

- :func:`activation_stats`: magnitude statistics of one activation;
- :func:`variance_shift`: the closed-form ``Var_eval / Var_train`` of a dropout layer;
- :func:`bn_variance_mismatch`: a BatchNorm's running variance vs its actual input variance.

Ratios are always **eval / train** (deterministic over training), like :func:`variance_shift`.
"""

from __future__ import annotations

import math

from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from dropens.errors import ConfigError

STATS = ("mean", "var", "mean_abs", "frac_zero", "l2")


def activation_stats(x: Tensor) -> dict[str, float]:
    """Magnitude statistics of one activation ``x`` of shape ``(N, *)`` (computed in float64).

    - ``mean`` = ``mean(x)``, ``var`` = ``mean((x - mean)^2)`` (pooled over all samples and
      units, population variance), ``mean_abs`` = ``mean(|x|)``, ``frac_zero`` = fraction of
      entries equal to 0;
    - ``l2`` = ``(1/N) Σ_n ||x_n||_2``, the per-sample L2 norm averaged over the batch (a 0-dim
      ``x`` counts as one sample).

    Returns:
        ``{stat: float}`` for the keys in :data:`STATS`.
    """
    x = x.detach().double()
    flat = x.reshape(x.shape[0], -1) if x.dim() else x.reshape(1, 1)
    return {
        "mean": float(x.mean()),
        "var": float(x.var(correction=0)),
        "mean_abs": float(x.abs().mean()),
        "frac_zero": float((x == 0).double().mean()),
        "l2": float(flat.norm(dim=1).mean()),
    }


def variance_shift(mean: float | Tensor, var: float | Tensor, p: float) -> float | Tensor:
    """Closed-form variance ratio ``Var_eval / Var_train`` of inverted dropout (Li et al. 2019).

    For an input unit ``x`` with mean ``c`` and variance ``v`` and noise ``A / keep``,
    ``A ~ Bernoulli(keep)``, ``keep = 1 - p``, independent of ``x``:

    - training: ``y = x A / keep``. ``E[y] = c``, ``E[y²] = E[x²] E[A²] / keep² = (v + c²) / keep``,
      so ``Var_train = (v + c²) / keep - c² = (v + c² - keep c²) / keep = (v + p c²) / keep``;
    - eval: ``y = x``, ``Var_eval = v``;
    - ratio: ``Var_eval / Var_train = keep · v / (v + p · c²)``, at most ``keep`` (reached at
      ``c = 0``).

    The same ratio holds for ``scale="none"`` (training ``x A``, eval ``keep · x``: both
    variances are multiplied by ``keep²``), for any unit-mean noise with variance ``p / keep``
    (``gaussian``, ``uniform`` in :mod:`dropens.masks`), for any structure whose marginal drop rate
    is ``p`` at every unit (``element``, ``channel``, ``location``; only approximately for
    ``block``), and for pooled statistics over a whole tensor (``c``, ``v`` its pooled mean and
    variance), since it only uses ``E[y] = E[x]`` and ``E[y²] = E[x²] / keep``.

    Args:
        mean: ``c``, the input mean (float or tensor, broadcast).
        var: ``v``, the input variance.
        p: drop probability in ``[0, 1)``.

    Returns:
        ``keep · v / (v + p · c²)``, same type as the inputs (NaN if ``v = c = 0``).
    """
    if not 0.0 <= p < 1.0:
        raise ConfigError(f"p={p!r} is not valid; expected a drop probability in [0, 1)")
    keep = 1.0 - p
    denom = var + p * mean**2
    if isinstance(denom, Tensor):
        return keep * var / denom
    return keep * var / denom if denom != 0 else math.nan


def bn_variance_mismatch(bn: _BatchNorm, x: Tensor) -> dict[str, Tensor]:
    """A BatchNorm's running variance vs the actual variance of its input ``x`` per channel.

    ``input_var_c`` is the unbiased variance of channel ``c`` of ``x`` ``(N, C, *)`` over the batch
    and all positions (what BatchNorm's running average estimates); ``ratio_c =
    input_var_c / running_var_c``. Fed the deterministic-pass input of a BatchNorm that follows
    dropout, ``ratio`` is the variance shift of Li et al. (2019): about :func:`variance_shift` of
    the dropout's input when the running statistics were learned on training passes.

    Args:
        bn: a BatchNorm with running statistics.
        x: ``(N, C)`` or ``(N, C, *spatial)``, the input the BatchNorm would see.

    Returns:
        ``{"running_var": [C], "input_var": [C], "ratio": [C]}`` (float64).
    """
    if bn.running_var is None:
        raise ConfigError(
            f"bn={type(bn).__name__} has no running statistics (track_running_stats=False); "
            "expected a BatchNorm with running_var"
        )
    if x.dim() < 2 or x.shape[1] != bn.running_var.shape[0]:
        raise ConfigError(
            f"x has shape {tuple(x.shape)}; "
            f"expected (N, {bn.running_var.shape[0]}, *) for this BatchNorm"
        )
    x = x.detach().double()
    dims = [0, *range(2, x.dim())]
    input_var = x.var(dim=dims, correction=1)
    running_var = bn.running_var.detach().double()
    return {"running_var": running_var, "input_var": input_var, "ratio": input_var / running_var}
