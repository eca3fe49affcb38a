"""The family study's pre-registered decision rule and figures, on synthetic records whose outcome is
fixed by construction.

Every per-seed quantity is its constructed value plus a zero-mean noise pattern over the five seeds
(a permutation of -2..2 times a scale), so the sample mean *is* the constructed value (every
interval covers it) and the spread puts each effect at least ~7 standard errors from every
margin: each verdict is certain, not tuned to what the code returned."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dropens import keys
from dropens.reporting import BUILDERS, family, family_cells
from dropens.study import load_study_file

SEEDS = range(5)  # the study's seeds: 5 pairs, 4 degrees of freedom
PATTERN = np.array([-2.0, -1.0, 0.0, 1.0, 2.0])  # zero mean over the seeds
NLL_NOISE = 0.001  # paired SE of an NLL quantity ~0.0007-0.0014
ND_NOISE = 0.005  # SE of rho ~0.007
ND_ENSEMBLE = 0.5
DET, MC, MEMBERS = "deterministic", keys.mc_label(family.K), "members"


@pytest.fixture(scope="module")
def margins() -> dict[str, float]:
    return {k: float(v) for k, v in load_study_file("family").predictions["margins"].items()}


def noise(seed: int, which: int, scale: float) -> float:
    """Seed ``seed``'s entry of the ``which``-th permutation of :data:`PATTERN`."""
    return float(np.roll(PATTERN, which)[seed] if which < 5 else PATTERN[::-1][seed]) * scale


def run(arm: str, method: str, seed: int, metrics: dict[str, float], **cfg) -> dict:
    data, model = {
        "mnist1d_cnn1d": ("mnist1d", "cnn1d"),
        "fashion_mnist_cnn2d": ("fashion_mnist", "cnn2d"),
    }[arm]
    row = {
        "cfg.seed": seed,
        "cfg.data.name": data,
        "cfg.model.name": model,
        "cfg.method.name": method,
        "cfg.eval.mc_samples": family.K,
        "wall_s": 10.0 + seed,
        **{f"cfg.method.{k}": v for k, v in cfg.items()},
    }
    return {**row, **metrics}


def evaluation(label: str, acc: float, nll: float, nll_ts: float, nd: float | None = None):
    """The clean-test metrics of one label (and its ``_ts``); ``nd``: members' normalized
    disagreement (disagreement and member accuracy written so that their ratio is ``nd``)."""
    ts = keys.ts_label(label)
    out = {
        keys.test("clean", label, "acc"): acc,
        keys.test("clean", label, "nll"): nll,
        keys.test("clean", label, "ece"): 0.03 + 0.1 * (nll - 0.3),  # varies over seeds
        keys.test("clean", ts, "nll"): nll_ts,
        keys.test("clean", ts, "ece"): 0.01,
    }
    if nd is not None:
        member_acc = acc - 0.02
        out[keys.test("clean", label, "member_acc")] = member_acc
        out[keys.test("clean", label, "disagreement")] = nd * (1.0 - member_acc)
        out[keys.test("clean", label, "mi")] = 0.1 * nd
    return out


def records(
    rho: float,
    g_dropout: float,
    g_ensemble: float,
    arm: str = "mnist1d_cnn1d",
    seeds=SEEDS,
    ensemble_seeds=SEEDS,
) -> pd.DataFrame:
    """plain, dropout and ensemble runs of one arm with F1's ratio ``rho`` and F2's gains."""
    rng = np.random.default_rng(0)
    rows = []
    for seed in seeds:
        base_acc, base = 0.9 + 0.01 * rng.standard_normal(), 0.3 + 0.03 * rng.standard_normal()
        det_ts = base - 0.05 + noise(seed, 1, NLL_NOISE)
        info = {"n_params": 1e4, "train_flops_per_example": 2e5}
        rows.append(
            run(arm, "plain", seed, {**evaluation(DET, base_acc, base + 0.02, base), **info})
        )
        nd_dropout = rho * ND_ENSEMBLE + noise(seed, 0, ND_NOISE)
        mc_ts = det_ts + g_dropout + noise(seed, 2, NLL_NOISE)
        dropout = {
            **evaluation(DET, base_acc + 0.01, det_ts + 0.02, det_ts),
            **evaluation(MC, base_acc + 0.01, mc_ts + 0.02, mc_ts, nd=nd_dropout),
            **info,
        }
        rows.append(run(arm, "dropout", seed, dropout))
        if seed in ensemble_seeds:
            ens_ts = base + g_ensemble + noise(seed, 5, NLL_NOISE)
            ensemble = evaluation(MEMBERS, base_acc + 0.02, ens_ts + 0.01, ens_ts, nd=ND_ENSEMBLE)
            rows.append(
                run(
                    arm,
                    "ensemble",
                    seed,
                    {**ensemble, "n_params": 4e4, "train_flops_per_example": 8e5},
                    k=4,
                )
            )
    return pd.DataFrame(rows)


