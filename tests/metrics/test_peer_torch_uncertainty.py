"""dropens' metrics against TorchUncertainty's on the same predictions (slow; optional peer).

TorchUncertainty (``torch_uncertainty``) is not a dependency: the module is skipped when it is
not importable. Its layout is ``[N, M, C]`` (batch first); ours ``[M, N, C]``.

Where the two libraries use different conventions, each test compares the like-for-like quantity
and checks the difference against a direct numpy computation (README, "Conventions that differ
from other libraries"):

- equal-width ECE: torchmetrics (which TorchUncertainty uses) gives ``conf = 1`` a bin of its own
  (``B + 1`` bins); ours puts it in the last of ``B`` bins;
- adaptive ECE with tied confidences: ties are split by example order here (stable sort), by
  ``torch.sort``'s unstable order there;
- NLL of a label with probability 0: ``inf`` there, ``-log(tiny)`` here;
- ``Entropy`` / ``BrierScore`` of ``[N, M, C]`` there = mean member entropy / Brier, i.e. our
  ``expected_entropy`` / ``brier_ambiguity()["mean_member"]``;
- AURC: trapezoid over coverages ``1/N..1`` divided by ``1 - 1/N`` there, the exact mean of the
  ``N`` risks here;
- FPR@95TPR: positive class OOD there (TorchUncertainty's routines), in-distribution here.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dropens.metrics import calibration as cal
from dropens.metrics import diversity as div

tu = pytest.importorskip("torch_uncertainty", reason="torch-uncertainty is not installed")
from torch_uncertainty.metrics.classification import (  # noqa: E402
    AURC,
    BrierScore,
    CalibrationError,
    CategoricalNLL,
    Disagreement,
    Entropy,
    FPRx,
    MutualInformation,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::UserWarning"),  # FPRx: "will save all targets ..."
]

TOL = 1e-6


def _value(metric, *args) -> float:
    metric.update(*args)
    return float(metric.compute())


def _members(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed ``[M, N, C]`` float32 member probabilities and ``[N]`` labels."""
    g = torch.Generator().manual_seed(17)
    if name == "random":  # no ties, a spread of confidences
        m, n, c = 8, 400, 10
        return torch.softmax(2 * torch.randn(m, n, c, generator=g), -1), torch.randint(
            0, c, (n,), generator=g
        )
    if name == "ties":  # dyadic rows: tied argmax (first index wins), tied confidences, p = 0
        protos = torch.tensor(
            [
                [0.5, 0.5, 0, 0],
                [0.25, 0.25, 0.25, 0.25],
                [0.75, 0.25, 0, 0],
                [0.5, 0.25, 0.25, 0],
                [1, 0, 0, 0],
                [0.375, 0.375, 0.25, 0],
                [0, 0.5, 0.5, 0],
            ]
        )
        probs = protos[torch.randint(0, len(protos), (5, 300), generator=g)]
        perm = torch.argsort(torch.rand(5, 300, 4, generator=g), dim=-1)
        return probs.gather(-1, perm), torch.randint(0, 4, (300,), generator=g)
    # near-certain: float32 softmax of large logits; top-1 of 1.0 exactly and labels of p = 0
    logits = 40 * torch.randn(6, 300, 5, generator=g)
    labels = torch.randint(0, 5, (300,), generator=g)
    labels[:150] = logits[0, :150].argmax(-1)  # half right, half (mostly) confidently wrong
    return torch.softmax(logits, -1), labels


CASES = ["random", "ties", "certain"]


# ----------------------------------------------------------------------------- numpy references


def _np_width_ece(conf: np.ndarray, hit: np.ndarray, n_bins: int, own_bin_for_one: bool) -> float:
    """Equal-width ECE: bins ``[b/B, (b+1)/B)``; ``conf = 1`` in bin ``B - 1`` (``B`` bins) or in
    a bin of its own (``own_bin_for_one``: torchmetrics' ``B + 1`` bins)."""
    bounds = np.linspace(0, 1, n_bins + 1, dtype=np.float32)
    idx = np.searchsorted(bounds, conf, side="right") - 1
    if not own_bin_for_one:
        idx = np.minimum(idx, n_bins - 1)
    total = 0.0
    for b in np.unique(idx):
        sel = idx == b
        total += abs(hit[sel].astype(np.float64).sum() - conf[sel].astype(np.float64).sum())
    return total / conf.size


