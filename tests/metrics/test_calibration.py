"""Calibration metrics against torchmetrics, numpy/sklearn references and hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score, roc_curve
from torchmetrics.functional.classification import multiclass_calibration_error

from dropens.errors import ConfigError
from dropens.metrics import calibration as cal


def random_probs(n: int, c: int, seed: int, scale: float = 2.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(scale * torch.randn(n, c, generator=g, dtype=torch.float64), dim=-1)
    labels = torch.randint(0, c, (n,), generator=g)
    return probs.to(dtype), labels


# ----------------------------------------------------------------------------- numpy references


def np_ece(conf, hit, bins):
    """ECE/MCE from a list of index arrays (one per bin)."""
    n = len(conf)
    gaps = [abs(hit[b].mean() - conf[b].mean()) for b in bins if len(b)]
    weights = [len(b) / n for b in bins if len(b)]
    return float(np.dot(gaps, weights)), float(max(gaps))


def np_width_bins(conf, n_bins):
    edges = np.linspace(0, 1, n_bins + 1)
    idx = np.minimum(np.searchsorted(edges, conf, side="right") - 1, n_bins - 1)
    return [np.flatnonzero(idx == b) for b in range(n_bins)]


def np_mass_bins(conf, n_bins):
    return np.array_split(np.argsort(conf, kind="stable"), n_bins)


# ----------------------------------------------------------------------------- basic scores


@pytest.mark.parametrize("seed", [0, 1])
def test_basic_scores_match_numpy(seed):
    probs, labels = random_probs(500, 7, seed, dtype=torch.float64)
    p, y = probs.numpy(), labels.numpy()
    onehot = np.eye(7)[y]
    assert cal.accuracy(probs, labels).item() == pytest.approx(np.mean(p.argmax(1) == y), abs=1e-12)
    assert cal.nll(probs, labels).item() == pytest.approx(-np.mean(np.log(p[np.arange(500), y])))
    assert cal.brier(probs, labels).item() == pytest.approx(np.mean(((p - onehot) ** 2).sum(1)))


def test_top1_ties_take_the_first_maximal_index():
    probs = torch.tensor([[0.4, 0.4, 0.2], [0.25, 0.25, 0.5], [1 / 3, 1 / 3, 1 / 3]])
    assert cal.accuracy(probs, torch.tensor([0, 2, 0])).item() == 1.0
    assert cal.accuracy(probs, torch.tensor([1, 2, 1])).item() == pytest.approx(1 / 3)


def test_nll_of_zero_probability_is_large_but_finite():
    probs = torch.tensor([[1.0, 0.0]])
    value = cal.nll(probs, torch.tensor([1]))
    assert torch.isfinite(value)
    assert value.item() == pytest.approx(-math.log(torch.finfo(torch.float32).tiny), rel=1e-6)


# ----------------------------------------------------------------------------- ECE / MCE


@pytest.mark.parametrize("n_bins", [1, 2, 7, 15, 50])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ece_mce_match_torchmetrics(n_bins, seed):
    probs, labels = random_probs(2000, 10, seed)
    kwargs = {"num_classes": 10, "n_bins": n_bins}
    ref_l1 = multiclass_calibration_error(probs, labels, norm="l1", **kwargs)
    ref_max = multiclass_calibration_error(probs, labels, norm="max", **kwargs)
    assert cal.ece(probs, labels, n_bins).item() == pytest.approx(ref_l1.item(), abs=1e-6)
    assert cal.mce(probs, labels, n_bins).item() == pytest.approx(ref_max.item(), abs=1e-6)


@pytest.mark.parametrize("binning", ["width", "mass"])
@pytest.mark.parametrize("n_bins", [1, 3, 15, 40])
def test_ece_mce_match_numpy(binning, n_bins):
    probs, labels = random_probs(997, 5, seed=n_bins, dtype=torch.float64)
    p, y = probs.numpy(), labels.numpy()
    conf, hit = p.max(1), (p.argmax(1) == y).astype(float)
    bins = np_width_bins(conf, n_bins) if binning == "width" else np_mass_bins(conf, n_bins)
    ref_ece, ref_mce = np_ece(conf, hit, bins)
    assert cal.ece(probs, labels, n_bins, binning).item() == pytest.approx(ref_ece, abs=1e-12)
    assert cal.mce(probs, labels, n_bins, binning).item() == pytest.approx(ref_mce, abs=1e-12)


def test_mass_bins_are_equal_sized():
    probs, labels = random_probs(103, 4, seed=3, dtype=torch.float64)
    counts = cal.reliability(probs, labels, 10, "mass")["count"]
    assert counts.tolist() == [11, 11, 11] + [10] * 7


@pytest.mark.parametrize("binning", ["width", "mass"])
def test_classwise_ece_matches_numpy(binning):
    probs, labels = random_probs(800, 4, seed=5, dtype=torch.float64)
    p, y = probs.numpy(), labels.numpy()
    per_class = []
    for c in range(4):
        conf, hit = p[:, c], (y == c).astype(float)
        bins = np_width_bins(conf, 10) if binning == "width" else np_mass_bins(conf, 10)
        per_class.append(np_ece(conf, hit, bins)[0])
    assert cal.classwise_ece(probs, labels, 10, binning).item() == pytest.approx(np.mean(per_class))


def test_reliability_is_consistent_with_ece():
    probs, labels = random_probs(600, 6, seed=7, dtype=torch.float64)
    rel = cal.reliability(probs, labels, 12)
    assert rel["count"].sum().item() == 600
    full = rel["count"] > 0
    weights = rel["count"][full].double() / 600
    gap = (rel["accuracy"][full] - rel["confidence"][full]).abs()
    assert (weights * gap).sum().item() == pytest.approx(cal.ece(probs, labels, 12).item())
    conf = probs.max(1).values.numpy()
    for b, idx in enumerate(np_width_bins(conf, 12)):
        assert rel["count"][b].item() == len(idx)


def test_empty_bins_and_hand_computed_values():
    # top-1 confidences 0.9, 0.9, 0.6, 0.6 -> bins [0.6, 0.8) and [0.8, 1.0] of 5; three empty
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 0, 0])
    # bin [0.8, 1]: conf 0.9, acc 0.5 -> gap 0.4; bin [0.6, 0.8): conf 0.6, acc 0.5 -> gap 0.1
    assert cal.ece(probs, labels, 5).item() == pytest.approx(0.5 * 0.4 + 0.5 * 0.1)
    assert cal.mce(probs, labels, 5).item() == pytest.approx(0.4)
    rel = cal.reliability(probs, labels, 5)
    assert rel["count"].tolist() == [0, 0, 0, 2, 2]
    assert torch.isnan(rel["confidence"][:3]).all() and torch.isnan(rel["accuracy"][:3]).all()


def test_confidence_one_joins_the_last_bin():
    probs = torch.tensor([[1.0, 0.0], [0.95, 0.05]], dtype=torch.float64)
    labels = torch.tensor([0, 1])
    # one bin [0.9, 1.0] holding both: conf 0.975, acc 0.5
    assert cal.ece(probs, labels, 10).item() == pytest.approx(0.475)
    assert cal.reliability(probs, labels, 10)["count"][-1].item() == 2


def test_all_correct_and_perfectly_confident_is_perfect():
    labels = torch.tensor([0, 2, 1, 1, 0])
    probs = torch.nn.functional.one_hot(labels, 3).double()
    assert cal.accuracy(probs, labels).item() == 1.0
    assert cal.nll(probs, labels).item() == 0.0
    assert cal.brier(probs, labels).item() == 0.0
    for binning in ("width", "mass"):
        assert cal.ece(probs, labels, 15, binning).item() == 0.0
        assert cal.mce(probs, labels, 15, binning).item() == 0.0
        assert cal.classwise_ece(probs, labels, 15, binning).item() == 0.0
    assert cal.aurc(probs, labels).item() == 0.0


def test_one_class():
    probs, labels = torch.ones(6, 1), torch.zeros(6, dtype=torch.long)
    assert cal.accuracy(probs, labels).item() == 1.0
    assert cal.nll(probs, labels).item() == 0.0
    assert cal.brier(probs, labels).item() == 0.0
    assert cal.ece(probs, labels).item() == 0.0
    assert cal.mce(probs, labels, 3, "mass").item() == 0.0
    assert cal.classwise_ece(probs, labels).item() == 0.0
    assert cal.aurc(probs, labels).item() == 0.0
    assert cal.fit_temperature(torch.zeros(6, 1), labels) > 0


def test_more_bins_than_examples_leaves_mass_bins_empty():
    probs, labels = random_probs(3, 3, seed=0, dtype=torch.float64)
    rel = cal.reliability(probs, labels, 5, "mass")
    assert rel["count"].tolist() == [1, 1, 1, 0, 0]
    conf = probs.max(1).values
    hit = (probs.argmax(1) == labels).double()
    assert cal.ece(probs, labels, 5, "mass").item() == pytest.approx(
        (conf - hit).abs().mean().item()
    )


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda p, y: cal.ece(p, y, binning="quantile"), r"binning='quantile'.*width, mass"),
        (lambda p, y: cal.ece(p, y, n_bins=0), r"n_bins=0"),
        (lambda p, y: cal.ece(p[0], y), r"probs has shape \(3,\)"),
        (lambda p, y: cal.nll(p, y[:2]), r"labels has 2 entries"),
        (lambda p, y: cal.brier(p, y + 5), r"labels has values"),
        (lambda p, y: cal.accuracy(p, y.double()), r"labels has shape"),
        (lambda p, y: cal.apply_temperature(p, 0.0), r"temperature=0.0"),
        (lambda p, y: cal.fit_temperature(p, y, aggregate="median"), r"aggregate='median'"),
    ],
)
def test_bad_input_raises_config_error(call, match):
    probs, labels = random_probs(4, 3, seed=0)
    with pytest.raises(ConfigError, match=match):
        call(probs, labels)


# ----------------------------------------------------------------------------- temperature scaling


def _temperature_se(z: torch.Tensor) -> float:
    """Asymptotic relative SE of the temperature MLE at T = 1: 1 / sqrt(Σ_n Var_{y~p_n}(z_n,y))."""
    p = torch.softmax(z, -1)
    var = (p * z**2).sum(-1) - (p * z).sum(-1) ** 2
    return float(var.sum() ** -0.5)


@pytest.mark.parametrize("t0", [0.5, 3.0])
@pytest.mark.parametrize("reported", ["times", "over"])
def test_fit_temperature_recovers_known_temperature(t0, reported):
    g = torch.Generator().manual_seed(11)
    z = 2.0 * torch.randn(10000, 10, generator=g, dtype=torch.float64)
    labels = torch.multinomial(torch.softmax(z, -1), 1, generator=g).squeeze(1)
    assert 4 * _temperature_se(z) < 0.05  # the 5% tolerance is > 4 standard errors
    logits, expected = (z * t0, t0) if reported == "times" else (z / t0, 1 / t0)
    fitted = cal.fit_temperature(logits.float(), labels)
    assert fitted == pytest.approx(expected, rel=0.05)
    # log-probabilities give the same temperature as logits (a row shift does not matter)
    assert cal.fit_temperature(torch.log_softmax(logits, -1), labels) == pytest.approx(
        fitted, rel=1e-4
    )
    calibrated = cal.apply_temperature(logits, fitted)
    assert torch.allclose(calibrated, torch.softmax(z * (expected / fitted), -1))


@pytest.mark.parametrize("how", ["mean", "geometric"])
def test_fit_temperature_on_an_ensemble_scales_the_aggregate(how):
    g = torch.Generator().manual_seed(12)
    m, n, c, t0 = 4, 20000, 10, 2.5
    z = 3.0 * torch.randn(n, c, generator=g, dtype=torch.float64)
    if how == "geometric":
        # members T0 z + d_m with Σ_m d_m = 0: their normalized geometric mean is softmax(T0 z)
        d = torch.randn(m, n, c, generator=g, dtype=torch.float64)
        member_logits = t0 * z + d - d.mean(0)
        truth = z
    else:
        # the aggregate p̄ is what the model reports; labels follow softmax(log p̄ / T0)
        member_logits = z + torch.randn(m, n, c, generator=g, dtype=torch.float64)
        truth = torch.log(torch.softmax(member_logits, -1).mean(0)) / t0
    labels = torch.multinomial(torch.softmax(truth, -1), 1, generator=g).squeeze(1)
    assert 4 * _temperature_se(truth) < 0.05
    fitted = cal.fit_temperature(member_logits, labels, aggregate=how)
    assert fitted == pytest.approx(t0, rel=0.05)
    probs = cal.apply_temperature(member_logits, fitted, aggregate=how)
    assert probs.shape == (n, c)
    assert cal.nll(probs, labels) < cal.nll(cal.apply_temperature(member_logits, 1.0, how), labels)


def test_single_member_ensemble_equals_single_model():
    probs, labels = random_probs(3000, 5, seed=4, scale=4.0, dtype=torch.float64)
    logits = torch.log(probs)
    single = cal.fit_temperature(logits, labels)
    assert cal.fit_temperature(logits[None], labels) == pytest.approx(single, rel=1e-6)


# ----------------------------------------------------------------------------- selective prediction


def np_aurc(conf, err):
    order = np.argsort(-conf, kind="stable")
    risks = np.cumsum(err[order]) / np.arange(1, len(err) + 1)
    return risks.mean()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_aurc_matches_numpy(seed):
    probs, labels = random_probs(700, 5, seed, dtype=torch.float64)
    p, y = probs.numpy(), labels.numpy()
    ref = np_aurc(p.max(1), (p.argmax(1) != y).astype(float))
    assert cal.aurc(probs, labels).item() == pytest.approx(ref, abs=1e-12)


def test_aurc_hand_computed_and_extremes():
    # confidences 0.9 (right), 0.8 (wrong), 0.7 (right): risks 0, 1/2, 1/3
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 0])
    assert cal.aurc(probs, labels).item() == pytest.approx((0 + 1 / 2 + 1 / 3) / 3)
    # perfect ranking of 2 errors among 4: risks 0, 0, 1/3, 2/4
    conf = torch.tensor([4.0, 3.0, 2.0, 1.0])
    wrong = torch.tensor([[1.0, 0.0]] * 4)
    assert cal.aurc(wrong, torch.tensor([0, 0, 1, 1]), confidence=conf).item() == pytest.approx(
        (1 / 3 + 1 / 2) / 4
    )
    assert cal.aurc(wrong, torch.ones(4, dtype=torch.long)).item() == 1.0


def test_aurc_ties_are_order_independent():
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randint(0, 3, (200, 4), generator=g).double(), -1)  # many ties
    labels = torch.randint(0, 4, (200,), generator=g)
    perm = torch.randperm(200, generator=g)
    value = cal.aurc(probs, labels)
    assert cal.aurc(probs[perm], labels[perm]).item() == pytest.approx(value.item(), abs=1e-12)
    # = the mean over random tie-breaks: average the numpy AURC over many random orders
    p, y = probs.numpy(), labels.numpy()
    rng = np.random.default_rng(0)
    err = (p.argmax(1) != y).astype(float)
    draws = []
    for _ in range(400):
        order = rng.permutation(200)
        draws.append(np_aurc(p.max(1)[order], err[order]))
    assert value.item() == pytest.approx(np.mean(draws), abs=4 * np.std(draws) / math.sqrt(400))


# ----------------------------------------------------------------------------- out-of-distribution


@pytest.mark.parametrize("rounding", [None, 1])
def test_ood_auroc_and_fpr_match_sklearn(rounding):
    rng = np.random.default_rng(0)
    s_in, s_out = rng.normal(1.0, 1.0, 500), rng.normal(0.0, 1.5, 300)
    if rounding is not None:  # many ties
        s_in, s_out = s_in.round(rounding), s_out.round(rounding)
    target = np.r_[np.ones(500), np.zeros(300)]
    scores = np.r_[s_in, s_out]
    auroc = cal.ood_auroc(torch.tensor(s_in), torch.tensor(s_out))
    assert auroc.item() == pytest.approx(roc_auc_score(target, scores), abs=1e-12)
    fpr, tpr, _ = roc_curve(target, scores, drop_intermediate=False)
    ref = fpr[tpr >= 0.95].min()
    assert cal.fpr_at_95_tpr(torch.tensor(s_in), torch.tensor(s_out)).item() == pytest.approx(ref)


def test_ood_auroc_does_not_saturate_large_scores():
    s_in = torch.tensor([30.0, 40.0, 50.0])
    s_out = torch.tensor([20.0, 25.0])
    assert cal.ood_auroc(s_in, s_out).item() == 1.0
    assert cal.fpr_at_95_tpr(s_in, s_out).item() == 0.0
    assert cal.ood_auroc(s_out, s_in).item() == 0.0


def test_fpr_at_95_tpr_threshold_by_hand():
    s_in = torch.arange(1.0, 21.0)  # 20 in-scores: 19 of them (>= 2) give TPR = 0.95
    s_out = torch.tensor([0.0, 1.5, 2.0, 2.5])
    assert cal.fpr_at_95_tpr(s_in, s_out).item() == 0.5


def test_ood_scores_orientation_and_values():
    g = torch.Generator().manual_seed(0)
    m, n, c = 5, 400, 10
    # in-distribution: members agree and are confident; OOD: members disagree, diffuse
    base = 5.0 * torch.randn(1, n, c, generator=g)
    in_probs = torch.softmax(base + 0.1 * torch.randn(m, n, c, generator=g), -1).double()
    out_probs = torch.softmax(2.0 * torch.randn(m, n, c, generator=g), -1).double()
    s_in, s_out = cal.ood_scores(in_probs), cal.ood_scores(out_probs)
    assert set(s_in) == {"maxprob", "entropy", "mi"}
    for key in s_in:
        assert s_in[key].shape == (n,)
        assert cal.ood_auroc(s_in[key], s_out[key]).item() > 0.9
    p = in_probs.mean(0)
    h = -(p * p.log()).sum(-1)
    h_m = -(in_probs * in_probs.log()).sum(-1).mean(0)
    assert torch.allclose(s_in["maxprob"], p.max(-1).values)
    assert torch.allclose(s_in["entropy"], -h)
    assert torch.allclose(s_in["mi"], -(h - h_m))
    single = cal.ood_scores(in_probs[0])
    assert torch.equal(single["mi"], torch.zeros(n, dtype=torch.float64))


def test_ood_auroc_chance_on_identical_distributions():
    g = torch.Generator().manual_seed(1)
    n = 4000
    s_in, s_out = torch.randn(n, generator=g), torch.randn(n, generator=g)
    # H0: AUROC ~ 0.5 with SE sqrt((n_in + n_out + 1) / (12 n_in n_out)) (Mann-Whitney)
    se = math.sqrt((2 * n + 1) / (12 * n * n))
    assert abs(cal.ood_auroc(s_in, s_out).item() - 0.5) < 4 * se
