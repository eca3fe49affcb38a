"""Report builders of the mask_distributions, structured, mc_samples and magnitude studies on
synthetic run tables (no training): paired-by-seed cells, the MC-vs-weight-scaling crossing, the
headline MC T read from the records, figures written."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dropens import keys
from dropens.metrics import stats
from dropens.reporting import (
    common,
    ensemble_view,
    magnitude,
    mask_distributions,
    mc_samples,
    structured,
)
from dropens.results import RunRecord

SEEDS = (0, 1, 2)


def _metrics(rng: np.random.Generator, labels: list[str], base: float) -> dict[str, float]:
    row = {}
    for label in labels:
        acc = base + rng.normal(0, 0.01)
        row.update(
            {
                keys.test("clean", label, "acc"): acc,
                keys.test("clean", label, "nll"): 1.5 - acc + rng.normal(0, 0.01),
                keys.test("clean", label, "ece"): abs(rng.normal(0.05, 0.01)),
            }
        )
        if (keys.mc_samples(label) or 1) > 1:
            row[keys.test("clean", label, "mi")] = abs(rng.normal(0.02, 0.005))
            row[keys.test("clean", label, "disagreement")] = abs(rng.normal(0.2, 0.02))
    return row


def test_paired_by_seed_aligns_seeds_and_formats():
    a = pd.DataFrame({"cfg.seed": [2, 0, 1], "m": [0.93, 0.91, 0.92]})
    b = pd.DataFrame({"cfg.seed": [0, 1, 2, 3], "m": [0.90, 0.90, 0.90, 0.10]})
    d = common.paired_by_seed(a, b, "m")
    ref = stats.paired_difference([0.91, 0.92, 0.93], [0.90, 0.90, 0.90])
    assert d == pytest.approx(ref) and d["n"] == 3  # seed 3 has no pair
    cell = common.fmt_paired(d, 3)
    assert cell.startswith("+0.020 [") and cell.endswith(f"p={ref['pvalue']:.3f}")
    assert common.fmt_paired(common.paired_by_seed(a.iloc[:1], b, "m")) == "+0.030 (1 seed)"
    assert common.fmt_paired(common.paired_by_seed(a, b, "missing")) == "-"
    assert common.fmt_p(0.0004) == "p<0.001" and common.fmt_p(float("nan")) == "-"


def test_multiplicity_line_and_holm_column_hand_computed(tmp_path):
    """Holm over [0.01, 0.04, 0.03, 0.2] (a NaN row has no test): sorted, (4-j+1) p_(j) =
    0.04, 0.09, 0.08 -> running max 0.09, 0.2; only the first stays below 0.05."""
    p = [0.01, 0.04, 0.03, 0.2, float("nan")]
    line = common.multiplicity_line(p, "toy")
    assert line.startswith("Multiplicity, toy: 4 paired tests, 3 with p < 0.05 (~0.2 expected")
    assert line.endswith("1 significant after Holm's correction (smallest adjusted p = 0.040).")
    assert common.multiplicity_line([float("nan")], "toy") == ""
    section = common.Section()
    common.write_paired_table(section, pd.DataFrame({"row": list("abcde"), "pvalue": p}), tmp_path)
    table = pd.read_csv(tmp_path / "paired.csv")
    assert list(table.columns) == ["row", "Holm p"]
    assert list(table["Holm p"]) == ["p=0.040", "p=0.090", "p=0.090", "p=0.200", "-"]
    assert section.tables == ["paired"] and section.results == [
        line.replace("toy", "every row of `paired.md`")
    ]


def _tests_in(paired: pd.DataFrame) -> int:
    """Cells of a paired table that carry a test: ``... [lo, hi], p=...``."""
    return int(sum(paired[c].astype(str).str.contains(r"\], p[=<]").sum() for c in paired))


def _mask_distribution_runs(t: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    labels = ["deterministic", *(keys.mc_label(n) for n in (1, 2, t))]
    rows = []
    for model in ("mlp", "cnn1d"):
        for seed in SEEDS:
            rows.append(
                {"cfg.model.name": model, "cfg.method.name": "plain", "cfg.seed": seed}
                | {"cfg.dropout.dist": "bernoulli", "cfg.dropout.p": 0.1}
                | _metrics(rng, ["deterministic"], 0.9)
            )
            for dist in ("bernoulli", "gaussian", "uniform"):
                for p in (0.1, 0.25, 0.5):
                    rows.append(
                        {"cfg.model.name": model, "cfg.method.name": "dropout", "cfg.seed": seed}
                        | {"cfg.dropout.dist": dist, "cfg.dropout.p": p, "cfg.eval.mc_samples": t}
                        | _metrics(rng, labels, 0.9 - 0.1 * p)
                    )
    return pd.DataFrame(rows)


def test_mask_distributions_build(tmp_path):
    section = mask_distributions.build(_mask_distribution_runs(32), tmp_path)
    assert section.figures == ["metrics_vs_p", "diversity_vs_p"]
    paired = pd.read_csv(tmp_path / "paired.csv")
    assert len(paired) == 2 * 3 * 2 * 2  # model x p x (gaussian, uniform) x evaluation
    assert paired["diff acc"].str.contains(r"\], p[=<]").all()
    assert any("vs bernoulli" in line and "p=" in line for line in section.results)
    family = [ln for ln in section.results if ln.startswith("Multiplicity")]
    assert len(family) == 1 and f": {_tests_in(paired)} paired tests," in family[0]
    for stem in section.figures:
        assert (tmp_path / f"{stem}.png").stat().st_size > 10_000


def test_structured_labels_order_and_build(tmp_path):
    runs = [
        {
            "cfg.method.name": "dropout",
            "cfg.dropout.structure": "block",
            "cfg.dropout.block_size": 7.0,
        },
        {
            "cfg.method.name": "dropout",
            "cfg.dropout.structure": "block",
            "cfg.dropout.block_size": 3.0,
        },
        {
            "cfg.method.name": "plain",
            "cfg.dropout.structure": "element",
            "cfg.dropout.block_size": None,
        },
        {
            "cfg.method.name": "dropout",
            "cfg.dropout.structure": "location",
            "cfg.dropout.block_size": None,
        },
        {
            "cfg.method.name": "dropout",
            "cfg.dropout.structure": "element",
            "cfg.dropout.block_size": None,
        },
    ]
    labels = [structured.structure_label(r) for r in runs]
    assert labels == ["block 7", "block 3", "plain", "location", "element"]
    assert structured._order(labels) == ["element", "location", "block 3", "block 7", "plain"]

    rng = np.random.default_rng(1)
    rows = []
    for data, model in (("mnist1d", "cnn1d"), ("fashion_mnist", "cnn2d")):
        for seed in SEEDS:
            for run in runs:
                method = run["cfg.method.name"]
                rows.append(
                    run
                    | {"cfg.data.name": data, "cfg.model.name": model, "cfg.seed": seed}
                    | {"cfg.eval.mc_samples": 8, "record": RunRecord(tmp_path / "no_record")}
                    | _metrics(
                        rng,
                        ["deterministic"] if method == "plain" else ["deterministic", "mc8"],
                        0.9,
                    )
                )
    section = structured.build(pd.DataFrame(rows), tmp_path)
    assert section.figures == ["metrics", "diversity"]  # no magnitudes.json: no magnitude figure
    paired = pd.read_csv(tmp_path / "paired.csv")
    assert set(paired["vs"]) == {"element"} and "element" not in set(paired["structure"])
    assert (paired.loc[paired["evaluation"] == "deterministic", "diff mi"] == "-").all()
    family = [ln for ln in section.results if ln.startswith("Multiplicity")]
    assert len(family) == 1 and f": {_tests_in(paired)} paired tests," in family[0]


def test_mc_samples_crossing_hand_computed():
    # weight scaling error 0.10 / 0.11 / 0.12 (95% CI [0.085, 0.135]); MC error falls with T
    ws_acc = np.array([0.90, 0.89, 0.88])
    mc_err = {
        1: [0.20, 0.21, 0.22],
        2: [0.125, 0.135, 0.14],
        4: [0.115, 0.12, 0.13],
        8: [0.10, 0.11, 0.115],
    }
    df = pd.DataFrame({"cfg.seed": list(SEEDS), keys.test("clean", "deterministic", "acc"): ws_acc})
    for t, err in mc_err.items():
        df[keys.test("clean", keys.mc_label(t), "acc")] = 1 - np.array(err)
    runs = mc_samples._with_errors(df, [1, 2, 4, 8])
    ws_high = stats.summarize(1 - ws_acc)["ci_high"]
    assert np.mean(mc_err[2]) <= ws_high < np.mean(mc_err[1])
    c = mc_samples.crossings(runs, [1, 2, 4, 8])
    assert c["within_ci"] == 2
    # paired MC - WS: T=2: (0.025, 0.025, 0.02) > 0 significantly; T=4: (0.015, 0.01, 0.01): still
    # significant; T=8: (0, 0, -0.005): CI reaches 0
    assert stats.paired_difference(mc_err[4], 1 - ws_acc)["ci_low"] > 0
    assert c["paired_ci"] == 8 and c["mean"] == 8
    # a curve that matches at T=2 and leaves again at T=4 matches only from T=8 on
    worse = runs.assign(**{"err/mc4": [0.2, 0.2, 0.2]})
    assert mc_samples.crossings(worse, [1, 2, 4, 8])["within_ci"] == 8
    one = mc_samples.crossings(runs.iloc[:1], [1, 2, 4, 8])
    assert one["within_ci"] == "n/a" and one["paired_ci"] == "n/a"


def test_mc_samples_build(tmp_path):
    rng = np.random.default_rng(2)
    sizes = [1, 2, 4, 8, 16, 32, 64, 128]
    rows = [
        {"cfg.method.name": "dropout", "cfg.dropout.p": p, "cfg.seed": seed}
        | _metrics(rng, ["deterministic", *map(keys.mc_label, sizes)], 0.88)
        for p in (0.1, 0.5)
        for seed in SEEDS
    ]
    section = mc_samples.build(pd.DataFrame(rows), tmp_path)
    assert section.figures == ["error_vs_T"] and (tmp_path / "error_vs_T.png").exists()
    crossing = pd.read_csv(tmp_path / "crossing.csv")
    assert list(crossing["p"]) == [0.1, 0.5]
    assert "MC T=128 - WS" in crossing and mc_samples.CROSS_PAIRED in crossing
    assert "not significantly worse" in mc_samples.CROSS_PAIRED
    curve = pd.read_csv(tmp_path / "error_vs_T.csv")
    assert len(curve) == 2 * (1 + len(sizes))
    # records without temperature scaling: no TS column or row, one line that says so
    assert not any("temperature-scaled" in c for c in curve.columns)
    omitted = [ln for ln in section.results if ln.startswith("Temperature-scaled weight scaling")]
    assert len(omitted) == 1 and "omitted" in omitted[0]


def test_mc_samples_temperature_scaled_weight_scaling(tmp_path):
    """With ``deterministic_ts`` (and ``mc<T>_ts`` at the headline T) in the records: MC NLL at every
    T minus the temperature-scaled deterministic pass, paired by seed (hand-computed)."""
    rng = np.random.default_rng(5)
    sizes = [1, 2, 4, 8]
    rows = []
    for p in (0.1, 0.5):
        for seed in SEEDS:
            row = {"cfg.method.name": "dropout", "cfg.dropout.p": p, "cfg.seed": seed}
            row |= {"cfg.eval.mc_samples": 8}
            row |= _metrics(rng, ["deterministic", *map(keys.mc_label, sizes)], 0.88)
            for label in ("deterministic", "mc8"):
                for m in ("acc", "nll"):
                    shift = -0.05 - 0.01 * seed if m == "nll" else 0.0
                    row[keys.test("clean", keys.ts_label(label), m)] = (
                        row[keys.test("clean", label, m)] + shift
                    )
            rows.append(row)
    df = pd.DataFrame(rows)
    section = mc_samples.build(df, tmp_path)
    curve = pd.read_csv(tmp_path / "error_vs_T.csv")
    column = "NLL: MC - weight scaling, temperature-scaled"
    assert column in curve
    assert len(curve) == 2 * (1 + 1 + len(sizes) + 1)  # WS, WS-TS, every T, MC-TS at T=8
    runs = df[df["cfg.dropout.p"] == 0.1]
    nll = lambda label: runs[keys.test("clean", label, "nll")].to_numpy()  # noqa: E731
    d = stats.paired_difference(nll("mc8"), nll("deterministic_ts"))
    row = curve[(curve["p"] == 0.1) & (curve["evaluation"] == "MC dropout") & (curve["T"] == "8")]
    assert row[column].item() == common.fmt_paired(d, 4)
    both = stats.paired_difference(nll("mc8_ts"), nll("deterministic_ts"))
    scaled = curve[(curve["p"] == 0.1) & (curve["evaluation"] == "MC dropout, temperature-scaled")]
    assert scaled[column].item() == common.fmt_paired(both, 4)
    assert (
        curve.loc[curve["evaluation"] == "weight scaling, temperature-scaled", "T"] == "-"
    ).all()
    line = next(ln for ln in section.results if ln.startswith("p=0.1: NLL of MC T=8 minus"))
    assert f"): {common.fmt_paired(d, 4)}, paired over 3 seeds" in line
    assert f"both temperature-scaled, MC T=8 - weight scaling: {common.fmt_paired(both, 4)}" in line
    assert not any(ln.startswith("Temperature-scaled weight scaling") for ln in section.results)


def test_headline_t_comes_from_the_records(tmp_path):
    """Runs evaluated with eval.mc_samples=16: the builders read ``mc16`` and say T=16."""
    section = mask_distributions.build(_mask_distribution_runs(16), tmp_path / "masks")
    summary = pd.read_csv(tmp_path / "masks" / "summary.csv")
    assert "acc (mc16)" in summary and not any("32" in c for c in summary.columns)
    assert any(", MC T=16, accuracy: bernoulli " in line for line in section.results)

    rng = np.random.default_rng(3)
    rows = []
    for seed in SEEDS:
        for p in (0.1, 0.5):
            for bn, sites in ((False, "[hidden]"), (True, "[hidden]"), (True, "[head]")):
                rows.append(
                    {"cfg.method.name": "dropout", "cfg.seed": seed, "cfg.eval.mc_samples": 16}
                    | {"cfg.dropout.p": p, "cfg.dropout.scale": "inverted"}
                    | {"cfg.model.batchnorm": bn, "cfg.model.dropout_sites": sites}
                    | {"record": RunRecord(tmp_path / "no_record")}
                    | _metrics(
                        rng, ["ws_off", "ws_on", "deterministic", "bn_recomputed", "mc16"], 0.9
                    )
                )
    section = magnitude.build(pd.DataFrame(rows), tmp_path / "magnitude")
    assert section.figures == ["weight_scaling", "batchnorm"]
    table = pd.read_csv(tmp_path / "magnitude" / "weight_scaling.csv")
    assert "mc16 acc" in table and "mc16" in pd.read_csv(tmp_path / "magnitude" / "batchnorm.csv")
    assert sum(", MC T=16 " in line for line in section.results) == 4  # (sites, p) of the BN runs


def test_mc_and_prefix_sizes_parse_the_keys():
    df = pd.DataFrame(
        {
            keys.test("clean", keys.mc_label(8), "acc"): [0.9],
            keys.test("clean", keys.mc_label(2), "acc"): [0.8],
            keys.test("clean", keys.mc_label(4), "acc"): [np.nan],  # no value in any run
            keys.test("clean", keys.mc_label(16), "nll"): [0.3],
            keys.test("clean", keys.ts_label(keys.mc_label(32)), "acc"): [0.9],
            keys.test("rotate_3", keys.mc_label(64), "acc"): [0.5],
            keys.test("clean", keys.prefix_label(3), "acc"): [0.7],
            keys.test("clean", keys.prefix_label(2), "acc"): [0.6],
            keys.test("clean", keys.prefix_label(2), "nll"): [0.6],
            keys.test("clean", keys.member_label(1), "acc"): [0.5],
        }
    )
    assert common.mc_sizes(df) == mc_samples.mc_sizes(df) == [2, 8]
    assert common.mc_sizes(df, nonempty=False) == [2, 4, 8]
    assert common.mc_sizes(df, "nll") == [16]
    assert common.mc_sizes(df, set_name="rotate_3") == [64]
    assert ensemble_view._prefix_sizes(df, "acc") == [2, 3]
    assert ensemble_view._prefix_sizes(df, "ece") == []


def _ensemble_view_runs() -> pd.DataFrame:
    """Two architectures x 3 seeds: plain, dropout (MC T = 1, 2, 4, 8, 32), the ensemble objective,
    subnets K = 1, 2, 4, 8 and an ensemble of 4 (with its first 1-3 members)."""
    rng = np.random.default_rng(4)
    rows = []

    def evaluation(label: str, acc: float, members: int) -> dict[str, float]:
        row = {
            keys.test("clean", label, "acc"): acc + rng.normal(0, 0.004),
            keys.test("clean", label, "nll"): 1.2 - acc + rng.normal(0, 0.004),
            keys.test("clean", label, "ece"): abs(rng.normal(0.03, 0.005)),
        }
        if members > 1:
            member = acc - 0.02 + rng.normal(0, 0.004)
            row[keys.test("clean", label, "member_acc")] = member
            row[keys.test("clean", label, "member_nll")] = 1.25 - member
            row[keys.test("clean", label, "disagreement")] = (1 - member) * (
                0.4 + 0.1 * np.log2(members) + rng.normal(0, 0.02)
            )
        return row

    for data, model in (("mnist1d", "mlp"), ("mnist1d", "cnn1d")):
        for seed in SEEDS:
            base = {"cfg.data.name": data, "cfg.model.name": model, "cfg.seed": seed}
            base |= {"cfg.eval.mc_samples": 32, "cfg.method.objective": None}
            rows.append(base | {"cfg.method.name": "plain"} | evaluation("deterministic", 0.8, 1))
            for objective in (None, "ensemble"):
                row = base | {"cfg.method.name": "dropout", "cfg.method.objective": objective}
                row |= evaluation("deterministic", 0.84, 1)
                for t in (1, 2, 4, 8, 32):
                    row |= evaluation(keys.mc_label(t), 0.82 + 0.005 * np.log2(t), t)
                rows.append(row)
            for k in (1, 2, 4, 8):
                row = base | {"cfg.method.name": "subnets", "cfg.method.k": k}
                rows.append(row | evaluation("members", 0.81 + 0.006 * np.log2(k), k))
            row = base | {"cfg.method.name": "ensemble", "cfg.method.k": 4}
            for m in (1, 2, 3):
                row |= evaluation(keys.prefix_label(m), 0.82 + 0.01 * np.log2(m), m)
            rows.append(row | evaluation("members", 0.84, 4))
    return pd.DataFrame(rows)


def test_ensemble_view_decomposition_and_matched_diversity(tmp_path):
    df = _ensemble_view_runs()
    section = ensemble_view.build(df, tmp_path)
    assert section.figures == ["k_spectrum", "decomposition", "members_curve", "diversity_plane"]
    for stem in section.figures:
        assert (tmp_path / f"{stem}.png").stat().st_size > 10_000
    assert section.tables == ["decomposition", "summary"]
    # the decomposition: deterministic pass - plain, + MC - deterministic, their sum; one mask apart
    drop = df[(df["cfg.method.name"] == "dropout") & df["cfg.method.objective"].isna()]
    drop = drop[drop["cfg.model.name"] == "mlp"]
    plain = df[(df["cfg.method.name"] == "plain") & (df["cfg.model.name"] == "mlp")]
    parts = ensemble_view.decomposition_parts(drop, plain, 32, "nll")
    names = list(parts)
    assert "regulari" not in " ".join(names)
    assert names[0].startswith("deterministic (weight-scaled) pass") and "MC T=32" in names[1]
    np.testing.assert_allclose(parts[names[0]] + parts[names[1]], parts[names[2]])
    det = drop[keys.test("clean", "deterministic", "nll")].to_numpy()
    ref = plain[keys.test("clean", "deterministic", "nll")].to_numpy()
    np.testing.assert_allclose(parts[names[0]], det - ref)
    assert names[3].startswith("reference: one random subnetwork (a noisy evaluation")
    table = pd.read_csv(tmp_path / "decomposition.csv")
    assert len(table) == 2 * 2 * 4  # architecture x metric x term
    assert not table["term"].str.contains("regulari").any()
    # matched member counts: MC T = C against C trained members (C = 2, 4, 8; 3 has no MC)
    points = ensemble_view.matched_points(
        df.assign(kind=[ensemble_view._kind(r) for _, r in df.iterrows()]), "mnist1d", "mlp"
    )
    counts = {(method, c) for method, c, _, _ in points}
    assert {("dropout", 2), ("dropout", 4), ("dropout", 8)} <= counts
    assert ("ensemble", 4) in counts and ("ensemble", 3) not in counts
    assert ("dropout", 32) not in counts and ("subnets", 1) not in counts
    line = next(ln for ln in section.results if "MNIST-1D MLP: disagreement / (1 - member" in ln)
    ens = df[(df["cfg.method.name"] == "ensemble") & (df["cfg.model.name"] == "mlp")]
    nd = ens[keys.test("clean", "members", "disagreement")] / (
        1 - ens[keys.test("clean", "members", "member_acc")]
    )
    s = stats.summarize(nd.to_numpy())
    assert f"ensemble K=4 {s['mean']:.3f} [{s['ci_low']:.3f}, {s['ci_high']:.3f}]" in line
    assert "dropout MC T=4 " in line and "(ensemble - dropout, paired by seed: " in line
