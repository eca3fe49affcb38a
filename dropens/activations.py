"""Record activation magnitudes of a model: every dropout and BatchNorm layer's input and output,
in the training pass and in the deterministic pass (the statistics: :mod:`dropens.metrics.magnitude`).

- :class:`ActivationRecorder`: forward (pre-)hooks on every dropout and BatchNorm layer that
  record statistics of each layer's input and output (:func:`~dropens.metrics.magnitude.activation_stats`);
- :func:`record_train_eval`: the same batch through the training pass (masks sampled, BatchNorm
  on batch statistics) and the deterministic pass (eval), merged into rows ready for a
  DataFrame or ``magnitudes.json``; the model is left exactly as it was.

Ratios are always **eval / train** (deterministic over training), like
:func:`~dropens.metrics.magnitude.variance_shift`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.dropout import _DropoutNd

from dropens import control
from dropens.errors import check_choice
from dropens.layers import Dropout
from dropens.metrics.magnitude import STATS, activation_stats, bn_variance_mismatch, variance_shift

KINDS = ("dropout", "batchnorm")

# torch dropouts whose training pass is inverted Bernoulli (so variance_shift applies);
# AlphaDropout/FeatureAlphaDropout keep mean and variance by design and are left out.
_INVERTED_TORCH = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)


def layer_kind(module: nn.Module) -> str | None:
    """The kind of a layer the recorder watches, or ``None``.

    ``"dropout"``: ``torch.nn`` dropouts (``_DropoutNd``) and ``dropens.layers.Dropout``;
    ``"batchnorm"``: every ``_BatchNorm`` (``BatchNorm1d/2d/3d``, ``SyncBatchNorm``).
    """
    if isinstance(module, _BatchNorm):
        return "batchnorm"
    if isinstance(module, (_DropoutNd, Dropout)):
        return "dropout"
    return None


class ActivationRecorder:
    """Record :func:`activation_stats` of the input and output of every dropout/BatchNorm layer.

    A context manager: ``__enter__`` registers one forward pre-hook (input; taken *before* the
    layer runs, so in-place dropout cannot alter it) and one forward hook (output) per layer;
    ``__exit__`` removes exactly those hooks, also when the body raises. ``attach``/``detach``
    do the same by hand; ``detach`` is idempotent.

    Each call of a hooked layer appends a row to :attr:`records`::

        {"phase", "layer", "type", "kind", "where": "input"|"output", "call", *STATS}

    where ``phase`` is the label in :attr:`phase` at that time (set it between passes),
    ``call`` counts calls of the layer within the phase (0 unless a layer is reused), and
    BatchNorm input rows also carry ``bn_running_var``, ``bn_input_var``, ``bn_var_ratio``
    (channel means of :func:`bn_variance_mismatch`, read before the layer updates its running
    statistics; NaN without running statistics). Statistics are computed on the fly, so no
    activation is kept alive.

    Args:
        model: the module to watch (its submodules are found with ``named_modules``).
        kinds: which layers: a subset of ``("dropout", "batchnorm")``.

    Example::

        with ActivationRecorder(model) as rec:
            rec.phase = "train"
            model(x)
        rows = rec.records
    """

    def __init__(self, model: nn.Module, kinds: Iterable[str] = KINDS) -> None:
        self.kinds = tuple(kinds)
        for kind in self.kinds:
            check_choice("kinds", kind, KINDS)
        self.model = model
        self.phase = ""
        self.records: list[dict[str, Any]] = []
        self._calls: dict[tuple[str, str, str], int] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def layers(self) -> list[tuple[str, nn.Module, str]]:
        """``(name, module, kind)`` of every recorded layer, in ``named_modules`` order."""
        found = ((name, module, layer_kind(module)) for name, module in self.model.named_modules())
        return [(name, module, kind) for name, module, kind in found if kind in self.kinds]

    def attach(self) -> ActivationRecorder:
        if self._handles:
            raise RuntimeError("ActivationRecorder is already attached")
        try:
            for name, module, kind in self.layers():
                self._handles.append(
                    module.register_forward_pre_hook(partial(self._pre, name, kind))
                )
                self._handles.append(module.register_forward_hook(partial(self._post, name, kind)))
        except BaseException:
            self.detach()
            raise
        return self

    def detach(self) -> None:
        while self._handles:
            self._handles.pop().remove()

    def __enter__(self) -> ActivationRecorder:
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.detach()

    def clear(self) -> None:
        """Forget the records (the hooks stay)."""
        self.records.clear()
        self._calls.clear()

    def _pre(self, name: str, kind: str, module: nn.Module, args: tuple) -> None:
        if args and isinstance(args[0], Tensor):
            self._record(name, kind, module, "input", args[0])

    def _post(self, name: str, kind: str, module: nn.Module, args: tuple, output: object) -> None:
        if isinstance(output, Tensor):
            self._record(name, kind, module, "output", output)

    def _record(self, name: str, kind: str, module: nn.Module, where: str, x: Tensor) -> None:
        key = (self.phase, name, where)
        call = self._calls.get(key, 0)
        self._calls[key] = call + 1
        row: dict[str, Any] = {
            "phase": self.phase,
            "layer": name,
            "type": type(module).__name__,
            "kind": kind,
            "where": where,
            "call": call,
            **activation_stats(x),
        }
        if kind == "batchnorm" and where == "input":
            row.update(_bn_row(module, x))
        self.records.append(row)


def _bn_row(bn: _BatchNorm, x: Tensor) -> dict[str, float]:
    if bn.running_var is None or x.dim() < 2 or x.shape[0] < 2:
        return {"bn_running_var": math.nan, "bn_input_var": math.nan, "bn_var_ratio": math.nan}
    mismatch = bn_variance_mismatch(bn, x)
    return {
        "bn_running_var": float(mismatch["running_var"].mean()),
        "bn_input_var": float(mismatch["input_var"].mean()),
        "bn_var_ratio": float(mismatch["ratio"].mean()),
    }


def _ratio(eval_value: float, train_value: float) -> float:
    """``eval / train``; NaN for 0/0, ``±inf`` for x/0."""
    if train_value == 0:
        return math.nan if eval_value == 0 else math.copysign(math.inf, eval_value)
    return eval_value / train_value


def _predictable(module: nn.Module) -> bool:
    """Whether :func:`variance_shift` describes this dropout layer."""
    return type(module) in _INVERTED_TORCH or isinstance(module, Dropout)


def record_train_eval(
    model: nn.Module, x: Tensor, seed: int | None = None, kinds: Iterable[str] = KINDS
) -> list[dict[str, Any]]:
    """Run one batch through the deterministic pass and the training pass; compare per layer.

    First ``model.eval()`` (dropout off, BatchNorm on running statistics), then ``model.train()``
    (fresh masks, BatchNorm on batch statistics), both under ``torch.no_grad()`` on the same ``x``.
    ``dropens.layers.Dropout`` layers are put in mode ``off`` / ``sample`` for the two passes.
    Afterwards the model is restored exactly: every module's ``training`` flag, every buffer
    (BatchNorm ``running_mean``/``running_var``/``num_batches_tracked``, same tensor objects and
    values) and every dropens dropout mode; also if a pass raises.

    Args:
        model: any ``nn.Module``; ``model(x)`` must run.
        x: one input batch.
        seed: if given, the training pass draws its masks from ``torch.manual_seed(seed)`` inside
            ``torch.random.fork_rng`` (reproducible, and the global RNG is left untouched);
            otherwise from the global RNG.
        kinds: which layers (``dropout``, ``batchnorm``).

    Returns:
        One row per (layer, input|output, call), DataFrame/JSON-ready (str, int, float), keys:
        ``layer, type, kind, where, call, p`` (drop probability; NaN for BatchNorm), then for each
        stat in :data:`STATS` ``{stat}_train``, ``{stat}_eval`` and ``{stat}_ratio`` (eval/train),
        then ``var_ratio_predicted`` (dropout output rows: :func:`variance_shift` of the layer's
        deterministic-pass input mean and variance and ``p``; it predicts ``var_ratio`` when the
        layer's input is the same in both passes, i.e. no stochastic layer upstream; NaN
        elsewhere) and ``bn_running_var``, ``bn_eval_var``, ``bn_var_ratio`` (BatchNorm input
        rows: channel means of :func:`bn_variance_mismatch` on the deterministic-pass input;
        NaN elsewhere).
    """
    buffers = [
        (m, name, buf, buf.detach().clone())
        for m in model.modules()
        for name, buf in m._buffers.items()
        if buf is not None
    ]
    recorder = ActivationRecorder(model, kinds)
    try:
        with control.preserved(model), recorder, torch.no_grad():
            recorder.phase = "eval"
            model.eval()
            with control.mode(model, "off"):
                model(x)
            recorder.phase = "train"
            model.train()
            with control.mode(model, "sample"):
                if seed is None:
                    model(x)
                else:
                    devices = [x.device.index or 0] if x.device.type == "cuda" else []
                    with torch.random.fork_rng(devices=devices):
                        torch.manual_seed(seed)
                        model(x)
    finally:
        with torch.no_grad():
            for m, name, buf, saved in buffers:
                m._buffers[name] = buf
                buf.copy_(saved)
    return _merge(recorder, dict(model.named_modules()))


def _merge(recorder: ActivationRecorder, modules: dict[str, nn.Module]) -> list[dict[str, Any]]:
    by_key = {(r["phase"], r["layer"], r["where"], r["call"]): r for r in recorder.records}
    rows = []
    for (phase, layer, where, call), ev in by_key.items():
        if phase != "eval":
            continue
        tr = by_key.get(("train", layer, where, call))
        module = modules[layer]
        p = float(module.p) if ev["kind"] == "dropout" else math.nan
        row: dict[str, Any] = {
            "layer": layer,
            "type": ev["type"],
            "kind": ev["kind"],
            "where": where,
            "call": call,
            "p": p,
        }
        for stat in STATS:
            train_value = tr[stat] if tr else math.nan
            row[f"{stat}_train"] = train_value
            row[f"{stat}_eval"] = ev[stat]
            row[f"{stat}_ratio"] = _ratio(ev[stat], train_value)
        row["var_ratio_predicted"] = math.nan
        inp = by_key.get(("eval", layer, "input", call))
        if ev["kind"] == "dropout" and where == "output" and inp and _predictable(module) and p < 1:
            row["var_ratio_predicted"] = variance_shift(inp["mean"], inp["var"], p)
        row["bn_running_var"] = ev.get("bn_running_var", math.nan)
        row["bn_eval_var"] = ev.get("bn_input_var", math.nan)
        row["bn_var_ratio"] = ev.get("bn_var_ratio", math.nan)
        rows.append(row)
    return rows
