"""Calibration, selective prediction and out-of-distribution detection of one prediction.

Shapes (the one ensemble layout of the framework): ``probs`` is ``[N, C]`` probabilities of one
(aggregated) prediction, ``member_probs`` is ``[M, N, C]``, ``labels`` is ``[N]`` int64. Scalar
metrics return 0-dim tensors in the dtype of ``probs``.

Conventions:

- top-1 prediction ``ŷ_n = argmax_c p_{n,c}``; on ties **the first maximal index wins** (the rule
  of ``torch.argmax``), so a uniform prediction predicts class 0;
- logs are taken of ``max(p, finfo(dtype).tiny)`` (finite, so ``0 log 0 = 0``);
- the Brier score sums over classes (Brier 1950; range ``[0, 2]``), as in Ovadia et al. (2019).

Inputs are checked (:mod:`dropens.metrics._common`): ``probs`` must be finite probabilities,
``>= 0`` with rows summing to 1 within ``max(1e-3, 2 · eps(dtype))`` (float32 rounding is about
``C · 1e-7``, the float16 round trip of stored predictions at most ``4.9e-4``); labels integer
class indices in ``[0, C)``; OOD scores and confidences finite. Anything else raises
:class:`dropens.errors.InputError` (a ``ValueError``) with one line naming the argument.
Temperature scaling takes ``inputs="logits" | "logprobs" | "probs"`` and checks that the tensor is
what ``inputs`` says.
"""

from __future__ import annotations

import math
from numbers import Real

import torch
import torch.nn.functional as F
from torch import Tensor

from dropens.errors import ConfigError, InputError, check_choice
from dropens.metrics._common import (
    AGGREGATES,
    as_member_probs,
    check_labels,
    check_prob_values,
    check_probs,
    prob_tolerance,
    safe_log,
    values_checked,
)
from dropens.metrics._common import aggregate as _aggregate
from dropens.metrics.diversity import mutual_information, predictive_entropy

BINNINGS = ("width", "mass")
TEMPERATURE_INPUTS = ("logits", "logprobs", "probs")  # what fit/apply_temperature are given


# ----------------------------------------------------------------------------- basic scores


