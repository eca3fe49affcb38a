"""Analysis of a model trained anywhere: :func:`evaluate_model` gives a run record's metrics.

::

    import dropens
    dropens.convert(model)                               # its nn.Dropout -> dropens sites
    metrics = dropens.evaluate_model(model, (x_test, y_test))
    metrics["test/clean/mc32/ece"], metrics["test/clean/deterministic/acc"]

It is :func:`dropens.evaluation.evaluate` -- the function every training run records its
``metrics.json`` with -- behind a signature that takes what a user has at hand: tensors, a
``DataLoader`` of ``(x, y)`` batches, several named sets, or a dropens data module. So for the same
weights, data, evaluation settings and random state the keys and numbers are those of a run
record (tested against stored runs). Random masks (``mc``) are drawn from the global RNG, as in a
run: seed it (or restore a run checkpoint's ``dropens_rng_state`` with
:func:`dropens.rng.set_rng_state`) for reproducible numbers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from dropens import control
from dropens.errors import ConfigError
from dropens.evaluation import evaluate
from dropens.inference import DROPOUT_PROBES, has_dropout, inputs_and_labels, stacked_members

__all__ = ["default_strategies", "evaluate_model"]


def default_strategies(model: nn.Module, with_train_x: bool = False) -> tuple[str, ...]:
    """The evaluation plan the matching training method records: ``members`` for a stacked
    ensemble; deterministic, members, MC, a random subnetwork and the probes for a model with
    member masks (``subnets``); the same without members for a dropout model; the deterministic
    pass otherwise. ``bn_recomputed`` only ``with_train_x``."""
    if stacked_members(model) is not None:
        return ("members",)
    if not has_dropout(model):
        return ("deterministic",)
    probes = tuple(s for s in DROPOUT_PROBES if with_train_x or s != "bn_recomputed")
    family = {m.n_members for m in control.dropout_layers(model) if m.p > 0} - {None}
    members = ("members",) if family else ()
    return ("deterministic", *members, "mc", "single", *probes)


def _eval_sets(data: Any) -> tuple[dict[str, tuple[Tensor, Tensor]], Tensor | None]:
    """``({name: (x, y)}, train inputs or None)`` of whatever :func:`evaluate_model` was given."""
    from dropens.data.base import TensorDataModule

    if isinstance(data, TensorDataModule):
        if data.x_train is None:
            data.prepare_data()
            data.setup("fit")
        return dict(data.eval_sets()), data.x_train
    named = data if isinstance(data, Mapping) else {"clean": data}
    out = {}
    for name, value in named.items():
        x, y = inputs_and_labels(value, f"data[{name!r}]")
        if y is None:
            raise ConfigError(f"data[{name!r}] has no labels; evaluate_model needs (x, y)")
        if len(x) != len(y):
            raise ConfigError(f"data[{name!r}] has {len(x)} inputs but {len(y)} labels")
        out[str(name)] = (x, y.long())
    return out, None


def _default_eval() -> dict[str, Any]:
    from dropens.schema import _train_yaml

    return dict(_train_yaml()["eval"])


def evaluate_model(
    model: nn.Module,
    data: Any,
    *,
    strategies: Sequence[str] | None = None,
    mc_samples: int | None = None,
    mc_curve: Sequence[int] | None = None,
    n_bins: int | None = None,
    memory_budget_mb: float | None = None,
    train_x: Tensor | None = None,
    seed: int | None = None,
    exhaustive: bool = False,
) -> dict[str, float]:
    """Every metric a run record holds, for any classifier with dropens dropout (or none).

    Args:
        model: maps ``[N, *input_shape]`` to logits ``[N, C]`` (convert torch dropout first:
            :func:`dropens.convert`); its train/eval state and switches are restored after.
        data: ``(x, y)`` tensors, a ``DataLoader`` of ``(x, y)`` batches (concatenated), a mapping
            ``{set name: (x, y) | DataLoader}`` (keys ``test/<name>/...``; one unnamed set is
            ``clean``), or a dropens data module (its eval sets and training inputs).
        strategies: registered strategy names (:data:`dropens.inference.STRATEGIES`); default
            :func:`default_strategies` (what the matching training method records).
        mc_samples, mc_curve, n_bins, memory_budget_mb: the ``eval`` settings of a run (defaults:
            ``configs/train.yaml``: 32, ``[1, 2, ..., 64]``, 15, 256 MB). MC runs ``max`` of the
            curve masks once; ``mc<T>`` is the first ``T`` of them, as in a run.
        train_x: training inputs, for ``bn_recomputed`` (models with BatchNorm).
        seed: the run seed: ``single`` draws its subnetwork from a seed derived from it (``None``:
            from the global RNG).
        exhaustive: also every Bernoulli mask (tiny models only).

    Returns:
        ``{"test/<set>/<label>/<metric>": value}``: the keys and values
        :func:`dropens.evaluation.evaluate` gives, as in a run's ``metrics.json``.

    Raises:
        ConfigError (one line): data of the wrong kind, sets without labels, an unknown strategy,
            MC on a model without dropout (naming :func:`dropens.convert`), ...
    """
    sets, dm_train_x = _eval_sets(data)
    train_x = train_x if train_x is not None else dm_train_x
    eval_cfg = _default_eval()
    given = {
        "mc_samples": mc_samples,
        "mc_curve": list(mc_curve) if mc_curve is not None else None,
        "n_bins": n_bins,
        "memory_budget_mb": memory_budget_mb,
    }
    eval_cfg.update({k: v for k, v in given.items() if v is not None})
    if mc_samples is not None and mc_curve is None:
        eval_cfg["mc_curve"] = [t for t in eval_cfg["mc_curve"] if t <= mc_samples]
    eval_cfg["exhaustive"] = bool(exhaustive)
    plan = tuple(strategies) if strategies is not None else None
    if plan is None:
        plan = default_strategies(model, with_train_x=train_x is not None)
    metrics, _ = evaluate(model, sets, eval_cfg, plan, train_x=train_x, seed=seed)
    return metrics
