"""Per-layer activation statistics of a study's runs (``magnitudes.json``) as one long table."""

from __future__ import annotations

import numpy as np
import pandas as pd

RUN_COLUMNS = {
    "cfg.method.name": "method",
    "cfg.seed": "seed",
    "cfg.dropout.p": "p",
    "cfg.dropout.scale": "scale",
    "cfg.model.batchnorm": "batchnorm",
    "cfg.model.dropout_sites": "sites",
    "cfg.model.name": "model",
}


def magnitude_rows(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, recorded layer row) with the run's method/seed/p/scale/... columns."""
    frames = []
    for _, run in df.iterrows():
        m = run["record"].magnitudes()
        if m is None:
            continue
        for col, name in RUN_COLUMNS.items():
            m[name] = run.get(col, np.nan)
        frames.append(m)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
