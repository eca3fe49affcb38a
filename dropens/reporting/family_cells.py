"""The cells of the ``family`` study (:mod:`dropens.reporting.family`): one method's evaluation
each (``plain``, dropout's deterministic pass and MC with T = 4, ``subnets``, ``masksembles`` per
scale, ``batchensemble``, ``mimo``, ``packed``, ``ensemble``), with the legend text, colour and
marker the figures use, and how a cell's runs are found among the records."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from dropens import keys
from dropens.reporting.common import PALETTE

ARMS = {
    "mnist1d_cnn1d": "MNIST-1D CNN",
    "fashion_mnist_cnn2d": "Fashion-MNIST CNN [16, 32]",
}
K = 4  # members on every side: dropout's MC samples, masks, subnetworks, networks
SCALES = (1.5, 2.0, 2.5, 6.0)  # the masksembles scales of experiments/family.yaml
MC = keys.mc_label(K)  # mc4
DET, MEMBERS = "deterministic", "members"


@dataclass(frozen=True)
class Cell:
    """One method's evaluation, a point of the figures and a row of the summary."""

    key: str  # short id: "dropout_mc4", "masksembles_S2"
    method: str  # cfg.method.name
    label: str  # the metric label of its prediction (deterministic, mc4, members)
    name: str  # legend text
    color: str
    marker: str
    scale: float | None = None  # masksembles only

    @property
    def one_network(self) -> bool:
        """One prediction per input (no members): ND = 0 by definition."""
        return self.label == DET


MASKSEMBLES_COLORS = ("#c9b8e8", "#9d7fd4", "#7052b8", "#44237f")  # light -> dark with S


def masksembles_cell(scale: float, color: str = "#7052b8") -> Cell:
    return Cell(
        f"masksembles_S{scale:g}",
        "masksembles",
        MEMBERS,
        f"masksembles S={scale:g}",
        color,
        "D",
        float(scale),
    )


CELLS = (
    Cell("plain", "plain", DET, "plain (one network)", PALETTE["plain"], "o"),
    Cell("dropout_det", "dropout", DET, "dropout, deterministic", PALETTE["dropout"], "p"),
    Cell("dropout_mc4", "dropout", MC, f"dropout, MC T={K}", PALETTE["dropout"], "s"),
    Cell("subnets", "subnets", MEMBERS, f"subnets K={K}", PALETTE["subnets"], "^"),
    *(masksembles_cell(s, c) for s, c in zip(SCALES, MASKSEMBLES_COLORS)),
    Cell("batchensemble", "batchensemble", MEMBERS, f"BatchEnsemble K={K}", "#d55e00", "v"),
    Cell("mimo", "mimo", MEMBERS, f"MIMO K={K}", "#ca9161", "P"),
    Cell("packed", "packed", MEMBERS, f"Packed-Ensembles K={K}", "#cc78bc", "X"),
    Cell("ensemble", "ensemble", MEMBERS, f"ensemble of {K} networks", PALETTE["ensemble"], "*"),
)

# per-seed columns of :func:`per_seed` (summary statistics of each)
METRICS = (
    "acc",
    "nll",
    "nll_ts",
    "ece",
    "ece_ts",
    "nd",
    "mi",
    "n_params",
    "flops",
    "wall_s",
    "shift_acc",
    "shift_nll",
    "shift_nll_ts",
    "auroc_entropy",
    "auroc_mi",
)


def cells_of(df: pd.DataFrame) -> list[Cell]:
    """:data:`CELLS`, plus a masksembles cell for any scale the records have beyond :data:`SCALES`."""
    scales = set()
    if "cfg.method.scale" in df:
        masks = df[df["cfg.method.name"] == "masksembles"]
        scales = {float(s) for s in masks["cfg.method.scale"].dropna()}
    extra = sorted(s for s in scales if not any(np.isclose(s, x) for x in SCALES))
    if not extra:
        return list(CELLS)
    cells = list(CELLS)
    at = max(i for i, c in enumerate(cells) if c.method == "masksembles") + 1
    return cells[:at] + [masksembles_cell(s) for s in extra] + cells[at:]


def arms_of(df: pd.DataFrame) -> list[str]:
    """The arms present, known ones first."""
    present = set(df["arm"])
    return [a for a in ARMS if a in present] + sorted(present - set(ARMS))


def runs_of(runs: pd.DataFrame, cell: Cell) -> pd.DataFrame:
    """The runs of ``cell`` (one per seed, the first if a seed repeats)."""
    chosen = runs[runs["cfg.method.name"] == cell.method]
    if cell.scale is not None:
        scale = chosen.get("cfg.method.scale", pd.Series(np.nan, index=chosen.index))
        chosen = chosen[np.isclose(scale.astype(float), cell.scale)]
    return chosen.drop_duplicates("cfg.seed")