def _checked(probs: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    check_probs(probs)
    return probs, check_labels(labels, probs.shape[0], probs.shape[1])


def accuracy(probs: Tensor, labels: Tensor) -> Tensor:
    """Top-1 accuracy ``(1/N) Σ_n 1[argmax_c p_{n,c} = y_n]`` (ties: first maximal index).

    Args:
        probs: ``[N, C]`` probabilities (checked like every metric's: logits are refused; for the
            accuracy of logits pass ``softmax(logits)``, which has the same argmax).
        labels: ``[N]`` int64.

    Returns:
        0-dim tensor in ``probs.dtype``.
    """
    probs, labels = _checked(probs, labels)
    return (probs.argmax(dim=-1) == labels).to(probs.dtype).mean()


def nll(probs: Tensor, labels: Tensor) -> Tensor:
    """Negative log-likelihood ``-(1/N) Σ_n log max(p_{n,y_n}, tiny)`` in nats.

    Args:
        probs: ``[N, C]`` probabilities.
        labels: ``[N]`` int64.

    Returns:
        0-dim tensor.
    """
    probs, labels = _checked(probs, labels)
    return -safe_log(probs.gather(1, labels[:, None])).mean()


def brier(probs: Tensor, labels: Tensor) -> Tensor:
    """Brier score ``(1/N) Σ_n Σ_c (p_{n,c} - 1[y_n = c])²`` (summed over classes; Brier 1950).

    Args:
        probs: ``[N, C]`` probabilities.
        labels: ``[N]`` int64.

    Returns:
        0-dim tensor in ``[0, 2]``.
    """
    probs, labels = _checked(probs, labels)
    onehot = F.one_hot(labels, probs.shape[1]).to(probs.dtype)
    return ((probs - onehot) ** 2).sum(dim=-1).mean()


# ----------------------------------------------------------------------------- binning


def _check_bins(n_bins: int, binning: str) -> None:
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise ConfigError(f"n_bins={n_bins!r} is not valid; expected an integer >= 1")
    check_choice("binning", binning, BINNINGS)


def _bin_index(conf: Tensor, n_bins: int, binning: str) -> Tensor:
    """Bin of each confidence, along dim 0 of ``conf`` ``[N, K]`` (K independent columns).

    ``width``: bins ``[b/B, (b+1)/B)`` with the boundaries of ``torch.linspace(0, 1, B + 1)``;
    the last bin is closed (``conf = 1`` falls in bin ``B - 1``).
    ``mass``: sort each column (stable, so ties keep example order) and split it as
    ``numpy.array_split`` does: the first ``N mod B`` bins hold ``⌈N/B⌉`` examples, the others
    ``⌊N/B⌋``; bins are empty only when ``N < B``.
    """
    n = conf.shape[0]
    if binning == "width":
        bounds = torch.linspace(0, 1, n_bins + 1, dtype=conf.dtype, device=conf.device)
        idx = torch.bucketize(conf, bounds, right=True) - 1
        return idx.clamp_(0, n_bins - 1)
    sizes = torch.full((n_bins,), n // n_bins, dtype=torch.long, device=conf.device)
    sizes[: n % n_bins] += 1
    bin_of_rank = torch.repeat_interleave(torch.arange(n_bins, device=conf.device), sizes)
    order = torch.sort(conf, dim=0, stable=True).indices
    idx = torch.empty_like(order)
    idx.scatter_(0, order, bin_of_rank[:, None].expand_as(order))
    return idx


def _binned_sums(
    conf: Tensor, hit: Tensor, n_bins: int, binning: str
) -> tuple[Tensor, Tensor, Tensor]:
    """Per bin and column: count, Σ confidence, Σ hit. Inputs ``[N, K]``; outputs ``[B, K]``."""
    idx = _bin_index(conf, n_bins, binning)
    shape = (n_bins, conf.shape[1])
    count = torch.zeros(shape, dtype=conf.dtype, device=conf.device).scatter_add_(
        0, idx, torch.ones_like(conf)
    )
    conf_sum = torch.zeros(shape, dtype=conf.dtype, device=conf.device).scatter_add_(0, idx, conf)
    hit_sum = torch.zeros(shape, dtype=conf.dtype, device=conf.device).scatter_add_(
        0, idx, hit.to(conf.dtype)
    )
    return count, conf_sum, hit_sum


def _top1(probs: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    conf, pred = probs.max(dim=-1)
    return conf[:, None], (pred == labels)[:, None]


def ece(probs: Tensor, labels: Tensor, n_bins: int = 15, binning: str = "width") -> Tensor:
    """Expected calibration error of the top-1 prediction (Guo et al. 2017; Naeini et al. 2015).

    ``ECE = Σ_b (|B_b| / N) · |acc(B_b) - conf(B_b)|`` where ``conf`` is the top-1 probability,
    ``acc`` the fraction correct in bin ``B_b``; empty bins contribute 0.

    ``binning="width"`` uses ``n_bins`` equal-width bins on ``[0, 1]`` (the torchmetrics
    ``multiclass_calibration_error(norm="l1")`` value for confidences below 1; torchmetrics gives
    ``conf = 1`` a bin of its own, here it joins the last bin). ``binning="mass"`` uses adaptive
    equal-mass bins (Nixon et al. 2019, "Measuring calibration in deep learning"): the sorted
    confidences split into ``n_bins`` groups of ``⌈N/B⌉`` or ``⌊N/B⌋`` examples (ties broken by
    example order).

    Args:
        probs: ``[N, C]`` probabilities.
        labels: ``[N]`` int64.
        n_bins: number of bins ``B >= 1``.
        binning: ``width`` | ``mass``.

    Returns:
        0-dim tensor in ``[0, 1]``.
    """
    probs, labels = _checked(probs, labels)
    _check_bins(n_bins, binning)
    _, conf_sum, hit_sum = _binned_sums(*_top1(probs, labels), n_bins, binning)
    return (hit_sum - conf_sum).abs().sum() / probs.shape[0]


def mce(probs: Tensor, labels: Tensor, n_bins: int = 15, binning: str = "width") -> Tensor:
    """Maximum calibration error ``max_b |acc(B_b) - conf(B_b)|`` over non-empty bins.

    Naeini et al. (2015).

    Same bins as :func:`ece`; equals torchmetrics ``multiclass_calibration_error(norm="max")`` for
    ``binning="width"`` and confidences below 1.

    Args:
        probs: ``[N, C]``; labels: ``[N]`` int64; n_bins: ``B >= 1``; binning: ``width`` | ``mass``.

    Returns:
        0-dim tensor in ``[0, 1]``.
    """
    probs, labels = _checked(probs, labels)
    _check_bins(n_bins, binning)
    count, conf_sum, hit_sum = _binned_sums(*_top1(probs, labels), n_bins, binning)
    gap = (hit_sum - conf_sum).abs() / count.clamp_min(1)
    return gap.max()


def classwise_ece(
    probs: Tensor, labels: Tensor, n_bins: int = 15, binning: str = "width"
) -> Tensor:
    """Class-wise ECE (Kull et al. 2019, "Beyond temperature scaling"; Kumar et al. 2019).

    ``cwECE = (1/C) Σ_c Σ_b (|B_{c,b}| / N) · |freq_c(B_{c,b}) - mean p_c(B_{c,b})|`` where, for
    each class ``c``, every example is binned by its probability ``p_{n,c}`` and
    ``freq_c`` is the fraction of examples in the bin whose label is ``c``.

    Args:
        probs: ``[N, C]``; labels: ``[N]`` int64; n_bins: ``B >= 1``; binning: ``width`` | ``mass``
            (applied per class).

    Returns:
        0-dim tensor in ``[0, 1]``.
    """
    probs, labels = _checked(probs, labels)
    _check_bins(n_bins, binning)
    onehot = F.one_hot(labels, probs.shape[1])
    _, conf_sum, hit_sum = _binned_sums(probs, onehot, n_bins, binning)
    return (hit_sum - conf_sum).abs().sum(dim=0).mean() / probs.shape[0]


def reliability(
    probs: Tensor, labels: Tensor, n_bins: int = 15, binning: str = "width"
) -> dict[str, Tensor]:
    """Reliability diagram data of the top-1 prediction (Guo et al. 2017, fig. 1).

    Per bin ``b`` (same bins as :func:`ece`): mean confidence, accuracy and count. Then
    ``ece = Σ_b count_b / N · |accuracy_b - confidence_b|`` over non-empty bins.

    Args:
        probs: ``[N, C]``; labels: ``[N]`` int64; n_bins: ``B >= 1``; binning: ``width`` | ``mass``.

    Returns:
        ``{"confidence": [B], "accuracy": [B], "count": [B] int64}``; ``confidence`` and
        ``accuracy`` are NaN in empty bins (nothing to plot there).
    """
    probs, labels = _checked(probs, labels)
    _check_bins(n_bins, binning)
    count, conf_sum, hit_sum = (
        t[:, 0] for t in _binned_sums(*_top1(probs, labels), n_bins, binning)
    )
    return {"confidence": conf_sum / count, "accuracy": hit_sum / count, "count": count.long()}


# ----------------------------------------------------------------------------- temperature scaling


def _check_scores_tensor(x: Tensor, name: str) -> None:
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() not in (2, 3):
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise InputError(f"{name} has shape {got}; expected a float tensor [N, C] or [M, N, C]")
    if min(x.shape) < 1:
        raise InputError(
            f"{name} has shape {tuple(x.shape)}; expected at least one member, example and class"
        )


def _is_probs(x: Tensor) -> bool:
    """Every row of ``x`` is a probability vector (finite, in ``[0, 1]``, sums to 1)."""
    try:
        check_prob_values(x, "x", always=True)
    except InputError:
        return False
    return True


def _kind_error(x: Tensor, inputs: str, name: str, problem: str) -> InputError:
    """``inputs=...`` does not describe ``x``: say what is wrong and what ``x`` looks like."""
    if not bool(torch.isfinite(x).all()):
        hint = "it has NaN or inf (a diverged model?)"
    elif _is_probs(x):
        hint = "it looks like probabilities: pass inputs='probs'"
    else:
        hint = "it looks like logits: pass inputs='logits'"
    return InputError(f"inputs={inputs!r} but {name} {problem}; {hint}")


def _check_inputs(x: Tensor, inputs: str, name: str) -> None:
    """Require ``x`` to be what ``inputs`` says (tolerance: :func:`prob_tolerance` of its dtype).

    ``logits``: finite, and not rows of probabilities (``C > 1``: ``softmax`` of probabilities
    is a different, much flatter prediction); ``logprobs``: no NaN/``+inf``, ``<= tol`` and each
    row's ``logsumexp`` within ``tol`` of 0 (``-inf`` is ``log 0``); ``probs``: finite, ``>= 0``,
    rows summing to 1 within ``tol``.
    """
    check_choice("inputs", inputs, TEMPERATURE_INPUTS)
    tol = prob_tolerance(x.dtype)
    if inputs == "probs":
        if not _is_probs(x):
            raise _kind_error(x, inputs, name, f"is not probabilities summing to 1 within {tol:g}")
    elif inputs == "logits":
        if not bool(torch.isfinite(x).all()):
            raise _kind_error(x, inputs, name, "is not finite")
        if x.shape[-1] > 1 and _is_probs(x):
            raise InputError(
                f"inputs='logits' but every row of {name} is a probability vector (in [0, 1], "
                "summing to 1): pass inputs='probs' (as logits they are a different prediction)"
            )
    else:  # a NaN or +inf makes its row's logsumexp NaN or +inf: no pass of its own
        lse = torch.logsumexp(x.to(torch.promote_types(x.dtype, torch.float32)), dim=-1)
        if not bool(x.max() <= tol) or not bool((lse.abs() <= tol).all()):
            if bool(torch.isnan(x).any()) or bool((x == math.inf).any()):
                raise _kind_error(x, inputs, name, "has NaN or +inf")
            worst = float(lse.abs().max())
            raise _kind_error(
                x,
                inputs,
                name,
                f"is not log-probabilities (values <= 0, each row logsumexp = 0 within {tol:g}; "
                f"max {float(x.max()):.4g}, worst |logsumexp| {worst:.4g})",
            )


def _log_prediction(x: Tensor, how: str, inputs: str) -> Tensor:
    """``[N, C]`` log-probabilities ``ℓ`` of one prediction from checked ``[N, C]`` or
    ``[M, N, C]`` logits, log-probabilities or probabilities (in the dtype of ``x``)."""
    if inputs == "probs":
        if x.dim() == 2:
            return torch.log_softmax(safe_log(x), dim=-1)
        with values_checked():  # by _check_inputs
            return safe_log(_aggregate(x, how))
    if inputs == "logprobs":  # -inf (p = 0) -> log tiny, as safe_log does for probabilities
        x = x.clamp_min(math.log(torch.finfo(x.dtype).tiny))
    if x.dim() == 2:
        return torch.log_softmax(x, dim=-1)
    with values_checked():  # softmax rows are probabilities
        return safe_log(_aggregate(torch.softmax(x, dim=-1), how))


def fit_temperature(
    logits_or_logprobs: Tensor,
    labels: Tensor,
    aggregate: str = "mean",
    max_iter: int = 200,
    *,
    inputs: str = "logprobs",
) -> float:
    """Fit the temperature ``T`` of temperature scaling on validation NLL (Guo et al. 2017).

    ``T* = argmin_T -(1/N) Σ_n log softmax(ℓ_n / T)_{y_n}``, optimized over ``log T`` with
    L-BFGS (strong Wolfe line search) in float64.

    ``ℓ`` are the log-probabilities of *one* prediction: for ``[N, C]`` input (one model),
    ``ℓ = log_softmax(z)`` with ``z`` the logits, the log-probabilities or ``log p`` (a per-row
    shift does not change ``softmax(ℓ / T)``); for ensemble input ``[M, N, C]``,
    ``ℓ = log aggregate(p_m, aggregate)`` with ``p_m`` the member probabilities (``softmax`` of
    logits or log-probabilities), i.e. the temperature scales the *aggregate*. Logits,
    log-probabilities and probabilities of the same prediction give the same temperature.
    ``T > 1`` softens an overconfident prediction. If the data are perfectly separated the optimum
    is ``T → 0`` and the result is whatever ``max_iter`` reached.

    Args:
        logits_or_logprobs: ``[N, C]`` or ``[M, N, C]``, of the kind ``inputs`` names.
        labels: ``[N]`` int64.
        aggregate: ``mean`` | ``geometric`` (ensembles only; see
            :func:`dropens.metrics.summary.aggregate`).
        max_iter: L-BFGS iterations (``>= 1``).
        inputs: keyword-only, what ``logits_or_logprobs`` holds: ``logprobs`` (default; values
            ``<= 0``, every row's ``logsumexp`` within ``max(1e-3, 2 · eps)`` of 0, ``-inf`` allowed)
            | ``logits`` (any finite scores, but not rows of probabilities) | ``probs`` (in
            ``[0, 1]``, rows summing to 1 within the same tolerance). A tensor that is not what
            ``inputs`` says is refused (the probabilities of a model are not its logits).

    Returns:
        The temperature as a Python float.

    Raises:
        InputError: the tensor does not match ``inputs``, bad shapes or labels.
    """
    name = "logits_or_logprobs"
    _check_scores_tensor(logits_or_logprobs, name)
    check_choice("aggregate", aggregate, AGGREGATES)
    _check_inputs(logits_or_logprobs, inputs, name)
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ConfigError(f"max_iter={max_iter!r} is not valid; expected an integer >= 1")
    x = logits_or_logprobs.detach().double()
    base = _log_prediction(x, aggregate, inputs)
    labels = check_labels(labels, base.shape[0], base.shape[1]).to(base.device)
    log_t = torch.zeros((), dtype=torch.float64, device=base.device, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(base / log_t.exp(), labels)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return float(log_t.detach().exp())


def apply_temperature(
    logits_or_logprobs: Tensor,
    temperature: float,
    aggregate: str = "mean",
    *,
    inputs: str = "logprobs",
) -> Tensor:
    """Temperature-scaled probabilities ``softmax(ℓ / T)`` ``[N, C]``.

    ``ℓ`` as in :func:`fit_temperature` (the aggregate's log-probabilities for ``[M, N, C]`` input).

    Args:
        logits_or_logprobs: ``[N, C]`` or ``[M, N, C]``, of the kind ``inputs`` names.
        temperature: finite ``T > 0``.
        aggregate: ``mean`` | ``geometric`` (ensembles only).
        inputs: keyword-only: ``logprobs`` (default) | ``logits`` | ``probs``, checked as in
            :func:`fit_temperature`.

    Returns:
        ``[N, C]`` probabilities in the input dtype.
    """
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, Real)
        or not math.isfinite(temperature)
        or not temperature > 0
    ):
        raise ConfigError(
            f"temperature={temperature!r} is not valid; expected a finite positive float"
        )
    name = "logits_or_logprobs"
    _check_scores_tensor(logits_or_logprobs, name)
    check_choice("aggregate", aggregate, AGGREGATES)
    _check_inputs(logits_or_logprobs, inputs, name)
    logp = _log_prediction(logits_or_logprobs, aggregate, inputs)
    return torch.softmax(logp / temperature, dim=-1)


# ----------------------------------------------------------------------------- selective prediction


def aurc(probs: Tensor, labels: Tensor, confidence: Tensor | None = None) -> Tensor:
    """Area under the risk-coverage curve (Geifman & El-Yaniv 2017; Geifman et al. 2019).

    Sort examples by decreasing confidence; with ``e_(i)`` the 0/1 top-1 error of the ``i``-th,
    ``risk(k) = (1/k) Σ_{i<=k} e_(i)`` is the error at coverage ``k/N`` and
    ``AURC = (1/N) Σ_{k=1}^N risk(k)``. Lower is better; a perfect ranking of an error rate ``r``
    gives ``r + (1 - r) log(1 - r)`` asymptotically. Ties in confidence: the errors of a tied group
    are replaced by the group's mean error, i.e. the expected AURC over random tie-breaking (so the
    value does not depend on example order).

    Args:
        probs: ``[N, C]`` probabilities.
        labels: ``[N]`` int64.
        confidence: ``[N]`` finite score, larger = more confident (default: the top-1
            probability).

    Returns:
        0-dim tensor in ``[0, 1]``.
    """
    probs, labels = _checked(probs, labels)
    if confidence is None:
        conf = probs.max(dim=-1).values
    else:
        if not isinstance(confidence, Tensor) or confidence.shape != (probs.shape[0],):
            got = (
                tuple(confidence.shape)
                if isinstance(confidence, Tensor)
                else type(confidence).__name__
            )
            raise InputError(f"confidence has shape {got}; expected [N]=({probs.shape[0]},)")
        conf = confidence.to(probs.dtype)
        if not bool(torch.isfinite(conf).all()):
            raise InputError(
                "confidence has NaN or inf values; expected finite scores (larger = more confident)"
            )
    err = (probs.argmax(dim=-1) != labels).to(probs.dtype)
    conf_sorted, order = torch.sort(conf, descending=True, stable=True)
    err = err[order]
    _, group, counts = torch.unique_consecutive(
        conf_sorted, return_inverse=True, return_counts=True
    )
    group_err = torch.zeros(counts.shape, dtype=err.dtype, device=err.device).scatter_add_(
        0, group, err
    )
    err = (group_err / counts)[group]
    k = torch.arange(1, err.shape[0] + 1, dtype=err.dtype, device=err.device)
    return (err.cumsum(0) / k).mean()


# ----------------------------------------------------------------------------- out-of-distribution


def ood_scores(member_probs: Tensor, aggregate: str = "mean") -> dict[str, Tensor]:
    """Per-example OOD scores, **all oriented larger = more in-distribution**.

    With ``p̄ = aggregate(member_probs)`` (``[N, C]`` input is one member):

    - ``maxprob`` = ``max_c p̄_c`` (Hendrycks & Gimpel 2017);
    - ``entropy`` = ``-H[p̄] = Σ_c p̄_c log p̄_c`` (negated predictive entropy);
    - ``mi`` = ``-MI`` = ``-(H[mean_m p_m] - mean_m H[p_m])`` (negated mutual information, BALD;
      Houlsby et al. 2011; always with the arithmetic mean; 0 for one member).

    Feed the same key of the in- and out-distribution sets to :func:`ood_auroc`.

    Args:
        member_probs: ``[M, N, C]`` or ``[N, C]``.
        aggregate: ``mean`` | ``geometric`` (for ``maxprob`` and ``entropy``).

    Returns:
        ``{"maxprob": [N], "entropy": [N], "mi": [N]}``.
    """
    member_probs = as_member_probs(member_probs)
    with values_checked():
        probs = _aggregate(member_probs, aggregate)
        return {
            "maxprob": probs.max(dim=-1).values,
            "entropy": -predictive_entropy(probs, reduction="none"),
            "mi": -mutual_information(member_probs, reduction="none"),
        }


def _check_scores(scores: Tensor, name: str) -> Tensor:
    if (
        not isinstance(scores, Tensor)
        or scores.dim() != 1
        or scores.numel() == 0
        or scores.is_complex()
    ):
        got = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
        raise InputError(f"{name} has shape {got}; expected a non-empty 1-D real tensor [N]")
    out = scores.detach().double()
    if not bool(torch.isfinite(out).all()):
        n_bad = int((~torch.isfinite(out)).sum())
        raise InputError(
            f"{name} has {n_bad} NaN or inf value(s); expected finite scores (larger = more "
            "in-distribution; a diverged model gives NaN)"
        )
    return out


def ood_auroc(scores_in: Tensor, scores_out: Tensor) -> Tensor:
    """AUROC of separating in- from out-of-distribution examples, in-distribution = positive.

    ``AUROC = P(s_in > s_out) + ½ P(s_in = s_out)`` = Mann-Whitney ``U / (n_in · n_out)``, computed
    from average ranks (exact, ties count ½). Scores are oriented larger = more in-distribution
    (as returned by :func:`ood_scores`); 0.5 = chance. (Own implementation: torchmetrics'
    ``binary_auroc`` applies a sigmoid to scores outside ``[0, 1]``, which saturates in float32 and
    creates false ties.)

    Args:
        scores_in: ``[N_in]`` finite scores of in-distribution examples.
        scores_out: ``[N_out]`` finite scores of out-of-distribution examples.

    Returns:
        0-dim float64 tensor in ``[0, 1]``.
    """
    s_in, s_out = _check_scores(scores_in, "scores_in"), _check_scores(scores_out, "scores_out")
    n_in, n_out = s_in.numel(), s_out.numel()
    values, order = torch.sort(torch.cat([s_in, s_out]))
    _, group, counts = torch.unique_consecutive(values, return_inverse=True, return_counts=True)
    first = torch.cumsum(counts, 0) - counts  # 0-based rank of each group's first element
    avg_rank = (first + (counts + 1) / 2.0).double()[group]  # 1-based average ranks, sorted order
    ranks = torch.empty_like(avg_rank).scatter_(0, order, avg_rank)
    u = ranks[:n_in].sum() - n_in * (n_in + 1) / 2.0
    return u / (n_in * n_out)


def fpr_at_95_tpr(scores_in: Tensor, scores_out: Tensor, tpr: float = 0.95) -> Tensor:
    """False-positive rate at 95% true-positive rate, in-distribution = positive.

    Predict "in" when ``s >= t``; ``t`` is the largest threshold with
    ``TPR = #{s_in >= t} / N_in >= tpr``, i.e. the ``⌈tpr · N_in⌉``-th largest in-score; then
    ``FPR = #{s_out >= t} / N_out`` (the smallest FPR at which TPR reaches ``tpr``, as read off
    ``sklearn.metrics.roc_curve``). Lower is better.

    Args:
        scores_in: ``[N_in]``; scores_out: ``[N_out]`` (larger = more in-distribution).
        tpr: the target true-positive rate in ``(0, 1]``.

    Returns:
        0-dim float64 tensor in ``[0, 1]``.
    """
    if isinstance(tpr, bool) or not isinstance(tpr, Real) or not 0.0 < tpr <= 1.0:
        raise ConfigError(f"tpr={tpr!r} is not valid; expected a rate in (0, 1]")
    s_in, s_out = _check_scores(scores_in, "scores_in"), _check_scores(scores_out, "scores_out")
    k = math.ceil(round(tpr * s_in.numel(), 9))  # round: 0.95 * 20 must give 19, not 19.000...04
    t = torch.sort(s_in, descending=True).values[k - 1]
    return (s_out >= t).double().mean()
