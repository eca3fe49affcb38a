"""``masksembles``: the masks' definition (m ones each, exactly c used positions, the overlap of the
paper's formula and of the authors' generator, the scale's two ends, purity), members against the
backbone masked by hand, training losses, the record of a real run, masks surviving a checkpoint
reload bit for bit, and bad input."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dropens import control
from dropens.cli import main
from dropens.config import compose, to_container
from dropens.errors import ConfigError
from dropens.inference import predict
from dropens.layers import Dropout
from dropens.methods import Masksembles, method_class
from dropens.methods.masksembles import expected_size, generate_masks, internal_scale
from dropens.methods.subnets import partition_assignment
from dropens.results import RunRecord
from dropens.train import fit_and_record, prepare

SMOKE = ["trainer=smoke", "logger=csv"]
C = 10
SHAPES = {"mlp": (1, 40), "cnn1d": (1, 40), "cnn2d": (1, 8, 8)}


def _cfg(*overrides: str) -> dict:
    return to_container(compose(["method=masksembles", *SMOKE, "results_root=unused", *overrides]))


def _backbone(model: str = "mlp", *overrides: str, seed: int = 0) -> nn.Module:
    cfg = _cfg(f"model={model}", *overrides)
    torch.manual_seed(seed)
    return Masksembles.build_backbone(cfg, SHAPES[model], C)


def _mean_pair_overlap(masks: np.ndarray) -> float:
    """Mean ``|A_i & A_j|`` over the pairs ``i < j`` of binary masks ``[K, c]``."""
    gram = masks.astype(np.int64) @ masks.T.astype(np.int64)
    return float(gram[np.triu_indices(len(masks), 1)].mean())


def _reference_masks(m: int, s: float, k: int, rng: np.random.Generator) -> np.ndarray:
    """The authors' ``generate_masks`` (masksembles/common.py), re-implemented in NumPy: ``k``
    masks of ``m`` out of ``int(m s)`` positions, redrawn until the expected size is used."""
    total, expected = int(m * s), int(m * s * (1 - (1 - 1 / s) ** k))
    while True:
        masks = np.zeros((k, total), dtype=bool)
        for row in masks:
            row[rng.choice(total, m, replace=False)] = True
        masks = masks[:, masks.any(axis=0)]
        if masks.shape[1] == expected:
            return masks


# ----------------------------------------------------------------------------- the masks


@pytest.mark.parametrize(
    "c,k,scale",
    [(10, 4, 2.0), (25, 4, 2.0), (100, 4, 2.0), (128, 8, 3.0), (64, 2, 1.5), (640, 4, 6.0)],
)
def test_every_mask_has_m_ones_and_exactly_c_positions_are_used(c, k, scale):
    masks = generate_masks(c, k, scale, layer_seed=3)
    m, s = internal_scale(c, k, scale)
    assert masks.dtype == torch.bool and masks.shape == (k, c)
    assert m == int(c / (scale * (1 - (1 - 1 / scale) ** k)))  # the paper's ones per mask
    assert masks.sum(dim=1).tolist() == [m] * k
    assert bool(masks.any(dim=0).all())  # every one of the c positions is used by a mask
    assert expected_size(m, s, k) == c  # int(m s (1 - (1 - 1/s)^K)) at the internal scale
    assert 0.8 * scale <= s <= 1.2 * scale


@pytest.mark.parametrize("c,k,scale", [(100, 4, 2.0), (128, 4, 3.0), (100, 8, 6.0), (32, 4, 1.5)])
def test_overlap_matches_the_paper_formula_and_the_authors_generator(c, k, scale):
    """Mean pairwise overlap over 200 mask sets. (1) Against the authors' generator at the same
    (m, s): equal means within 5 standard errors of the difference. (2) Against the formula: a
    position is in a mask with probability m / T (T = int(m s) ~ m s), so two masks share
    m^2 / T ~ m / s positions before the redraw until exactly c positions are used; c lies within
    about one position of the unconditioned expected union, so the conditioning moves the mean
    overlap by at most about one position: |mean - m^2/T| < 5 SE + 1."""
    m, s = internal_scale(c, k, scale)
    n = 200
    ours = np.array([_mean_pair_overlap(generate_masks(c, k, scale, i).numpy()) for i in range(n)])
    rng = np.random.default_rng(0)
    ref = np.array([_mean_pair_overlap(_reference_masks(m, s, k, rng)) for _ in range(n)])
    se_diff = math.sqrt(ours.var(ddof=1) / n + ref.var(ddof=1) / n)
    assert abs(ours.mean() - ref.mean()) < 5 * se_diff, (ours.mean(), ref.mean(), se_diff)
    se = ours.std(ddof=1) / math.sqrt(n)
    assert abs(ours.mean() - m * m / int(m * s)) < 5 * se + 1, (ours.mean(), m * m / int(m * s))


def test_two_masks_share_exactly_2m_minus_c_positions():
    """With K = 2 the used positions fix the overlap: |A u B| = 2m - |A n B| = c."""
    for seed in range(10):
        a, b = generate_masks(100, 2, 2.0, seed)
        m = int(a.sum())
        assert int((a & b).sum()) == 2 * m - 100


def test_scale_one_gives_identical_masks_and_a_large_scale_nearly_disjoint_ones():
    assert bool(generate_masks(100, 4, 1.0, 0).all())  # S = 1: m = c, every mask all ones
    near = generate_masks(100, 4, 1.05, 0)
    m = int(near[0].sum())
    assert m >= 90  # m = int(100 / 1.05...) = 95: two masks share >= 2m - c = 90 positions
    assert (near.int() @ near.int().T).min() >= 2 * m - 100

    def mean_iou(scale: float) -> float:
        ious = []
        for seed in range(30):
            masks = generate_masks(100, 4, scale, seed).numpy()
            inter = _mean_pair_overlap(masks)
            ious.append(inter / (2 * masks[0].sum() - inter))
        return float(np.mean(ious))

    ious = [mean_iou(scale) for scale in (1.05, 1.5, 2.0, 3.0, 6.0)]
    assert ious == sorted(ious, reverse=True) and ious[0] > 0.85
    # IoU ~ (m/s) / (2m - m/s) = 1/(2s - 1), and s >= 0.8 S: below 1/(2 * 4.8 - 1) ~ 0.12
    assert ious[-1] < 1 / (2 * 0.8 * 6.0 - 1)


def test_masks_are_a_pure_function_of_the_seed():
    state = torch.get_rng_state()
    a = generate_masks(100, 4, 2.0, layer_seed=7)
    assert torch.equal(a, generate_masks(100, 4, 2.0, layer_seed=7))
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is not used
    assert not torch.equal(a, generate_masks(100, 4, 2.0, layer_seed=8))
    # a backbone built after the same global seed has the same layer seeds, hence the same masks
    first, second = _backbone("cnn1d", seed=3), _backbone("cnn1d", seed=3)
    for x, y in zip(control.dropout_layers(first), control.dropout_layers(second)):
        assert torch.equal(x.member_masks, y.member_masks)
    one, two = control.dropout_layers(first)[:2]
    assert not torch.equal(one.member_masks, two.member_masks)  # every site its own masks


def test_sites_get_their_masks_structure_and_keep():
    assert method_class("masksembles") is Masksembles
    sites = {  # (units, structure) per dropout layer: channels of conv sites, features of flat ones
        "mlp": [(100, "element")] * 2,
        "cnn1d": [(25, "channel")] * 3,
        "cnn2d": [(32, "channel")] * 2 + [(64, "channel")] * 2 + [(128, "element")],
    }
    for model, expected in sites.items():
        layers = control.dropout_layers(_backbone(model))
        assert [(m.member_masks.shape[1], m.structure) for m in layers] == expected
        for layer in layers:
            ones = int(layer.member_masks[0].sum())
            assert layer.n_members == 4 and layer.scale == "none"
            assert layer.p == 1 - ones / layer.member_masks.shape[1]


# ----------------------------------------------------------------------------- members


class _Times(nn.Module):
    """``x * factor``, ``factor`` ``[c]`` broadcast over axis 1 (or a scalar)."""

    def __init__(self, factor: torch.Tensor | float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.factor, float):
            return x * self.factor
        return x * self.factor.view(1, -1, *[1] * (x.dim() - 2))


def _by_hand(backbone: nn.Module, factor) -> nn.Module:
    """A copy of ``backbone`` with every dropout layer replaced by ``x * factor(layer)``."""
    out = copy.deepcopy(backbone)
    for name, module in list(out.named_modules()):
        if isinstance(module, Dropout):
            out.set_submodule(name, _Times(factor(module)))
    return out


@pytest.mark.parametrize("model", sorted(SHAPES))
def test_member_k_is_the_backbone_with_mask_k_applied_by_hand(model):
    """In float64: the layer computes ``x * ((1/keep) * keep)``, one rounding of 2^-53 away from
    ``x * A``; the deterministic pass is ``x * keep`` at every site (weight scaling)."""
    backbone = _backbone(model).double().eval()
    x = torch.randn(
        6, *SHAPES[model], dtype=torch.float64, generator=torch.Generator().manual_seed(1)
    )
    outs = []
    for k in range(4):
        with control.member(backbone, k):
            outs.append(backbone(x))
        hand = _by_hand(backbone, lambda m, k=k: m.member_masks[k].double())
        torch.testing.assert_close(outs[k], hand(x), rtol=1e-12, atol=1e-12)
        backbone.train()  # fixed masks: the same in train mode
        with control.member(backbone, k):
            torch.testing.assert_close(backbone(x), outs[k], rtol=0, atol=0)
        backbone.eval()
    assert not torch.allclose(outs[0], outs[1])
    keep = _by_hand(backbone, lambda m: m.keep)
    torch.testing.assert_close(backbone(x), keep(x), rtol=1e-12, atol=1e-12)
    with control.member(backbone, range(4)):  # stacked (m b) == one by one
        stacked = backbone(x.repeat(4, *[1] * (x.dim() - 1))).reshape(4, len(x), C)
    torch.testing.assert_close(stacked, torch.stack(outs), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("model", [["model=cnn1d"], ["model=mlp", "model.batchnorm=true"]])
def test_members_do_not_depend_on_the_rest_of_the_batch(model):
    """Eval mode (BatchNorm on running statistics): an example's member predictions are the same
    in any batch (float32; batch sizes change the matmul blocking, so 1e-6)."""
    cfg = _cfg(*model)
    torch.manual_seed(0)
    backbone = Masksembles.build_backbone(cfg, SHAPES["mlp"], C)
    g = torch.Generator().manual_seed(2)
    x, other = torch.randn(8, 1, 40, generator=g), torch.randn(13, 1, 40, generator=g)
    alone = predict(backbone, x[:3], "members").member_probs
    mixed = predict(backbone, torch.cat([other[:5], x[:3], other[5:]]), "members").member_probs
    assert alone.shape == (4, 3, C)
    torch.testing.assert_close(mixed[:, 5:8], alone, atol=1e-6, rtol=0)


@pytest.mark.parametrize("batching", ["partition", "repeat"])
def test_training_loss_is_the_members_loss(batching):
    """partition (the paper's split of the batch): example b of step 0 through mask b mod K;
    repeat: the mean of the K members' losses over the whole batch."""
    cfg = _cfg("model=mlp", f"method.batching={batching}")
    torch.manual_seed(0)
    method = Masksembles(Masksembles.build_backbone(cfg, SHAPES["mlp"], C), cfg)
    method.train()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(10, 1, 40, generator=g), torch.randint(0, C, (10,), generator=g)
    logits = []
    for k in range(4):
        with control.member(method.backbone, k):
            logits.append(method.backbone(x))
    ref = torch.stack(logits)  # [K, B, C]
    if batching == "partition":
        rows = partition_assignment(len(x), 4, 0)
        expected = F.cross_entropy(ref[rows, torch.arange(len(x))], y)
    else:
        expected = F.cross_entropy(ref.reshape(-1, C), y.repeat(4))
    torch.testing.assert_close(method.training_loss(x, y), expected, atol=1e-6, rtol=0)


def test_fixed_member_masks_of_a_layer():
    layer = Dropout(p=0.3, seed=1)
    assert list(layer.state_dict()) == ["seed"]  # no masks set: the state is unchanged
    masks = torch.tensor([[1, 1, 0, 0, 1], [0, 1, 1, 1, 0]])
    layer.set_member_masks(masks)
    assert list(layer.state_dict()) == ["seed", "member_masks"]
    assert layer.n_members == 2 and layer.p == pytest.approx(1 - 3 / 5)
    layer.set_members([1, 0])
    bank = layer.member_bank((5,), torch.device("cpu"), torch.float64)
    torch.testing.assert_close(bank, masks[[1, 0]].double() / 0.6)
    for bad, fragment in (
        (torch.tensor([[1, 0, 2]]), "not binary"),
        (torch.tensor([[1, 0, 0], [1, 1, 0]]), "same number"),
        (torch.zeros(2, 3), "same number"),
        (torch.ones(3), "[K, units]"),
    ):
        with pytest.raises(ConfigError) as err:
            layer.set_member_masks(bad)
        assert fragment in str(err.value)
    layer.set_mode("member")
    with pytest.raises(ConfigError, match="units"):
        layer(torch.randn(2, 6))  # 6 features, masks of 5
    layer.set_member_masks(None)
    assert layer.member_masks is None and list(layer.state_dict()) == ["seed"]


# ----------------------------------------------------------------------------- a real run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One smoke run on MNIST-1D with the reference CNN (K = 4, S = 2, the paper's batching)."""
    root = tmp_path_factory.mktemp("masksembles")
    cfg = to_container(
        compose(["method=masksembles", "model=cnn1d", *SMOKE, f"results_root={root}", "study=ms"])
    )
    prep = prepare(cfg)
    return prep, fit_and_record(prep)


def test_record_has_every_member_their_mean_and_the_deterministic_pass(trained):
    _, record = trained
    assert record.done
    metrics = record.metrics()
    labels = [f"member{k}" for k in range(4)] + ["members", "members_geometric", "deterministic"]
    for label in labels:
        for metric in ("acc", "nll", "ece", "brier"):
            assert np.isfinite(metrics[f"test/clean/{label}/{metric}"]), (label, metric)
    for metric in ("mi", "disagreement", "member_acc", "member_nll"):
        assert f"test/clean/members/{metric}" in metrics
    assert "test/clean/member4/acc" not in metrics
    labels = {key.split("/")[2] for key in metrics if key.startswith("test/clean/")}
    assert not {label for label in labels if label.startswith(("mc", "single", "ws_"))}
    member_acc = np.mean([metrics[f"test/clean/member{k}/acc"] for k in range(4)])
    assert metrics["test/clean/members/member_acc"] == pytest.approx(member_acc, abs=1e-6)
    preds = record.predictions()
    n = len(preds["labels/clean"])
    assert preds["clean/members"].shape == (4, n, 10)
    assert preds["clean/deterministic"].shape == (1, n, 10)
    header = (record.path / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    for key in ("val/clean/members/nll", "val/clean/deterministic/acc", "val/clean/members/mi"):
        assert key in header, key


def test_masks_survive_a_checkpoint_reload_bit_for_bit(trained):
    prep, record = trained
    cfg, backbone = prep.config, prep.method.backbone
    x = prep.datamodule.eval_sets()["clean"][0][:64]
    expected = predict(backbone, x, "members").member_probs
    torch.manual_seed(12345)  # another global seed: other layer seeds, other masks, other weights
    fresh = Masksembles(
        Masksembles.build_backbone(cfg, prep.datamodule.input_shape, prep.datamodule.n_classes),
        cfg,
    )
    pairs = list(zip(control.dropout_layers(fresh.backbone), control.dropout_layers(backbone)))
    assert not all(torch.equal(a.member_masks, b.member_masks) for a, b in pairs)
    checkpoint = torch.load(record.last_checkpoint(), map_location="cpu", weights_only=False)
    fresh.load_state_dict(checkpoint["state_dict"])
    assert all(torch.equal(a.member_masks, b.member_masks) for a, b in pairs)
    assert torch.equal(predict(fresh.backbone, x, "members").member_probs, expected)


def test_cnn2d_repeat_run_end_to_end(tmp_path):
    code = main(
        [
            "train",
            "method=masksembles",
            "method.batching=repeat",
            "method.scale=3",
            "data=digits",
            "model=cnn2d",
            *SMOKE,
            "logger=none",
            f"results_root={tmp_path}",
            "study=ms2d",
        ]
    )
    assert code == 0
    (run,) = (tmp_path / "ms2d").iterdir()
    metrics = RunRecord(run).metrics()
    assert {
        "test/clean/member3/acc",
        "test/clean/members/nll",
        "test/clean/deterministic/nll",
    } <= set(metrics)


# ----------------------------------------------------------------------------- bad input

BAD = {
    "k_one": (["method.k=1"], ["method.k=1", ">= 2", "plain network"]),
    "k_zero": (["method.k=0"], ["method.k=0", ">= 1"]),
    "k_not_int": (["method.k=2.5"], ["method.k=2.5", "integer"]),
    "scale_one": (["method.scale=1"], ["method.scale=1", "(1, 6]", "method=plain"]),
    "scale_above_6": (["method.scale=6.5"], ["method.scale=6.5", "(1, 6]"]),
    "scale_below_1": (["method.scale=0.5"], ["method.scale=0.5", "(1, 6]"]),
    "scale_not_number": (["method.scale=wide"], ["method.scale='wide'", "(1, 6]"]),
    "scale_bool": (["method.scale=true"], ["method.scale=True", "(1, 6]"]),
    "unknown_batching": (
        ["method.batching=shuffle"],
        ["method.batching='shuffle'", "repeat", "partition"],
    ),
    "partition_ensemble": (
        ["method.objective=ensemble"],
        ["method.batching=partition", "method.objective=ensemble", "batching=repeat"],
    ),
    "unknown_objective": (
        ["method.objective=boost"],
        ["method.objective='boost'", "member", "ensemble"],
    ),
    "site_too_small": (
        ["model=cnn1d", "model.dropout_sites=[input,conv]"],
        ["method=masksembles", ">= 10", "'input.0' has 1", "model.dropout_sites"],
    ),
    "no_exact_masks": (
        ["model=cnn1d", "model.channels=10", "method.k=2", "method.scale=6"],
        ["method.k=2", "exactly 10 units", "method.scale=6"],
    ),
    "no_dropout_site": (["model.dropout_sites=[]"], ["method=masksembles", "dropout_sites"]),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input_one_line_error_and_nothing_written(name, assert_rejected):
    overrides, must_contain = BAD[name]
    assert_rejected(["method=masksembles", *overrides], must_contain)
