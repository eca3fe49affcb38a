"""Experiment tracking lives here and only here (STYLE.md 2): W&B, CSV or nothing.

W&B runs offline unless ``logger.mode`` (default ``$WANDB_MODE``, else ``offline``) says ``online``.
Its files go inside the run record (``<run dir>/wandb/``), so a record carries its own W&B run
(``wandb sync <run dir>/wandb/offline-run-*`` uploads it later). The run group is the study, the job
type the method, the name readable (method, p, seed). W&B failing — no network, a bad mode, a
crash of its service — never stops training: a warning, then CSV logging into the record.
``wandb`` is imported lazily, only when the W&B logger is asked for.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from lightning.pytorch.loggers import CSVLogger, Logger

from dropens import keys
from dropens.errors import check_choice
from dropens.results import uses_dropout

LOGGERS = ("wandb", "csv", "none")


def run_name(config: Mapping[str, Any]) -> str:
    """Readable W&B run name, e.g. ``dropout p=0.1 seed=0`` or ``subnets k=4 p=0.1 seed=1``."""
    method = config["method"]
    parts = [method["name"]]
    if "k" in method:
        parts.append(f"k={method['k']}")
    if uses_dropout(config):
        parts.append(f"p={config['dropout']['p']}")
    parts.append(f"seed={config['seed']}")
    return " ".join(parts)


def build_logger(config: Mapping[str, Any], run_dir: Path) -> Logger | None:
    """The Lightning logger of ``config.logger`` writing under ``run_dir`` (``None`` for ``none``).

    For W&B the run is started here (not lazily at the first log), so that a failure is caught
    before training and replaced by a CSV logger with a warning.
    """
    cfg = config["logger"]
    check_choice("logger.name", cfg["name"], LOGGERS)
    if cfg["name"] == "none":
        return None
    if cfg["name"] == "wandb":
        try:
            return _wandb_logger(config, run_dir)
        except Exception as err:
            warnings.warn(
                f"W&B logger failed ({type(err).__name__}: {err}); logging to CSV in {run_dir}",
                stacklevel=2,
            )
    return CSVLogger(save_dir=str(run_dir), name="csv", version="")


def _wandb_logger(config: Mapping[str, Any], run_dir: Path) -> Logger:
    import wandb  # lazy: only runs that ask for W&B pay for importing it
    from lightning.pytorch.loggers import WandbLogger

    cfg = config["logger"]
    check_choice("logger.mode", cfg["mode"], ("offline", "online", "disabled"))
    logger = WandbLogger(
        project=cfg["project"],
        entity=cfg.get("entity"),
        save_dir=str(run_dir),
        name=run_name(config),
        group=config["study"],
        job_type=config["method"]["name"],
        tags=list(cfg.get("tags") or []),
        mode=cfg["mode"],
        settings=wandb.Settings(init_timeout=60, silent=True, console="off"),
    )
    logger.experiment.config.update(dict(config), allow_val_change=True)  # starts the run now
    return logger


def log_summary(logger: Logger | None, metrics: Mapping[str, float]) -> None:
    """Put the final metrics in the W&B run summary (no-op for other loggers); never raises."""
    if logger is None or type(logger).__name__ != "WandbLogger":
        return
    try:
        logger.experiment.summary.update(dict(metrics))
    except Exception as err:
        warnings.warn(
            f"W&B summary update failed ({err}); the local record is complete", stacklevel=2
        )


def headline_key(arrays: Mapping[str, Any]) -> str | None:
    """The stored predictions that represent the run: its ensemble if it has one, else deterministic."""
    for suffix in ("members", "mc", "deterministic"):
        keys = [k for k in arrays if k.endswith(f"/{suffix}") and not k.startswith("labels/")]
        if keys:
            return keys[0]
    return None


def log_run_figures(
    logger: Logger | None,
    metrics: Mapping[str, float],
    arrays: Mapping[str, Any],
    n_table: int = 64,
) -> None:
    """W&B only: a reliability diagram and the MC-samples curve as images, and a small predictions
    table (first ``n_table`` test examples: label, prediction, confidence, member disagreement).

    ``arrays``: ``{"<set>/<strategy>": member_probs [M, N, C], "labels/<set>": [N]}`` (the record's
    predictions). Never raises: a failure is a warning, the record is complete without it.
    """
    if logger is None or type(logger).__name__ != "WandbLogger":
        return
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import wandb

        from dropens.metrics.calibration import reliability

        key = headline_key(arrays)
        if key is None:
            return
        name = key.split("/")[0]
        members = arrays[key].float()
        probs = members.mean(0)
        labels = arrays[f"labels/{name}"].long()
        rel = reliability(probs, labels)
        fig, ax = plt.subplots(figsize=(4, 4))
        ok = (rel["count"] > 0).numpy()
        centers = (np.arange(len(ok)) + 0.5) / len(ok)
        # numpy for matplotlib (tensors trip NumPy 2's __array_wrap__)
        accuracy = rel["accuracy"].numpy()
        ax.bar(centers[ok], accuracy[ok], width=1 / len(ok), edgecolor="k", alpha=0.8)
        ax.plot([0, 1], [0, 1], "k--", lw=1)
        ax.set(
            xlabel="confidence",
            ylabel="accuracy",
            xlim=(0, 1),
            ylim=(0, 1),
            title=f"reliability: {key}",
        )
        images = {"figures/reliability": wandb.Image(fig)}
        plt.close(fig)
        sizes = keys.mc_sizes_of(set(metrics), "test", name)
        if sizes:
            fig, ax = plt.subplots(figsize=(4.5, 3.2))
            acc = [metrics[keys.test(name, keys.mc_label(t), "acc")] for t in sizes]
            ax.plot(sizes, acc, "o-", label="MC dropout")
            det = metrics.get(keys.test(name, "deterministic", "acc"))
            if det is not None:
                ax.axhline(det, ls="--", color="k", label="deterministic")
            ax.set(
                xscale="log",
                xlabel="MC samples T",
                ylabel="test accuracy",
                title="MC-samples curve",
            )
            ax.legend()
            images["figures/mc_curve"] = wandb.Image(fig)
            plt.close(fig)
        conf, pred = probs[:n_table].max(-1)
        dis = (members[:, :n_table].argmax(-1) != pred).float().mean(0)
        table = wandb.Table(
            columns=["index", "label", "prediction", "confidence", "member_disagreement"],
            data=[
                [i, int(labels[i]), int(pred[i]), float(conf[i]), float(dis[i])]
                for i in range(len(pred))
            ],
        )
        logger.experiment.log({**images, "predictions": table})
    except Exception as err:
        warnings.warn(f"W&B figures failed ({err}); the local record is complete", stacklevel=2)


def finish(logger: Logger | None) -> None:
    """Close the logger's run (flush W&B offline files); never raises."""
    if logger is None:
        return
    try:
        logger.finalize("success")
        if type(logger).__name__ == "WandbLogger":
            logger.experiment.finish()
    except Exception as err:
        warnings.warn(
            f"closing the logger failed ({err}); the local record is complete", stacklevel=2
        )