def _np_mass_ece(conf: np.ndarray, hit: np.ndarray, n_bins: int, order: np.ndarray) -> float:
    """Adaptive ECE: examples in ``order`` (ascending confidence) split as ``array_split`` does."""
    total = 0.0
    for part in np.array_split(order, n_bins):
        if part.size:
            total += abs(hit[part].astype(np.float64).sum() - conf[part].astype(np.float64).sum())
    return total / conf.size


def _top1(probs: torch.Tensor, labels: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    conf, pred = probs.max(dim=-1)
    return conf.numpy(), (pred == labels).numpy()


# ----------------------------------------------------------------------------- calibration


@pytest.mark.parametrize("n_bins", [10, 15])
@pytest.mark.parametrize("case", CASES)
def test_ece_equal_width(case, n_bins):
    members, labels = _members(case)
    c = members.shape[-1]
    for probs in (members.mean(0), members[0]):  # the ensemble and one (near-certain) member
        ours = float(cal.ece(probs, labels, n_bins))
        theirs = _value(
            CalibrationError("multiclass", num_bins=n_bins, num_classes=c), probs, labels
        )
        conf, hit = _top1(probs, labels)
        assert ours == pytest.approx(_np_width_ece(conf, hit, n_bins, False), abs=TOL)
        assert theirs == pytest.approx(_np_width_ece(conf, hit, n_bins, True), abs=TOL)
        if not (conf == 1).any():
            assert ours == pytest.approx(theirs, abs=TOL)


def test_ece_conf_one_has_its_own_bin_in_torchmetrics():
    """The one case where the conventions give different numbers: the last bin is underconfident
    below 1 and overconfident at 1; merged (ours, B bins) the gaps cancel, split they add."""
    probs = torch.tensor([[0.92, 0.08]] * 10 + [[1.0, 0.0]] * 10)
    labels = torch.tensor([0] * 10 + [0] * 9 + [1])
    ours = float(cal.ece(probs, labels, 10))
    theirs = _value(CalibrationError("multiclass", num_bins=10, num_classes=2), probs, labels)
    # ours: |(10 + 9) - (9.2 + 10)| / 20 = 0.01; theirs: (|10 - 9.2| + |9 - 10|) / 20 = 0.09
    assert ours == pytest.approx(0.01, abs=TOL)
    assert theirs == pytest.approx(0.09, abs=TOL)


@pytest.mark.parametrize("n_bins", [10, 15])
@pytest.mark.parametrize("case", CASES)
def test_ece_adaptive(case, n_bins):
    members, labels = _members(case)
    c = members.shape[-1]
    for probs in (members.mean(0), members[0]):
        ours = float(cal.ece(probs, labels, n_bins, "mass"))
        tu_ace = CalibrationError("multiclass", adaptive=True, num_bins=n_bins, num_classes=c)
        theirs = _value(tu_ace, probs, labels)
        conf, hit = _top1(probs, labels)
        stable = np.argsort(conf, kind="stable")
        assert ours == pytest.approx(_np_mass_ece(conf, hit, n_bins, stable), abs=TOL)
        # TorchUncertainty sorts with torch.sort (not stable): its value is ours on the examples
        # put in the order its sort leaves them in (the only difference is how ties are split)
        tu_order = torch.sort(torch.from_numpy(conf).float()).indices
        assert theirs == pytest.approx(_np_mass_ece(conf, hit, n_bins, tu_order.numpy()), abs=TOL)
        assert float(cal.ece(probs[tu_order], labels[tu_order], n_bins, "mass")) == pytest.approx(
            theirs, abs=TOL
        )
        if np.unique(conf).size == conf.size:  # no ties: one value
            assert ours == pytest.approx(theirs, abs=TOL)


# ----------------------------------------------------------------------------- scores


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", CASES)
def test_brier_and_nll(case, dtype):
    members, labels = _members(case)
    members = members.to(dtype)
    c = members.shape[-1]
    probs = members.mean(0)
    assert float(cal.brier(probs, labels)) == pytest.approx(
        _value(BrierScore(c), probs, labels), abs=TOL
    )
    # BrierScore of [N, M, C] is the mean member Brier score, not the Brier score of the mean
    assert float(div.brier_ambiguity(members, labels)["mean_member"]) == pytest.approx(
        _value(BrierScore(c), members.transpose(0, 1), labels), abs=TOL
    )
    tiny = torch.finfo(dtype).tiny
    for p in (probs, members[0]):
        p_label = p.gather(1, labels[:, None])[:, 0]
        ok = p_label >= tiny  # below: 0 or subnormal (float32 softmax of large logits)
        theirs = _value(CategoricalNLL(), p, labels)
        if bool(ok.all()):
            assert float(cal.nll(p, labels)) == pytest.approx(theirs, abs=TOL)
            continue
        # log 0 = inf there (and the log of a subnormal); -log(tiny) here (87.3 in float32)
        assert theirs == math.inf or theirs > -math.log(tiny)
        n_low = int((~ok).sum())
        expected = (-float(torch.log(p_label[ok]).sum()) - n_low * math.log(tiny)) / len(p)
        assert float(cal.nll(p, labels)) == pytest.approx(expected, rel=TOL)
        assert float(cal.nll(p[ok], labels[ok])) == pytest.approx(
            _value(CategoricalNLL(), p[ok], labels[ok]), abs=TOL
        )


# ----------------------------------------------------------------------------- diversity


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", CASES)
def test_entropies_mutual_information_disagreement(case, dtype):
    members, _ = _members(case)
    members = members.to(dtype)
    batch_first = members.transpose(0, 1)  # TorchUncertainty's [N, M, C]
    assert float(div.mutual_information(members)) == pytest.approx(
        _value(MutualInformation(), batch_first), abs=TOL
    )
    # the pairwise definition (fraction of member pairs whose top-1 differ) in both libraries
    assert float(div.disagreement(members)) == pytest.approx(
        _value(Disagreement(), batch_first), abs=TOL
    )
    # Entropy of [N, M, C] is the mean member entropy; of the mean [N, C] the predictive entropy
    assert float(div.expected_entropy(members)) == pytest.approx(
        _value(Entropy(), batch_first), abs=TOL
    )
    assert float(div.predictive_entropy(members)) == pytest.approx(
        _value(Entropy(), members.mean(0)), abs=TOL
    )


# ----------------------------------------------------------------------------- selective, OOD


def test_aurc_exact_mean_vs_normalized_trapezoid():
    members, labels = _members("random")
    probs = members.mean(0).double()
    conf = probs.max(-1).values
    assert conf.unique().numel() == conf.numel()  # no ties: one ranking in both libraries
    err = (probs.argmax(-1) != labels).double()[torch.argsort(conf, descending=True)]
    risk = (err.cumsum(0) / torch.arange(1, len(err) + 1)).numpy()
    n = risk.size
    ours = float(cal.aurc(probs, labels))
    theirs = _value(AURC(), probs, labels)
    assert ours == pytest.approx(risk.mean(), abs=1e-12)
    assert theirs == pytest.approx((risk.sum() - (risk[0] + risk[-1]) / 2) / (n - 1), abs=TOL)


def test_fpr95_positive_class():
    g = torch.Generator().manual_seed(5)
    s_in = torch.randn(500, generator=g, dtype=torch.float64) + 1.5
    s_out = 3 * torch.randn(400, generator=g, dtype=torch.float64)  # wider: the two FPRs differ
    s_in[:50] = s_out[:50] = 0.25  # ties across the two sets
    scores = torch.cat([s_in, s_out])
    targets = torch.cat([torch.zeros(500), torch.ones(400)]).long()  # TU: 0 = ID, 1 = OOD
    # in-distribution positive (ours), larger = more in-distribution
    ours_id = float(cal.fpr_at_95_tpr(s_in, s_out))
    assert ours_id == pytest.approx(_value(FPRx(0.95, pos_label=0), scores, targets), abs=TOL)
    # OOD positive with OOD-oriented scores (TorchUncertainty's routines: FPR95(pos_label=1)) is
    # another quantity: the fraction of ID examples flagged at 95% OOD recall
    theirs = _value(FPRx(0.95, pos_label=1), -scores, targets)
    assert float(cal.fpr_at_95_tpr(-s_out, -s_in)) == pytest.approx(theirs, abs=TOL)
    assert abs(theirs - ours_id) > 0.01