def verdict_of(df: pd.DataFrame, margins) -> tuple[pd.Series, pd.DataFrame]:
    table = family.analyse(df, margins)
    v = family.verdicts(df, table, margins)
    assert len(v) == 1
    return v.iloc[0], table.set_index("qid")


def covers(row: pd.Series, value: float) -> bool:
    return (
        row["ci95_low"] <= value <= row["ci95_high"]
        and row["ci90_low"] <= value <= row["ci90_high"]
    )


CASES = {  # (rho, g(dropout), g(ensemble)) -> verdict, tests that reject
    # dropout's samples as diverse as the members (relative to error) and gaining as much
    "ensemble-like": ((0.9, -0.1, -0.1), "cde"),
    # samples near one network, no calibrated gain from averaging them; the ensemble gains
    "regularizer-like": ((0.05, 0.0, -0.1), "abc"),
    # between the ratio margins, and half the ensemble's gain: neither reading's tests reject
    "not decided": ((0.375, -0.05, -0.1), "c"),
}


@pytest.mark.parametrize("expected", list(CASES))
def test_verdict_and_intervals_by_construction(margins, expected):
    (rho, g_d, g_e), rejected = CASES[expected]
    v, table = verdict_of(records(rho, g_d, g_e), margins)
    assert v["verdict"] == expected, v.to_dict()
    got = v["regularizer tests (abc) rejected"] + v["ensemble tests (de) rejected"]
    assert got.replace("none", "") == rejected, v.to_dict()
    for qid, value in (
        ("F1 rho", rho),
        ("F2 g(dropout)", g_d),
        ("F2 g(ensemble)", g_e),
        ("F2 g(dropout) - g(ensemble)", g_d - g_e),
    ):
        row = table.loc[qid]
        assert row["n"] == len(SEEDS)
        assert row["mean"] == pytest.approx(value, abs=1e-9), qid
        assert covers(row, value), (qid, row.to_dict())
    # Holm within the arm: every adjusted p is at least its raw p
    for t in family.DECIDING:
        row = table.loc[t.quantity]
        assert row[f"holm_{t.letter}"] >= row[f"p_{t.letter}"] - 1e-15


def test_not_decided_names_the_intervals_on_a_margin(margins):
    # rho exactly on the upper margin: its 90% interval contains 0.5
    v, _ = verdict_of(records(margins["ratio_high"], -0.1, -0.1), margins)
    assert v["verdict"] == "not decided", v.to_dict()
    assert "rho 90% CI" in v["straddles a margin"] and "contains 0.5" in v["straddles a margin"]


def test_an_ensemble_without_every_seed_gives_no_verdict(margins):
    v, table = verdict_of(records(0.9, -0.1, -0.1, ensemble_seeds=range(4)), margins)
    assert v["verdict"].startswith("incomplete"), v.to_dict()
    assert "ensemble lacks seed(s) [4]" in v["verdict"]
    assert table.loc["F1 rho", "n"] == 4  # the paired seeds are still analysed


def test_an_arm_without_its_ensemble_gives_no_verdict(margins):
    v, _ = verdict_of(records(0.9, -0.1, -0.1, ensemble_seeds=()), margins)
    assert v["verdict"].startswith("incomplete") and "no test for acde" in v["verdict"], v
    assert v["regularizer tests (abc) rejected"] == "none"  # b alone is not a verdict


def test_missing_mc4_ts_is_named(margins):
    df = records(0.05, 0.0, -0.1)
    df = df.drop(columns=[c for c in df if f"/{keys.ts_label(MC)}/" in c])
    v, _ = verdict_of(df, margins)
    assert v["verdict"].startswith("incomplete") and "eval.mc_samples must be 4" in v["verdict"]


