"""Evaluate a trained backbone on every eval set with every strategy its method calls for.

A method declares its plan in ``eval_strategies`` (a class attribute of :class:`dropens.methods.Method`;
e.g. ``("deterministic", "mc")`` for dropout). :func:`evaluate` runs the plan and produces the flat
metric dict of the run record (keys ``test/<set>/<label>/<metric>``) and the member predictions
``[M, N, C]`` stored beside it (``<set>/<strategy>``):

- ``deterministic``: label ``deterministic`` (weight scaling); stored ``<set>/deterministic``.
- ``mc``: labels ``mc<T>`` for every ``T`` of ``eval.mc_curve`` and ``eval.mc_samples``; stored
  ``<set>/mc`` (the ``max(T)`` samples).
- ``members``: labels ``members`` (mean aggregate), ``members_geometric`` (normalized geometric
  mean), ``member<k>`` (member ``k`` alone, ``k = 0..K-1``) and ``members@<m>`` (the average of
  the first ``m`` members, ``m = 1, 2, 4, ... < K``: the members curve); stored ``<set>/members``
  ``[K, N, C]``.
- ``eval.exhaustive: true`` (tiny networks): labels ``exhaustive_mean`` and
  ``exhaustive_geometric``, the probability-weighted arithmetic / normalized geometric mean over
  every Bernoulli mask (:func:`dropens.inference.predict` ``exhaustive``); not stored.
- ``ws_off`` / ``ws_on`` (the weight-scaling probe of the magnitude study): the deterministic pass
  with every dropout layer's multiplier forced to one (identity) / to ``keep = 1 - p``, whatever its
  ``scale`` (:func:`dropens.control.eval_multiplier`). For ``scale=inverted`` ``ws_off`` equals
  ``deterministic`` and ``ws_on`` is the mismatched pass (scaled twice); for ``scale=none``
  ``ws_on`` equals ``deterministic`` and ``ws_off`` is the mismatched pass (never scaled). Labels
  and stored arrays ``<set>/ws_off``, ``<set>/ws_on`` ``[1, N, C]``. Skipped (no keys) when the
  backbone has no dropout layer with ``p > 0``.
- ``bn_recomputed``: the deterministic pass of a copy of the backbone whose BatchNorm running
  statistics are recomputed on the training inputs with dropout off (:func:`recompute_bn`), which
  removes the variance shift of BatchNorm after dropout (Li et al. 2019). Label and stored array
  ``<set>/bn_recomputed`` ``[1, N, C]``. Needs ``train_x``; skipped (no keys) when the backbone has
  no BatchNorm with running statistics or no dropout layer with ``p > 0``.

Dataset shift (the ``shift`` study; Ovadia et al. 2019), both off unless configured:

- ``eval.temperature_scaling: true`` (absent from ``configs/train.yaml``, so ordinary run ids do not
  change; studies add ``+eval.temperature_scaling=true``): one temperature ``T > 0`` per label
  ``deterministic``, ``mc<eval.mc_samples>`` and ``members`` is fitted by minimizing the NLL on the
  eval set ``val`` (the clean validation split, ``+data.eval_val=true``) and applied to every eval
  set: labels ``<label>_ts`` (e.g. ``test/rotate_3/deterministic_ts/ece``) with the usual scalars
  of the one scaled prediction, plus ``temperature``. An averaged prediction (MC, members) is
  scaled as one classifier, *after* averaging: ``softmax(log p̄ / T)`` with ``p̄`` the mean of the
  member probabilities (:func:`dropens.metrics.calibration.fit_temperature`), as Rahaman & Thiery
  (2021) recommend for deep ensembles (Ashukha et al. 2020: compare ensembles only after
  temperature scaling). Scaling each member's logits before averaging would be the other choice; it
  also changes the members and their diversity. No stored arrays.
- an eval set named ``ood`` (``+data.eval_ood=mnist5k``) is out-of-distribution: its labels are
  never scored (no accuracy/NLL rows); instead ``test/ood/<label>/auroc_<score>`` is the AUROC of
  separating ``clean`` (positive) from ``ood`` by ``maxprob``, ``entropy`` (negated predictive
  entropy) and ``mi`` (negated mutual information, ensembles only)
  (:func:`dropens.metrics.calibration.ood_scores`), for the labels above and their ``_ts`` versions
  (``maxprob`` and ``entropy``: a scaled prediction has no members).

MC curves are nested: the predictions for ``T`` samples are the first ``T`` of one run of ``max(T)``
samples, so the curve over T is one trajectory (as in Srivastava et al. 2014, Fig. 11) and costs one
batched pass. The ``mc`` rows also hold ``member_acc`` / ``member_nll``: the mean single-sample
(single random subnetwork) metrics. ``members`` runs the ``members`` inference protocol
(:func:`dropens.inference.predict`): the ``K`` subnetworks of ``subnets`` or the ``K`` networks of
``ensemble``, once; both aggregates are computed from the same member predictions.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from dropens import control
from dropens.errors import ConfigError, check_choice
from dropens.inference import Predictions, geometric_from_logprobs, predict
from dropens.metrics._common import safe_log
from dropens.metrics.calibration import apply_temperature, fit_temperature, ood_auroc, ood_scores
from dropens.metrics.magnitude import record_train_eval
from dropens.metrics.summary import prediction_metrics

EVAL_STRATEGIES = ("deterministic", "mc", "members", "ws_off", "ws_on", "bn_recomputed")
# the weight-scaling probe: strategy -> forced multiplier of every dropout layer's deterministic pass
WS_PROBES = {"ws_off": "one", "ws_on": "keep"}
# the probes every dropout-family method adds to its plan: weight scaling forced off / on, and
# BatchNorm statistics recomputed with dropout off (only where the backbone has BatchNorm)
DROPOUT_PROBES = (*WS_PROBES, "bn_recomputed")
BN_BATCH_SIZE = 128  # rows per forward of recompute_bn when no training batch size is given
MAGNITUDE_EXAMPLES = 512  # examples of the magnitudes record: cheap, and enough for pooled moments
FIT_SET = "val"  # the eval set temperature scaling is fitted on
IN_SET, OOD_SET = "clean", "ood"  # in- and out-of-distribution sets of the OOD AUROC


def check_temperature_scaling(eval_cfg: Mapping[str, Any], set_names: Sequence[str]) -> bool:
    """Whether ``eval.temperature_scaling`` is on; raises if it is not a bool or its fit set is absent.

    Args:
        set_names: the eval sets that will be evaluated.

    Raises:
        ConfigError: one line naming the field and what to add.
    """
    value = eval_cfg.get("temperature_scaling", False)
    if not isinstance(value, bool):
        raise ConfigError(
            f"eval.temperature_scaling={value!r} is not valid; choose one of: true, false"
        )
    if value and FIT_SET not in set_names:
        raise ConfigError(
            f"eval.temperature_scaling=true fits on eval set {FIT_SET!r}, which is not among "
            f"{list(set_names)}; add +data.eval_val=true and {FIT_SET} (or all) to eval.sets"
        )
    return value


def mc_sizes(eval_cfg: Mapping[str, Any]) -> list[int]:
    """Sorted MC sample sizes to report: ``eval.mc_curve`` plus ``eval.mc_samples``."""
    sizes = [*eval_cfg.get("mc_curve", []), eval_cfg["mc_samples"]]
    for t in sizes:
        if not isinstance(t, int) or t < 1:
            raise ConfigError(
                f"eval.mc_samples/mc_curve value {t!r} is not valid; MC needs integers >= 1"
            )
    return sorted(set(sizes))


def has_dropout(model: nn.Module) -> bool:
    """Whether ``model`` has a :class:`dropens.layers.Dropout` with ``p > 0``."""
    return any(m.p > 0 for m in control.dropout_layers(model))


def batchnorm_layers(model: nn.Module) -> list[_BatchNorm]:
    """Every BatchNorm of ``model`` that keeps running statistics, in ``modules()`` order."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recompute_bn(model: nn.Module, x: Tensor, batch_size: int = BN_BATCH_SIZE) -> nn.Module:
    """A deep copy of ``model`` with BatchNorm running statistics recomputed with dropout off.

    The copy's running statistics are reset (``momentum=None``: cumulative), then ``x`` is
    forwarded in ``ceil(N / batch_size)`` near-equal chunks without gradients, with BatchNorm in
    train mode (each chunk normalized by its own statistics, as in training) and every dropout
    layer in its deterministic mode (:func:`dropens.control.deterministic`, which follows the
    layer's ``scale``). Each BatchNorm's ``running_mean`` / ``running_var`` are then set to the
    exact mean and unbiased variance of its input over all ``N`` rows (per channel, pooled over
    the chunks in float64): what ``momentum=None`` gives with one chunk of all of ``x``, for any
    chunking. A BatchNorm with no BatchNorm upstream therefore gets exactly the statistics of its
    input in the deterministic pass; deeper ones see upstream layers normalized by chunk
    statistics, as the running statistics of training do ("precise BN", Wu & Johnson 2021).

    ``model`` itself is not changed. The copy is returned in eval mode, on ``model``'s device.

    Args:
        model: a backbone mapping ``(N, *input_shape)`` to logits (not a stacked ensemble).
        x: ``[N, *input_shape]`` training inputs, ``N >= 2``.
        batch_size: rows per forward (the training batch size keeps upstream normalization as in
            training); chunks have ``N // n_chunks`` or one more rows.

    Returns:
        The copy, with ``running_mean``/``running_var`` ``[C]`` of every BatchNorm recomputed and
        ``num_batches_tracked`` the number of chunks.
    """
    if len(x) < 2:
        raise ConfigError(
            f"recomputing BatchNorm statistics needs at least 2 training inputs; got {len(x)}"
        )
    fresh = copy.deepcopy(model)
    bns = batchnorm_layers(fresh)
    moments: dict[_BatchNorm, tuple[int, Tensor, Tensor]] = {}  # count, mean [C], M2 [C]

    def accumulate(bn: _BatchNorm, args: tuple) -> None:
        h = args[0].detach().double()
        dims = [0, *range(2, h.dim())]
        n = h.numel() // h.shape[1]
        mean = h.mean(dims)
        m2 = (h - mean.view(1, -1, *([1] * (h.dim() - 2)))).square().sum(dims)
        if bn in moments:  # Chan et al. (1979): merge (count, mean, M2) of two parts exactly
            n0, mean0, m20 = moments[bn]
            delta = mean - mean0
            total = n0 + n
            mean = mean0 + delta * (n / total)
            m2 = m20 + m2 + delta.square() * (n0 * n / total)
            n = total
        moments[bn] = (n, mean, m2)

    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    device = next((t.device for t in (*fresh.parameters(), *fresh.buffers())), x.device)
    handles = [bn.register_forward_pre_hook(accumulate) for bn in bns]
    try:
        fresh.train()
        with control.deterministic(fresh):
            n_chunks = -(-len(x) // max(1, int(batch_size)))
            for chunk in torch.tensor_split(x, n_chunks):
                fresh(chunk.to(device))
    finally:
        for handle in handles:
            handle.remove()
        fresh.eval()
    for bn in bns:
        if bn not in moments:  # not called by the forward: nothing to recompute
            continue
        n, mean, m2 = moments[bn]
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(m2 / max(n - 1, 1))
    return fresh


def magnitudes(
    backbone: nn.Module,
    eval_sets: Mapping[str, tuple[Tensor, Tensor]],
    seed: int,
    n_examples: int = MAGNITUDE_EXAMPLES,
) -> dict[str, Any]:
    """The ``magnitudes.json`` record: per-layer activation statistics, training vs eval pass.

    :func:`dropens.metrics.magnitude.record_train_eval` on the first ``n_examples`` examples of
    the first eval set, the training pass's masks drawn from ``torch.manual_seed(seed)`` in a
    forked RNG (the global RNG is untouched; the same seed gives the same record). The backbone
    is left exactly as it was. A stacked ensemble is recorded through its member 0.

    Args:
        backbone: the trained backbone.
        eval_sets: ``{name: (x [N, *input_shape], y [N])}``; the first one is used.
        seed: the run's seed.
        n_examples: at most this many examples (one batch of ``min(n_examples, N)`` rows).

    Returns:
        ``{"eval_set": name, "n_examples": n, "seed": seed, "member": 0 | None, "layers": rows}``
        with one row per (dropout or BatchNorm layer, ``input`` | ``output``, call), keys as
        documented in :func:`~dropens.metrics.magnitude.record_train_eval`: ``layer, type, kind,
        where, call, p``, ``{mean,var,mean_abs,frac_zero,l2}_{train,eval,ratio}`` (ratio =
        eval/train), ``var_ratio_predicted`` (dropout output rows: the closed-form variance shift
        of the layer's input mean/variance and ``p``, next to the measured ``var_ratio``),
        ``bn_running_var``, ``bn_eval_var``, ``bn_var_ratio`` (BatchNorm input rows).
    """
    name, (x, _) = next(iter(eval_sets.items()))
    member = None
    model = backbone
    if getattr(backbone, "stacked_members", False) is True and hasattr(backbone, "member"):
        member, model = 0, backbone.member(0)  # hooks cannot read statistics inside vmap
    device = next((t.device for t in (*model.parameters(), *model.buffers())), x.device)
    batch = x[: max(1, int(n_examples))].to(device)
    rows = record_train_eval(model, batch, seed=int(seed))
    return {
        "eval_set": name,
        "n_examples": len(batch),
        "seed": int(seed),
        "member": member,
        "layers": rows,
    }


def evaluate(
    backbone: nn.Module,
    eval_sets: Mapping[str, tuple[Tensor, Tensor]],
    eval_cfg: Mapping[str, Any],
    strategies: Sequence[str] = ("deterministic",),
    stage: str = "test",
    train_x: Tensor | None = None,
    train_batch_size: int = BN_BATCH_SIZE,
) -> tuple[dict[str, float], dict[str, Tensor]]:
    """Metrics and stored arrays of every strategy of ``strategies`` (a method's ``eval_strategies``).

    Args:
        eval_sets: ``{name: (x [N, *input_shape], y [N])}``.
        eval_cfg: the ``eval`` config node (mc_samples, mc_curve, n_bins, memory_budget_mb,
            optional exhaustive and temperature_scaling).
        strategies: a subset of :data:`EVAL_STRATEGIES` (what each records: module docstring).
        train_x: ``[N_train, *input_shape]`` training inputs (``bn_recomputed`` only).
        train_batch_size: rows per forward of ``bn_recomputed`` (:func:`recompute_bn`).

    Returns:
        ``(metrics, arrays)``: ``metrics["test/clean/mc32/ece"]``-style floats; arrays
        ``{"<set>/<strategy>": member_probs [M, N, C], "labels/<set>": [N]}``.

    Raises:
        ConfigError: an unknown strategy, ``bn_recomputed`` applicable without ``train_x``, or
            ``eval.temperature_scaling`` without the eval set ``val``.
    """
    for strategy in strategies:
        check_choice("eval strategy", strategy, EVAL_STRATEGIES)
    dropout = has_dropout(backbone)
    ws_probes = [s for s in WS_PROBES if s in strategies] if dropout else []
    recomputed = None
    if "bn_recomputed" in strategies and dropout and batchnorm_layers(backbone):
        if train_x is None:
            raise ConfigError(
                "eval strategy 'bn_recomputed' needs the training inputs: pass train_x to evaluate"
            )
        recomputed = recompute_bn(backbone, train_x, train_batch_size)
    ts_on = check_temperature_scaling(eval_cfg, list(eval_sets))
    budget, n_bins = eval_cfg["memory_budget_mb"], eval_cfg["n_bins"]
    metrics: dict[str, float] = {}
    arrays: dict[str, Tensor] = {}
    # per set, the predictions of the calibrated / OOD-scored labels: label -> [M, N, C] log-probs
    # (kept only when needed: MC log-probabilities of a large test set are big)
    scored: dict[str, dict[str, Tensor]] = {}
    keep_scored = ts_on or OOD_SET in eval_sets

    def record(label: str, preds: Predictions, y: Tensor) -> dict[str, float]:
        if label.split("/")[0] == OOD_SET:  # out-of-distribution: its labels are not ours
            return {}
        values = prediction_metrics(preds.member_probs, y, aggregate=preds.aggregate, n_bins=n_bins)
        _put(metrics, f"{stage}/{label}", values)
        return values

    for name, (x, y) in eval_sets.items():
        y = y.cpu()
        arrays[f"labels/{name}"] = y
        keep = scored.setdefault(name, {}) if keep_scored else {}
        if "deterministic" in strategies:
            det = predict(backbone, x, "deterministic", memory_budget_mb=budget, keep_logprobs=True)
            arrays[f"{name}/deterministic"] = det.member_probs
            keep["deterministic"] = det.member_logprobs
            record(f"{name}/deterministic", det, y)
        for probe in ws_probes:
            with control.eval_multiplier(backbone, WS_PROBES[probe]):
                ws = predict(backbone, x, "deterministic", memory_budget_mb=budget)
            arrays[f"{name}/{probe}"] = ws.member_probs
            record(f"{name}/{probe}", ws, y)
        if recomputed is not None:
            bn = predict(recomputed, x, "deterministic", memory_budget_mb=budget)
            arrays[f"{name}/bn_recomputed"] = bn.member_probs
            record(f"{name}/bn_recomputed", bn, y)
        if "members" in strategies:
            members = predict(
                backbone,
                x,
                "members",
                aggregate="mean",
                memory_budget_mb=budget,
                keep_logprobs=True,
            )
            probs = members.member_probs
            arrays[f"{name}/members"] = probs
            keep["members"] = members.member_logprobs
            mean_row = record(f"{name}/members", members, y)
        if "members" in strategies and name != OOD_SET:
            # The geometric aggregate from log-probabilities (stored probabilities underflow); its
            # member-level rows are those of `members`, its ensemble gain is against its own NLL.
            geometric = geometric_from_logprobs(members.member_logprobs).unsqueeze(0)
            row = prediction_metrics(geometric, y, n_bins=n_bins)
            if len(probs) > 1:
                row.update(
                    {k: mean_row[k] for k in ("mi", "disagreement", "member_acc", "member_nll")}
                )
                row["ensemble_gain"] = mean_row["member_nll"] - row["nll"]
            _put(metrics, f"{stage}/{name}/members_geometric", row)
            for k in range(len(probs)):
                record(f"{name}/member{k}", Predictions(probs[k : k + 1], "mean", "members"), y)
            # the members curve: the average of the first m members, m = 1, 2, 4, ... < K
            m = 1
            while m < len(probs):
                record(f"{name}/members@{m}", Predictions(probs[:m], "mean", "members"), y)
                m *= 2
        if eval_cfg.get("exhaustive", False) and name != OOD_SET:
            # every mask of the network, weighted by its probability (Warde-Farley et al. 2014)
            ex = predict(backbone, x, "exhaustive", memory_budget_mb=budget, keep_logprobs=True)
            _put(
                metrics,
                f"{stage}/{name}/exhaustive_mean",
                prediction_metrics(ex.probs.unsqueeze(0), y, n_bins=n_bins),
            )
            geometric = geometric_from_logprobs(ex.member_logprobs, ex.weights).unsqueeze(0)
            _put(
                metrics,
                f"{stage}/{name}/exhaustive_geometric",
                prediction_metrics(geometric, y, n_bins=n_bins),
            )
        if "mc" in strategies:
            sizes = mc_sizes(eval_cfg)
            mc = predict(backbone, x, "mc", samples=max(sizes), memory_budget_mb=budget)
            arrays[f"{name}/mc"] = mc.member_probs
            if keep_scored:
                t_head = int(eval_cfg["mc_samples"])
                keep[f"mc{t_head}"] = safe_log(mc.member_probs[:t_head])
            for t in sizes:
                record(f"{name}/mc{t}", Predictions(mc.member_probs[:t], "mean", "mc"), y)
    if ts_on:
        _temperature_scaled(metrics, scored, eval_sets, stage, n_bins)
    if IN_SET in scored and OOD_SET in scored:
        _ood_aurocs(metrics, scored, stage)
    return metrics, arrays


def _temperature_scaled(
    metrics: dict[str, float],
    scored: Mapping[str, Mapping[str, Tensor]],
    eval_sets: Mapping[str, tuple[Tensor, Tensor]],
    stage: str,
    n_bins: int,
) -> None:
    """Fit one temperature per label on :data:`FIT_SET`, apply it to every set (labels ``<label>_ts``).

    ``scored[set][label]``: ``[M, N, C]`` log-probabilities; the scaled prediction of an ``M > 1``
    label is ``softmax(log mean_m p_m / T)`` (:func:`fit_temperature`). Scaled ``[N, C]``
    probabilities of every set are kept in ``scored[set]["<label>_ts"]`` (as ``[1, N, C]``
    log-probabilities) for the OOD scores.
    """
    y_fit = eval_sets[FIT_SET][1].cpu()
    for label, fit_logp in list(scored[FIT_SET].items()):
        temperature = fit_temperature(_one_or_members(fit_logp), y_fit)
        for name, labels in scored.items():
            if label not in labels:
                continue
            probs = apply_temperature(_one_or_members(labels[label]), temperature)
            labels[f"{label}_ts"] = safe_log(probs).unsqueeze(0)  # type: ignore[index]
            if name == OOD_SET:
                continue
            row = prediction_metrics(probs.unsqueeze(0), eval_sets[name][1].cpu(), n_bins=n_bins)
            row["temperature"] = temperature
            _put(metrics, f"{stage}/{name}/{label}_ts", row)


def _one_or_members(logp: Tensor) -> Tensor:
    """``[N, C]`` for one member (its log-probabilities are logits), else ``[M, N, C]``."""
    return logp[0] if logp.shape[0] == 1 else logp


def _ood_aurocs(
    metrics: dict[str, float], scored: Mapping[str, Mapping[str, Tensor]], stage: str
) -> None:
    """``<stage>/ood/<label>/auroc_<score>``: :data:`IN_SET` (positive) vs :data:`OOD_SET`."""
    for label, logp_out in scored[OOD_SET].items():
        if label not in scored[IN_SET]:
            continue
        s_in = ood_scores(scored[IN_SET][label].exp())
        s_out = ood_scores(logp_out.exp())
        keys = ("maxprob", "entropy", "mi") if logp_out.shape[0] > 1 else ("maxprob", "entropy")
        for key in keys:
            metrics[f"{stage}/{OOD_SET}/{label}/auroc_{key}"] = float(
                ood_auroc(s_in[key], s_out[key])
            )


def _put(out: dict[str, float], prefix: str, values: Mapping[str, float]) -> None:
    for key, value in values.items():
        out[f"{prefix}/{key}"] = float(value)
