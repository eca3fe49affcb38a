"""Diversity metrics: exact identities (float64), numpy/scipy references, degenerate ensembles."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon
from scipy.stats import entropy as scipy_entropy

from dropens.errors import ConfigError, InputError
from dropens.metrics import calibration as cal
from dropens.metrics import diversity as div
from dropens.metrics.summary import aggregate


def random_members(m: int, n: int, c: int, seed: int, scale: float = 2.0):
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(scale * torch.randn(m, n, c, generator=g, dtype=torch.float64), -1)
    return probs, torch.randint(0, c, (n,), generator=g)


SHAPES = [(2, 300, 3), (3, 200, 10), (7, 150, 5)]


# ----------------------------------------------------------------------------- identities


@pytest.mark.parametrize("m, n, c", SHAPES)
def test_mutual_information_identities(m, n, c):
    probs, _ = random_members(m, n, c, seed=m)
    mean = probs.mean(0)
    mean_kl = (probs * (probs.log() - mean.log())).sum(-1).mean(0)  # [N]
    mi = div.mutual_information(probs, reduction="none")
    diff = div.predictive_entropy(probs, "none") - div.expected_entropy(probs, "none")
    assert torch.allclose(mi, diff, atol=1e-6, rtol=0)
    assert torch.allclose(mi, mean_kl, atol=1e-6, rtol=0)
    assert (mi > -1e-12).all()
    assert div.mutual_information(probs).item() == pytest.approx(mean_kl.mean().item(), abs=1e-6)


@pytest.mark.parametrize("m, n, c", SHAPES)
def test_entropies_match_scipy(m, n, c):
    probs, _ = random_members(m, n, c, seed=10 + m)
    p = probs.numpy()
    ref_pred = scipy_entropy(p.mean(0), axis=-1)
    ref_exp = scipy_entropy(p, axis=-1).mean(0)
    assert np.allclose(div.predictive_entropy(probs, "none").numpy(), ref_pred, atol=1e-12)
    assert np.allclose(div.expected_entropy(probs, "none").numpy(), ref_exp, atol=1e-12)
    assert div.predictive_entropy(probs).item() == pytest.approx(ref_pred.mean())


@pytest.mark.parametrize("m, n, c", SHAPES)
def test_brier_ambiguity_decomposition_is_exact(m, n, c):
    probs, labels = random_members(m, n, c, seed=20 + m)
    terms = div.brier_ambiguity(probs, labels)
    assert terms["ensemble"].item() == pytest.approx(
        (terms["mean_member"] - terms["spread"]).item(), abs=1e-6
    )
    assert terms["ensemble"].item() == pytest.approx(cal.brier(probs.mean(0), labels).item())
    member_brier = np.mean([cal.brier(p, labels).item() for p in probs])
    assert terms["mean_member"].item() == pytest.approx(member_brier)
    assert terms["spread"].item() >= 0


@pytest.mark.parametrize("how", ["mean", "geometric"])
@pytest.mark.parametrize("m, n, c", SHAPES)
def test_ensemble_gain_is_the_nonnegative_jensen_gap(how, m, n, c):
    probs, labels = random_members(m, n, c, seed=30 + m)
    gain = div.ensemble_gain(probs, labels, aggregate=how)
    member_nll = np.mean([cal.nll(p, labels).item() for p in probs])
    ref = member_nll - cal.nll(aggregate(probs, how), labels).item()
    assert gain.item() == pytest.approx(ref, abs=1e-10)
    assert gain.item() >= 0


# ----------------------------------------------------------------------------- pairwise statistics


def np_pairs(m):
    return list(itertools.combinations(range(m), 2))


@pytest.mark.parametrize("m, n, c", SHAPES)
def test_pairwise_statistics_match_brute_force(m, n, c):
    probs, labels = random_members(m, n, c, seed=40 + m, scale=1.0)
    p, y = probs.numpy(), labels.numpy()
    pred = p.argmax(-1)
    pairs = np_pairs(m)
    ref_dis = np.mean([np.mean(pred[i] != pred[j]) for i, j in pairs])
    assert div.disagreement(probs).item() == pytest.approx(ref_dis, abs=1e-12)

    kl = np.array([[scipy_entropy(p[i], p[j], axis=-1).mean() for j in range(m)] for i in range(m)])
    assert np.allclose(div.pairwise_kl(probs, matrix=True).numpy(), kl, atol=1e-10)
    assert div.pairwise_kl(probs).item() == pytest.approx(kl.sum() / (m * (m - 1)))

    js = [np.mean(jensenshannon(p[i], p[j], axis=-1) ** 2) for i, j in pairs]
    assert div.pairwise_js(probs).item() == pytest.approx(np.mean(js), abs=1e-10)
    js_matrix = div.pairwise_js(probs, matrix=True)
    assert torch.allclose(js_matrix, js_matrix.T) and (js_matrix <= np.log(2)).all()

    err = (pred != y).astype(float)
    assert div.error_correlation(probs, labels).item() == pytest.approx(
        np.mean([np.corrcoef(err[i], err[j])[0, 1] for i, j in pairs])
    )
    q = []
    for i, j in pairs:
        r_i, r_j = err[i] == 0, err[j] == 0
        n11, n00 = np.sum(r_i & r_j), np.sum(~r_i & ~r_j)
        n10, n01 = np.sum(r_i & ~r_j), np.sum(~r_i & r_j)
        q.append((n11 * n00 - n01 * n10) / (n11 * n00 + n01 * n10))
    assert div.q_statistic(probs, labels).item() == pytest.approx(np.mean(q))

    member_err = err.mean(1)
    assert div.normalized_disagreement(probs, labels).item() == pytest.approx(
        ref_dis / member_err.mean()
    )


def test_diversity_accuracy_plane_has_one_point_per_ordered_pair():
    probs, labels = random_members(4, 500, 5, seed=50, scale=1.0)
    plane = div.diversity_accuracy_plane(probs, labels)
    pred, y = probs.argmax(-1).numpy(), labels.numpy()
    acc = (pred == y).mean(1)
    assert len(plane["reference"]) == 4 * 3
    seen = set()
    for k in range(12):
        r, m = int(plane["reference"][k]), int(plane["member"][k])
        seen.add((r, m))
        d = np.mean(pred[r] != pred[m])
        assert plane["accuracy"][k].item() == pytest.approx(acc[m])
        assert plane["disagreement"][k].item() == pytest.approx(d)
        assert plane["normalized_disagreement"][k].item() == pytest.approx(d / (1 - acc[r]))
    assert seen == {(r, m) for r in range(4) for m in range(4) if r != m}


# ----------------------------------------------------------------------------- degenerate ensembles


def _assert_no_diversity(probs, labels):
    assert div.mutual_information(probs).item() == pytest.approx(0.0, abs=1e-12)
    assert div.disagreement(probs).item() == 0.0
    assert div.pairwise_kl(probs).item() == pytest.approx(0.0, abs=1e-12)
    assert div.pairwise_js(probs).item() == pytest.approx(0.0, abs=1e-12)
    assert div.ensemble_gain(probs, labels).item() == pytest.approx(0.0, abs=1e-12)
    assert div.brier_ambiguity(probs, labels)["spread"].item() == pytest.approx(0.0, abs=1e-12)


def test_one_member_has_no_diversity():
    probs, labels = random_members(1, 100, 4, seed=60)
    _assert_no_diversity(probs, labels)
    assert torch.isnan(div.error_correlation(probs, labels))
    assert torch.isnan(div.q_statistic(probs, labels))
    assert len(div.diversity_accuracy_plane(probs, labels)["member"]) == 0
    assert div.pairwise_kl(probs, matrix=True).shape == (1, 1)
    # [N, C] input is one member
    assert div.mutual_information(probs[0]).item() == 0.0


def test_identical_members_have_no_diversity():
    probs, labels = random_members(1, 100, 4, seed=61)
    probs = probs.expand(5, -1, -1).clone()
    _assert_no_diversity(probs, labels)
    assert div.error_correlation(probs, labels).item() == pytest.approx(1.0)
    assert div.q_statistic(probs, labels).item() == 1.0
    assert div.normalized_disagreement(probs, labels).item() == 0.0


def test_one_class_has_no_diversity():
    probs, labels = torch.ones(3, 10, 1, dtype=torch.float64), torch.zeros(10, dtype=torch.long)
    _assert_no_diversity(probs, labels)
    assert div.predictive_entropy(probs).item() == 0.0


def test_ties_in_top1_take_the_first_maximal_index():
    # member 0 ties between classes 0 and 1 -> predicts 0; member 1 predicts 1
    probs = torch.tensor([[[0.5, 0.5, 0.0]], [[0.2, 0.8, 0.0]]], dtype=torch.float64)
    assert div.disagreement(probs).item() == 1.0
    tied = torch.tensor([[[0.5, 0.5, 0.0]], [[0.6, 0.4, 0.0]]], dtype=torch.float64)
    assert div.disagreement(tied).item() == 0.0


def test_members_always_right_leave_error_statistics_undefined():
    labels = torch.tensor([0, 1, 2, 1])
    probs = torch.nn.functional.one_hot(labels, 3).double().expand(3, -1, -1)
    assert torch.isnan(div.error_correlation(probs, labels))
    assert torch.isnan(div.q_statistic(probs, labels))
    assert torch.isnan(div.normalized_disagreement(probs, labels))


def test_bad_input_raises_config_error():
    probs, labels = random_members(2, 10, 3, seed=0)
    with pytest.raises(ConfigError, match=r"member_probs has shape \(10, 3\)"):
        div.disagreement(probs[0])
    with pytest.raises(ConfigError, match=r"reduction='sum'.*mean, none"):
        div.predictive_entropy(probs, reduction="sum")
    with pytest.raises(ConfigError, match=r"aggregate='median'"):
        div.ensemble_gain(probs, labels, aggregate="median")
    with pytest.raises(ConfigError, match=r"labels has 9 entries"):
        div.q_statistic(probs, labels[:9])


# ----------------------------------------------------------------------------- input checks


def _bad_members(kind: str) -> torch.Tensor:
    """``[2, 4, 3]`` float32 member "probabilities" that are wrong in one way."""
    probs, _ = random_members(2, 4, 3, seed=0)
    probs = probs.float()
    if kind == "sum2":
        return probs * 2
    if kind == "negative":  # still sums to 1
        return probs + torch.tensor([-0.5, 0.25, 0.25])
    if kind == "nan":
        probs[1, 2, 0] = float("nan")
    elif kind == "inf":
        probs[0, 3, 1] = float("inf")
    elif kind == "logits":
        return torch.randn(2, 4, 3, generator=torch.Generator().manual_seed(1))
    elif kind == "one_member_off":
        probs[1, 0] += 0.01
    return probs


BAD_MEMBERS = {
    "sum2": r"member_probs row \(0, 0\) sums to 2 over the last axis",
    "negative": r"member_probs has negative values .*first at index \(0, 0, 0\)",
    "nan": r"member_probs has 1 non-finite value\(s\) \(NaN or inf; first nan at index \(1, 2, 0\)",
    "inf": r"member_probs has 1 non-finite value\(s\) \(NaN or inf; first inf at index \(0, 3, 1\)",
    "logits": r"member_probs (has negative values|row .* sums to)",
    "one_member_off": r"member_probs row \(1, 0\) sums to 1.03",
}

# every public function of diversity.py, as (member_probs [M, N, C], labels [N]) -> value
MEMBER_METRICS = {
    "predictive_entropy": lambda p, y: div.predictive_entropy(p),
    "expected_entropy": lambda p, y: div.expected_entropy(p, "none"),
    "mutual_information": lambda p, y: div.mutual_information(p),
    "disagreement": lambda p, y: div.disagreement(p),
    "normalized_disagreement": div.normalized_disagreement,
    "diversity_accuracy_plane": div.diversity_accuracy_plane,
    "pairwise_kl": lambda p, y: div.pairwise_kl(p),
    "pairwise_js": lambda p, y: div.pairwise_js(p, matrix=True),
    "ensemble_gain": div.ensemble_gain,
    "ensemble_gain_geometric": lambda p, y: div.ensemble_gain(p, y, "geometric"),
    "brier_ambiguity": div.brier_ambiguity,
    "error_correlation": div.error_correlation,
    "q_statistic": div.q_statistic,
}
WITH_LABELS = [
    "normalized_disagreement",
    "diversity_accuracy_plane",
    "ensemble_gain",
    "ensemble_gain_geometric",
    "brier_ambiguity",
    "error_correlation",
    "q_statistic",
]


def _one_line(info: pytest.ExceptionInfo, name: str) -> None:
    assert isinstance(info.value, ValueError) and isinstance(info.value, ConfigError)
    assert "\n" not in str(info.value) and name in str(info.value)


@pytest.mark.parametrize("kind", list(BAD_MEMBERS))
@pytest.mark.parametrize("name", list(MEMBER_METRICS))
def test_every_diversity_metric_refuses_values_that_are_not_probabilities(name, kind):
    labels = torch.tensor([0, 1, 2, 0])
    with pytest.raises(InputError, match=BAD_MEMBERS[kind]) as info:
        MEMBER_METRICS[name](_bad_members(kind), labels)
    _one_line(info, "member_probs")


@pytest.mark.parametrize("name", ["predictive_entropy", "expected_entropy", "mutual_information"])
def test_one_prediction_input_is_checked_too(name):
    with pytest.raises(InputError, match=r"member_probs row \(0,\) sums to 2"):
        MEMBER_METRICS[name](_bad_members("sum2")[0], None)


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda y: y + 3, r"labels has values in \[3, 5\]; expected class indices in \[0, 3\)"),
        (lambda y: y - 1, r"labels has values in \[-1, 1\]"),
        (lambda y: y.float(), r"labels has shape \(4,\) float32; expected an integer tensor"),
        (lambda y: y[:2], r"labels has 2 entries; expected N=4"),
        (lambda y: y[None], r"labels has shape \(1, 4\)"),
    ],
)
@pytest.mark.parametrize("name", WITH_LABELS)
def test_every_diversity_metric_refuses_bad_labels(name, change, match):
    probs, _ = random_members(2, 4, 3, seed=0)
    with pytest.raises(InputError, match=match) as info:
        MEMBER_METRICS[name](probs, change(torch.tensor([0, 1, 2, 0])))
    _one_line(info, "labels")


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda p: p[0, 0], r"member_probs has shape \(3,\); expected a float tensor \[M, N, C\]"),
        (lambda p: p[None], r"member_probs has shape \(1, 2, 4, 3\)"),
        (lambda p: p[:0], r"member_probs has shape \(0, 4, 3\); expected M >= 1, N >= 1"),
        (lambda p: p[:, :0], r"member_probs has shape \(2, 0, 3\)"),
        (lambda p: p[:, :, :0], r"member_probs has shape \(2, 4, 0\)"),
        (lambda p: (p > 0.5).long(), r"member_probs has shape \(2, 4, 3\); expected a float"),
        (lambda p: p.tolist(), r"member_probs has shape list"),
    ],
)
@pytest.mark.parametrize("name", list(MEMBER_METRICS))
def test_every_diversity_metric_refuses_bad_shapes(name, change, match):
    probs, labels = random_members(2, 4, 3, seed=0)
    with pytest.raises(InputError, match=match) as info:
        MEMBER_METRICS[name](change(probs), labels)
    _one_line(info, "member_probs")


def test_float16_members_pass_and_their_float32_round_trip_too():
    probs, labels = random_members(5, 300, 10, seed=1)
    for members in (probs.half(), probs.half().float(), probs.bfloat16()):
        for fn in MEMBER_METRICS.values():
            fn(members, labels)  # no error: rounding is within the tolerance
