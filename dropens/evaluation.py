"""Evaluate a trained backbone: every eval set x every strategy of its plan -> the run record.

:func:`evaluate` is a short loop: for each eval set, each strategy of the plan
(:mod:`dropens.inference`: what it runs, how many members, which labels) predicts once; its rows
become the flat metrics of the run record (keys ``test/<set>/<label>/<metric>``,
:mod:`dropens.keys`) and its member predictions ``[M, N, C]`` the stored arrays
(``<set>/<strategy>``). Two wrappers then work on the predictions every strategy marks as scored
(:meth:`dropens.inference.Strategy.scored`: ``deterministic``, ``mc<eval.mc_samples>``, ``single``,
``members``):

- **temperature scaling** (``eval.temperature_scaling: true``; absent from ``configs/train.yaml``,
  so ordinary run ids do not change; studies add ``+eval.temperature_scaling=true``): one
  temperature ``T > 0`` per scored label fitted by minimizing the NLL on the eval set
  :data:`FIT_SET` (the clean validation split, ``+data.eval_val=true``; never the test set) and
  applied to every eval set: labels ``<label>_ts`` with the usual scalars of the one scaled
  prediction, plus ``temperature``. An averaged prediction (MC, members) is scaled as one
  classifier, *after* averaging: ``softmax(log p̄ / T)`` with ``p̄`` the mean of the member
  probabilities (:func:`dropens.metrics.calibration.fit_temperature`), as Rahaman & Thiery (2021)
  recommend for deep ensembles (Ashukha et al. 2020: compare ensembles only after temperature
  scaling). No stored arrays.
- **OOD detection**: an eval set named :data:`OOD_SET` (``+data.eval_ood=mnist5k``) is
  out-of-distribution: its labels are never scored (no accuracy/NLL rows); instead
  ``test/ood/<label>/auroc_<score>`` is the AUROC of separating :data:`IN_SET` (positive) from it
  by ``maxprob``, ``entropy`` (negated predictive entropy) and ``mi`` (negated mutual information,
  several members only) (:func:`dropens.metrics.calibration.ood_scores`), for the scored labels
  and their ``_ts`` versions.

``eval.exhaustive: true`` adds the ``exhaustive`` strategy to a method's plan (tiny networks only).
:func:`magnitudes` writes the activation-statistics record (``magnitudes.json``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from torch import Tensor, nn

from dropens import keys
from dropens.activations import record_train_eval
from dropens.batchnorm import BN_BATCH_SIZE
from dropens.errors import ConfigError
from dropens.inference import EvalContext, Strategy, get, run
from dropens.metrics._common import safe_log
from dropens.metrics.calibration import apply_temperature, fit_temperature, ood_auroc, ood_scores
from dropens.metrics.summary import prediction_metrics

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
        if isinstance(t, bool) or not isinstance(t, int) or t < 1:
            raise ConfigError(
                f"eval.mc_samples/mc_curve value {t!r} is not valid; MC needs integers >= 1"
            )
    return sorted(set(sizes))


def plan(strategies: Sequence[str], eval_cfg: Mapping[str, Any]) -> tuple[str, ...]:
    """A method's strategies (``Method.eval_strategies``) plus what the config adds
    (``eval.exhaustive: true``: ``exhaustive``); each checked against the registry."""
    names = [*strategies, *(["exhaustive"] if eval_cfg.get("exhaustive", False) else [])]
    for name in names:
        get(name)
    return tuple(dict.fromkeys(names))


def context(
    eval_cfg: Mapping[str, Any],
    train_x: Tensor | None = None,
    train_batch_size: int = BN_BATCH_SIZE,
) -> EvalContext:
    """The :class:`dropens.inference.EvalContext` of an ``eval`` config node."""
    sizes = mc_sizes(eval_cfg)
    return EvalContext(
        samples=max(sizes),
        curve=tuple(sizes),
        headline=int(eval_cfg["mc_samples"]),
        n_bins=int(eval_cfg["n_bins"]),
        memory_budget_mb=float(eval_cfg["memory_budget_mb"]),
        train_x=train_x,
        train_batch_size=int(train_batch_size),
    )


def set_seed(seed: int, set_name: str) -> int:
    """A 63-bit seed for the randomly masked strategies that draw their own masks
    (``single``), a pure function of the run seed and the eval set."""
    digest = hashlib.blake2b(f"{int(seed)}|{set_name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def evaluate(
    backbone: nn.Module,
    eval_sets: Mapping[str, tuple[Tensor, Tensor]],
    eval_cfg: Mapping[str, Any],
    strategies: Sequence[str] = ("deterministic",),
    stage: str = "test",
    train_x: Tensor | None = None,
    train_batch_size: int = BN_BATCH_SIZE,
    seed: int | None = None,
) -> tuple[dict[str, float], dict[str, Tensor]]:
    """Metrics and stored arrays of every strategy of ``strategies`` on every eval set.

    Args:
        eval_sets: ``{name: (x [N, *input_shape], y [N])}``, evaluated in this order.
        eval_cfg: the ``eval`` config node (mc_samples, mc_curve, n_bins, memory_budget_mb,
            optional exhaustive and temperature_scaling).
        strategies: registered strategy names (a method's ``eval_strategies``, see :func:`plan`);
            one that does not apply to the backbone (:meth:`Strategy.applies`) records nothing.
        train_x: ``[N_train, *input_shape]`` training inputs (``bn_recomputed`` only).
        train_batch_size: rows per forward of ``bn_recomputed``.
        seed: the run's seed (``single`` draws its mask from a seed derived from it and the set).

    Returns:
        ``(metrics, arrays)``: ``metrics["test/clean/deterministic/ece"]``-style floats; arrays
        ``{"<set>/<strategy>": member_probs [M, N, C], "labels/<set>": [N]}``.

    Raises:
        ConfigError: an unknown strategy, ``bn_recomputed`` applicable without ``train_x``, or
            ``eval.temperature_scaling`` without the eval set ``val``.
    """
    chosen: list[Strategy] = [get(name) for name in plan(strategies, eval_cfg)]
    ctx = context(eval_cfg, train_x, train_batch_size)
    ts_on = check_temperature_scaling(eval_cfg, list(eval_sets))
    active = [(s, s.prepare(backbone, ctx)) for s in chosen if s.applies(backbone)]
    metrics: dict[str, float] = {}
    arrays: dict[str, Tensor] = {}
    # per set, the predictions temperature scaling and the OOD scores use: label -> [M, N, C]
    # log-probs (kept only when needed: MC log-probabilities of a large test set are big)
    keep_scored = ts_on or OOD_SET in eval_sets
    scored: dict[str, dict[str, Tensor]] = {}
    for name, (x, y) in eval_sets.items():
        y = y.cpu()
        arrays[f"labels/{name}"] = y
        ood = name == OOD_SET  # out-of-distribution: its labels are not ours to score
        set_ctx = ctx if seed is None else _with_seed(ctx, set_seed(seed, name))
        for strategy, model in active:
            if ood and not strategy.stored:  # e.g. exhaustive: nothing to keep for an OOD set
                continue
            preds = run(strategy, model, x, set_ctx)
            if strategy.stored:
                arrays[f"{name}/{strategy.name}"] = preds.member_probs
            if keep_scored:
                scored.setdefault(name, {}).update(strategy.scored(preds, set_ctx))
            if not ood:
                for label, row in strategy.rows(preds, y, set_ctx).items():
                    _put(metrics, keys.prefix(stage, name, label), row)
    if ts_on:
        _temperature_scaled(metrics, scored, eval_sets, stage, ctx.n_bins)
    if IN_SET in scored and OOD_SET in scored:
        _ood_aurocs(metrics, scored, stage)
    return metrics, arrays


def _with_seed(ctx: EvalContext, seed: int) -> EvalContext:
    return replace(ctx, seed=seed)


def magnitudes(
    backbone: nn.Module,
    eval_sets: Mapping[str, tuple[Tensor, Tensor]],
    seed: int,
    n_examples: int = MAGNITUDE_EXAMPLES,
) -> dict[str, Any]:
    """The ``magnitudes.json`` record: per-layer activation statistics, training vs eval pass.

    :func:`dropens.activations.record_train_eval` on the first ``n_examples`` examples of
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
        documented in :func:`~dropens.activations.record_train_eval`: ``layer, type, kind,
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
            labels[keys.ts_label(label)] = safe_log(probs).unsqueeze(0)  # type: ignore[index]
            if name == OOD_SET:
                continue
            row = prediction_metrics(probs.unsqueeze(0), eval_sets[name][1].cpu(), n_bins=n_bins)
            row["temperature"] = temperature
            _put(metrics, keys.prefix(stage, name, keys.ts_label(label)), row)


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
        scores = ("maxprob", "entropy", "mi") if logp_out.shape[0] > 1 else ("maxprob", "entropy")
        for score in scores:
            metrics[keys.key(stage, OOD_SET, label, f"auroc_{score}")] = float(
                ood_auroc(s_in[score], s_out[score])
            )


def _put(out: dict[str, float], prefix: str, values: Mapping[str, float]) -> None:
    for metric, value in values.items():
        out[f"{prefix}/{metric}"] = float(value)
