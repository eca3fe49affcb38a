"""Metrics of evaluated predictions and of activations (functional core + torchmetrics wrappers).

- :mod:`.calibration`  accuracy, NLL, Brier, ECE/MCE (equal width or mass), reliability,
  temperature scaling, AURC, OOD scores/AUROC/FPR@95
- :mod:`.diversity`    entropies and mutual information, disagreement, pairwise KL/JS, ensemble
  gain, Brier ambiguity, error correlation, Q-statistic, diversity-accuracy plane
- :mod:`.magnitude`    activation statistics, variance shift, BatchNorm variance mismatch (the
  recorder that runs a model: :mod:`dropens.activations`)
- :mod:`.stats`        across seeds: mean/std/CI, paired tests, Holm, effect size
- :mod:`.summary`      ``aggregate`` (members -> prediction) and ``prediction_metrics`` (run record)
- :mod:`.wrappers`     ``PredictionMetrics`` (torchmetrics) for validation-time logging

Layout: member probabilities ``[M, N, C]``, one prediction ``[N, C]``, labels ``[N]`` int64.
"""

from dropens.metrics.calibration import (
    accuracy,
    apply_temperature,
    aurc,
    brier,
    classwise_ece,
    ece,
    fit_temperature,
    fpr_at_95_tpr,
    mce,
    nll,
    ood_auroc,
    ood_scores,
    reliability,
)
from dropens.metrics.diversity import (
    brier_ambiguity,
    disagreement,
    diversity_accuracy_plane,
    ensemble_gain,
    error_correlation,
    expected_entropy,
    mutual_information,
    normalized_disagreement,
    pairwise_js,
    pairwise_kl,
    predictive_entropy,
    q_statistic,
)
from dropens.metrics.magnitude import activation_stats, bn_variance_mismatch, variance_shift
from dropens.metrics.summary import aggregate, prediction_metrics
from dropens.metrics.wrappers import PredictionMetrics

__all__ = [
    "PredictionMetrics",
    "accuracy",
    "activation_stats",
    "aggregate",
    "apply_temperature",
    "aurc",
    "bn_variance_mismatch",
    "brier",
    "brier_ambiguity",
    "classwise_ece",
    "disagreement",
    "diversity_accuracy_plane",
    "ece",
    "ensemble_gain",
    "error_correlation",
    "expected_entropy",
    "fit_temperature",
    "fpr_at_95_tpr",
    "mce",
    "mutual_information",
    "nll",
    "normalized_disagreement",
    "ood_auroc",
    "ood_scores",
    "pairwise_js",
    "pairwise_kl",
    "prediction_metrics",
    "predictive_entropy",
    "q_statistic",
    "reliability",
    "variance_shift",
]
