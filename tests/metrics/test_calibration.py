"""Calibration metrics against torchmetrics, numpy/sklearn references and hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score, roc_curve
from torchmetrics.functional.classification import multiclass_calibration_error

from dropens.errors import ConfigError, InputError
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
    fitted = cal.fit_temperature(logits.float(), labels, inputs="logits")
    assert fitted == pytest.approx(expected, rel=0.05)
    # log-probabilities give the same temperature as logits (a row shift does not matter)
    assert cal.fit_temperature(torch.log_softmax(logits, -1), labels) == pytest.approx(
        fitted, rel=1e-4
    )
    calibrated = cal.apply_temperature(logits, fitted, inputs="logits")
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
    fitted = cal.fit_temperature(member_logits, labels, aggregate=how, inputs="logits")
    assert fitted == pytest.approx(t0, rel=0.05)
    probs = cal.apply_temperature(member_logits, fitted, aggregate=how, inputs="logits")
    assert probs.shape == (n, c)
    unscaled = cal.apply_temperature(member_logits, 1.0, how, inputs="logits")
    assert cal.nll(probs, labels) < cal.nll(unscaled, labels)


def test_single_member_ensemble_equals_single_model():
    probs, labels = random_probs(3000, 5, seed=4, scale=4.0, dtype=torch.float64)
    logprobs = torch.log(probs)
    single = cal.fit_temperature(logprobs, labels)
    assert cal.fit_temperature(logprobs[None], labels) == pytest.approx(single, rel=1e-6)


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


# ----------------------------------------------------------------------------- input checks


def _bad_probs(kind: str) -> torch.Tensor:
    """``[4, 3]`` float32 "probabilities" that are wrong in one way."""
    probs, _ = random_probs(4, 3, seed=0)
    if kind == "sum2":
        return probs * 2
    if kind == "negative":  # still sums to 1
        return probs + torch.tensor([-0.5, 0.25, 0.25])
    if kind == "nan":
        probs[1, 2] = float("nan")
    elif kind == "inf":
        probs[2, 0] = float("inf")
    elif kind == "logits":
        return torch.randn(4, 3, generator=torch.Generator().manual_seed(1))
    elif kind == "off_by_2e-3":
        return probs + torch.tensor([2e-3, 0.0, 0.0])
    return probs


BAD_PROBS = {
    "sum2": r"probs row \(0,\) sums to 2 over the last axis .*within 0.001",
    "negative": r"probs has negative values .*\[0, 1\]",
    "nan": r"probs has 1 non-finite value\(s\) \(NaN or inf; first nan at index \(1, 2\)\)",
    "inf": r"probs has 1 non-finite value\(s\) \(NaN or inf; first inf at index \(2, 0\)\)",
    "logits": r"probs (has negative values|row .* sums to)",
    "off_by_2e-3": r"probs row \(0,\) sums to 1.002",
}

# every public metric of calibration.py taking (probs [N, C], labels [N])
PROB_METRICS = {
    "accuracy": cal.accuracy,
    "nll": cal.nll,
    "brier": cal.brier,
    "ece": cal.ece,
    "ece_mass": lambda p, y: cal.ece(p, y, 5, "mass"),
    "mce": cal.mce,
    "classwise_ece": cal.classwise_ece,
    "reliability": cal.reliability,
    "aurc": cal.aurc,
    "ood_scores": lambda p, y: cal.ood_scores(p),
}


def _assert_one_line(info: pytest.ExceptionInfo, *fragments: str) -> None:
    assert isinstance(info.value, ValueError) and isinstance(info.value, ConfigError)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


@pytest.mark.parametrize("kind", list(BAD_PROBS))
@pytest.mark.parametrize("name", list(PROB_METRICS))
def test_every_metric_refuses_values_that_are_not_probabilities(name, kind):
    _, labels = random_probs(4, 3, seed=0)
    bad = _bad_probs(kind)
    arg = "member_probs" if name == "ood_scores" else "probs"
    with pytest.raises(InputError, match=BAD_PROBS[kind].replace("probs", arg, 1)) as info:
        PROB_METRICS[name](bad, labels)
    _assert_one_line(info, arg)


BAD_LABELS = {
    "too_large": (lambda y: y + 3, r"labels has values in \[3, 5\]; expected class indices in"),
    "negative": (lambda y: y - 3, r"labels has values in \[-3, -1\]; expected .*\[0, 3\)"),
    "float": (lambda y: y.double(), r"labels has shape \(4,\) float64; expected an integer"),
    "bool": (lambda y: y > 0, r"labels has shape \(4,\) bool; expected an integer"),
    "2d": (lambda y: y[:, None], r"labels has shape \(4, 1\)"),
    "short": (lambda y: y[:3], r"labels has 3 entries; expected N=4"),
    "list": (lambda y: y.tolist(), r"labels has shape list"),
}


@pytest.mark.parametrize("kind", list(BAD_LABELS))
@pytest.mark.parametrize("name", [k for k in PROB_METRICS if k != "ood_scores"])
def test_every_metric_refuses_bad_labels(name, kind):
    probs, _ = random_probs(4, 3, seed=0)
    labels = torch.tensor([0, 1, 2, 0])
    change, match = BAD_LABELS[kind]
    with pytest.raises(InputError, match=match) as info:
        PROB_METRICS[name](probs, change(labels))
    _assert_one_line(info, "labels")


BAD_SHAPES = {
    "1d": (lambda p: p[0], r"probs has shape \(3,\); expected a float tensor \[N, C\]"),
    "3d_member": (lambda p: p[None].expand(2, -1, -1), r"probs has shape \(2, 4, 3\)"),
    "no_examples": (lambda p: p[:0], r"probs has shape \(0, 3\); expected at least one example"),
    "no_classes": (lambda p: p[:, :0], r"probs has shape \(4, 0\)"),
    "integer": (lambda p: (p > 0.5).long(), r"probs has shape \(4, 3\); expected a float"),
    "numpy": (lambda p: p.numpy(), r"probs has shape ndarray"),
}


@pytest.mark.parametrize("kind", list(BAD_SHAPES))
@pytest.mark.parametrize("name", [k for k in PROB_METRICS if k != "ood_scores"])
def test_every_metric_refuses_bad_shapes(name, kind):
    probs, labels = random_probs(4, 3, seed=0)
    change, match = BAD_SHAPES[kind]
    with pytest.raises(InputError, match=match) as info:
        PROB_METRICS[name](change(probs), labels)
    _assert_one_line(info, "probs")


def test_ood_scores_refuses_bad_shapes():
    probs, _ = random_probs(4, 3, seed=0)
    for bad in (probs[0], probs[None, None], probs[:0]):
        with pytest.raises(InputError, match=r"member_probs has shape"):
            cal.ood_scores(bad)


@pytest.mark.parametrize(
    "kind, values, match",
    [
        ("nan", [0.1, float("nan"), 0.3], r"has 1 NaN or inf value\(s\)"),
        ("inf", [0.1, float("inf"), 0.3], r"has 1 NaN or inf value\(s\)"),
        ("minus_inf", [float("-inf"), 0.2, 0.3], r"has 1 NaN or inf value\(s\)"),
    ],
)
@pytest.mark.parametrize("fn", [cal.ood_auroc, cal.fpr_at_95_tpr])
@pytest.mark.parametrize("which", ["scores_in", "scores_out"])
def test_ood_detection_refuses_non_finite_scores(fn, which, kind, values, match):
    good, bad = torch.tensor([0.4, 0.5, 0.6]), torch.tensor(values)
    args = (bad, good) if which == "scores_in" else (good, bad)
    with pytest.raises(InputError, match=f"{which} {match}") as info:
        fn(*args)
    _assert_one_line(info, which)


@pytest.mark.parametrize("fn", [cal.ood_auroc, cal.fpr_at_95_tpr])
def test_ood_detection_refuses_bad_score_shapes(fn):
    good = torch.tensor([0.4, 0.5, 0.6])
    for bad, match in (
        (torch.zeros(0), r"scores_out has shape \(0,\)"),
        (torch.zeros(2, 2), r"scores_out has shape \(2, 2\)"),
        ([0.1, 0.2], r"scores_out has shape list"),
    ):
        with pytest.raises(InputError, match=match):
            fn(good, bad)


@pytest.mark.parametrize("tpr", [0.0, 1.5, float("nan"), True, "0.95"])
def test_fpr_refuses_bad_tpr(tpr):
    with pytest.raises(ConfigError, match=r"tpr=.* is not valid; expected a rate in \(0, 1\]"):
        cal.fpr_at_95_tpr(torch.tensor([0.1, 0.2]), torch.tensor([0.0]), tpr=tpr)


def test_aurc_refuses_non_finite_or_misshaped_confidence():
    probs, labels = random_probs(4, 3, seed=0)
    with pytest.raises(InputError, match=r"confidence has NaN or inf values"):
        cal.aurc(probs, labels, confidence=torch.tensor([1.0, float("nan"), 0.0, 2.0]))
    with pytest.raises(InputError, match=r"confidence has shape \(3,\); expected \[N\]=\(4,\)"):
        cal.aurc(probs, labels, confidence=torch.ones(3))


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan"), float("inf"), True, "2"])
def test_apply_temperature_refuses_bad_temperature(temperature):
    probs, _ = random_probs(4, 3, seed=0)
    with pytest.raises(ConfigError, match=r"temperature=.* is not valid; expected a finite"):
        cal.apply_temperature(probs.log(), temperature)


def test_nan_no_longer_looks_like_a_result():
    """The reported cases: NaN gave accuracy 0.25 and OOD AUROC 0.75; sums of 2 gave an NLL."""
    nan = torch.full((4, 3), float("nan"))
    with pytest.raises(InputError, match="probs has 12 non-finite"):
        cal.accuracy(nan, torch.tensor([0, 1, 2, 0]))
    with pytest.raises(InputError, match="scores_in has 1 NaN"):
        cal.ood_auroc(torch.tensor([float("nan"), 1.0]), torch.tensor([0.0, 0.5]))
    with pytest.raises(InputError, match=r"probs row \(0,\) sums to 2"):
        cal.nll(torch.ones(2, 2), torch.tensor([0, 1]))


def test_tolerance_accepts_float_rounding_and_refuses_real_mistakes():
    probs, labels = random_probs(500, 10, seed=3)
    # float16 storage round trip (predictions.npz), read back as float32 without renormalizing
    round_trip = probs.half().float()
    assert (round_trip.sum(-1) - 1).abs().max() > 1e-6  # the rows are really off
    cal.nll(round_trip, labels)
    cal.nll(probs.half(), labels)  # float16 itself (tolerance 2 eps ~ 2e-3)
    cal.nll(probs.bfloat16(), labels)  # bfloat16 (2 eps ~ 1.6e-2)
    cal.nll(probs + 9e-4 / 10, labels)  # within 1e-3
    with pytest.raises(InputError, match=r"within 0.001"):
        cal.nll(probs + 1.1e-3 / 10, labels)
    with pytest.raises(InputError, match=r"within 0.00195"):
        cal.nll((probs + 3e-3 / 10).half(), labels)
    # zeros and ones are probabilities
    assert cal.nll(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1])).item() == 0.0


@pytest.mark.parametrize("bad", ["sum2", "nan", "negative"])
def test_wrong_inputs_argument_is_named(bad):
    _, labels = random_probs(4, 3, seed=0)
    with pytest.raises(InputError, match=r"member_probs"):
        cal.ood_scores(_bad_probs(bad)[None].expand(2, -1, -1))
    with pytest.raises(InputError, match=r"inputs='probs' but logits_or_logprobs"):
        cal.fit_temperature(_bad_probs(bad), labels, inputs="probs")
