"""The readings study's pre-registered decision rule, on synthetic records whose outcome is fixed
by construction: the effects are 10-50 standard errors away from every margin, so each verdict
is certain up to the stated noise, not tuned to what the code returned."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dropens import keys
from dropens.reporting.readings import analyse, verdicts
from dropens.study import load_study_file

SEEDS = range(10)
NOISE = 0.001  # per-seed noise of every metric; the paired SE of a difference is ~0.0005
T = 64


@pytest.fixture(scope="module")
def margins() -> dict[str, float]:
    return load_study_file("readings").predictions["margins"]


def records(mc_nll_gain: float, explicit_acc_loss: float, with_explicit: bool = True):
    """Ten seeds of plain / dropout / explicit runs of one arm. ``mc_nll_gain``: how much lower
    MC-64's calibrated NLL is than the deterministic pass's; ``explicit_acc_loss``: how much
    less accurate the mask-free penalty is than dropout."""
    rng = np.random.default_rng(0)
    rows = []
    for seed in SEEDS:
        base_acc, base_nll = (
            0.90 + 0.01 * rng.standard_normal(),
            0.30 + 0.02 * rng.standard_normal(),
        )

        def noisy(v: float) -> float:
            return v + NOISE * rng.standard_normal()

        common = {"cfg.seed": seed, "cfg.data.name": "mnist1d", "cfg.model.name": "mlp"}
        common["cfg.eval.mc_samples"] = T
        det, det_ts = "deterministic", keys.ts_label("deterministic")
        mc, mc_ts = keys.mc_label(T), keys.ts_label(keys.mc_label(T))
        dropout = {
            keys.test("clean", det, "acc"): noisy(base_acc + 0.03),
            keys.test("clean", det_ts, "nll"): noisy(base_nll - 0.05),
            keys.test("clean", mc, "acc"): noisy(base_acc + 0.03),
            keys.test("clean", mc_ts, "nll"): noisy(base_nll - 0.05 - mc_nll_gain),
        }
        rows.append({**common, "cfg.method.name": "dropout", **dropout})
        rows.append(
            {
                **common,
                "cfg.method.name": "plain",
                keys.test("clean", det, "acc"): noisy(base_acc),
                keys.test("clean", det_ts, "nll"): noisy(base_nll),
            }
        )
        if with_explicit:
            rows.append(
                {
                    **common,
                    "cfg.method.name": "explicit",
                    keys.test("clean", det, "acc"): noisy(base_acc + 0.03 - explicit_acc_loss),
                    keys.test("clean", det_ts, "nll"): noisy(base_nll - 0.05),
                }
            )
    return pd.DataFrame(rows)


def verdict_of(df: pd.DataFrame, margins) -> pd.Series:
    table = verdicts(analyse(df, margins))
    assert len(table) == 1
    return table.iloc[0]


def test_no_averaging_gain_and_a_recovered_gain_read_as_regularizer(margins):
    v = verdict_of(records(mc_nll_gain=0.0, explicit_acc_loss=0.0), margins)
    assert v["verdict"] == "regularizer", v.to_dict()
    assert v["regularizer tests (a-d) rejected"] == "abcd"


def test_a_calibrated_averaging_gain_and_no_recovery_read_as_ensemble(margins):
    # 0.1 nats (5x the 0.02 margin) and 0.05 accuracy (5x the 0.01 margin)
    v = verdict_of(records(mc_nll_gain=0.1, explicit_acc_loss=0.05), margins)
    assert v["verdict"] == "ensemble", v.to_dict()
    assert v["ensemble tests (e-f) rejected"] == "ef"


def test_an_effect_that_sits_on_the_margin_decides_nothing(margins):
    # an averaging gain of exactly the NLL margin: neither equivalent nor beyond it
    v = verdict_of(records(mc_nll_gain=margins["nll"], explicit_acc_loss=0.0), margins)
    assert v["verdict"] == "not decided", v.to_dict()
    assert "Q2 NLL equivalent" in v["not shown"] and "Q2 NLL better beyond margin" in v["not shown"]


def test_an_arm_without_its_mask_free_runs_gets_no_verdict(margins):
    v = verdict_of(records(0.0, 0.0, with_explicit=False), margins)
    assert v["verdict"].startswith("incomplete") and "cdf" in v["verdict"], v.to_dict()