def test_the_study_records_mc4_after_temperature_scaling():
    """F2 reads dropout's ``mc4_ts``: temperature scaling covers the MC headline
    (``eval.mc_samples``) only, so the study's runs must use T = 4 as their headline."""
    study = load_study_file("family")
    headline = [o.split("=", 1)[1] for o in study.overrides if o.startswith("eval.mc_samples=")]
    assert headline and int(headline[-1]) == family.K
    smoke = [o.split("=", 1)[1] for o in study.smoke if o.startswith("eval.mc_samples=")]
    assert not smoke or int(smoke[-1]) == family.K


def full_records() -> pd.DataFrame:
    """Both arms, every cell but packed (and masksembles S=6 on the Fashion arm); the Fashion arm
    with two shifted sets and OOD AUROCs."""
    df = records(0.4, -0.03, -0.1)
    df = pd.concat([df, records(0.6, -0.08, -0.1, arm="fashion_mnist_cnn2d")], ignore_index=True)
    extra = []
    for arm in family.ARMS:
        for seed in SEEDS:
            acc, nll = 0.9 + 0.002 * seed, 0.28 + 0.003 * seed
            cells = [
                ("subnets", {"k": 4}, 0.2, 1e4, 2e5),
                ("batchensemble", {"k": 4}, 0.3, 1.1e4, 8e5),
            ]
            cells += [("mimo", {"k": 4}, 0.45, 1.05e4, 8.1e5)]
            for s in family_cells.SCALES:
                if not (arm.startswith("fashion") and s == 6.0):
                    cells.append(("masksembles", {"k": 4, "scale": s}, 0.1 * s, 1e4, 2e5))
            for method, cfg, nd, params, flops in cells:
                m = evaluation(MEMBERS, acc, nll, nll - 0.01 - 0.005 * nd, nd=nd + 0.01 * seed)
                info = {"n_params": params, "train_flops_per_example": flops}
                extra.append(run(arm, method, seed, {**m, **info}, **cfg))
    df = pd.concat([df, pd.DataFrame(extra)], ignore_index=True)
    fashion = df["cfg.data.name"] == "fashion_mnist"
    for label in (DET, MC, MEMBERS):
        for s in ("rotate_3", "gaussian_noise_5"):
            df.loc[fashion, keys.test(s, label, "acc")] = 0.6
            df.loc[fashion, keys.test(s, label, "nll")] = 1.2
            df.loc[fashion, keys.test(s, keys.ts_label(label), "nll")] = 1.0
        df.loc[fashion, keys.test("ood", label, "auroc_entropy")] = 0.8
        df.loc[fashion, keys.test("ood", label, "auroc_mi")] = 0.85
    return df


def test_figures_and_tables_are_written_with_missing_cells(tmp_path):
    assert BUILDERS["family"] is family.build
    section = family.build(full_records(), tmp_path)
    for stem in load_study_file("family").figures:
        assert stem in section.figures
        assert (tmp_path / f"{stem}.png").stat().st_size > 10_000, stem
        assert (tmp_path / f"{stem}.pdf").exists(), stem
    for stem in ("summary", "paired", "verdict"):
        assert (tmp_path / f"{stem}.csv").exists() and (tmp_path / f"{stem}.md").exists()
    text = "\n".join(section.results)
    assert "Missing cells" in text and "Packed-Ensembles K=4" in text
    assert "Fashion-MNIST CNN [16, 32]: masksembles S=6" in text
    assert "Pre-registration:" in text and text.count("verdict ") >= 2
    summary = pd.read_csv(tmp_path / "summary.csv")
    fashion = summary[summary["arm"] == "fashion_mnist_cnn2d"]
    assert (
        (fashion.loc[fashion["cell"] == f"ensemble of {family.K} networks", "shift NLL"])
        .str.startswith("1.2000")
        .all()
    )
    packed = summary[summary["cell"] == "Packed-Ensembles K=4"]
    assert len(packed) == 2 and (packed["seeds"] == 0).all()


def test_figures_survive_an_arm_with_one_cell(tmp_path):
    df = records(0.4, -0.03, -0.1, seeds=[0], ensemble_seeds=())
    df = df[df["cfg.method.name"] == "plain"]
    section = family.build(df, tmp_path)
    assert len(section.figures) == 3
    assert "incomplete" in "\n".join(section.results)
