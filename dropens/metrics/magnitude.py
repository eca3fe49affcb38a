"""Activation magnitudes around dropout and BatchNorm layers, training pass vs deterministic pass.

Dropout changes the *variance* of what the next layer sees: inverted dropout keeps the mean but
inflates the variance in training, so a BatchNorm after it learns running statistics that do not
match the deterministic pass (Li et al. 2019, "Understanding the disharmony between dropout and
batch normalization by variance shift"). This module measures that on a real model and batch:

- :class:`ActivationRecorder`: forward (pre-)hooks on every dropout and BatchNorm layer that
  record statistics of each layer's input and output (:func:`activation_stats`);
- :func:`record_train_eval`: the same batch through the training pass (masks sampled, BatchNorm
  on batch statistics) and the deterministic pass (eval), merged into rows ready for a
  DataFrame or ``magnitudes.json``; the model is left exactly as it was;
- :func:`variance_shift`: the closed-form ``Var_eval / Var_train`` of a dropout layer;
- :func:`bn_variance_mismatch`: a BatchNorm's running variance vs its actual input variance.

Ratios are always **eval / train** (deterministic over training), like :func:`variance_shift`.
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

from dropens.errors import ConfigError, check_choice

KINDS = ("dropout", "batchnorm")
STATS = ("mean", "var", "mean_abs", "frac_zero", "l2")
# torch dropouts whose training pass is inverted Bernoulli (so variance_shift applies);
# AlphaDropout/FeatureAlphaDropout keep mean and variance by design and are left out.
_INVERTED_TORCH = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)


def _dropens_dropout() -> type | None:
    """``dropens.layers.Dropout`` if importable (it is optional for this module)."""
    try:
        from dropens.layers import Dropout
    except ImportError:  # pragma: no cover - only while dropens.layers is missing or broken
        return None
    return Dropout


def layer_kind(module: nn.Module) -> str | None:
    """The kind of a layer the recorder watches, or ``None``.

    ``"dropout"``: ``torch.nn`` dropouts (``_DropoutNd``) and ``dropens.layers.Dropout``;
    ``"batchnorm"``: every ``_BatchNorm`` (``BatchNorm1d/2d/3d``, ``SyncBatchNorm``).
    """
    if isinstance(module, _BatchNorm):
        return "batchnorm"
    dropens_dropout = _dropens_dropout()
    if isinstance(module, _DropoutNd) or (dropens_dropout and isinstance(module, dropens_dropout)):
        return "dropout"
    return None


def activation_stats(x: Tensor) -> dict[str, float]:
    """Magnitude statistics of one activation ``x`` of shape ``(N, *)`` (computed in float64).

    - ``mean`` = ``mean(x)``, ``var`` = ``mean((x - mean)^2)`` (pooled over all samples and
      units, population variance), ``mean_abs`` = ``mean(|x|)``, ``frac_zero`` = fraction of
      entries equal to 0;
    - ``l2`` = ``(1/N) Σ_n ||x_n||_2``, the per-sample L2 norm averaged over the batch (a 0-dim
      ``x`` counts as one sample).

    Returns:
        ``{stat: float}`` for the keys in :data:`STATS`.
    """
    x = x.detach().double()
    flat = x.reshape(x.shape[0], -1) if x.dim() else x.reshape(1, 1)
    return {
        "mean": float(x.mean()),
        "var": float(x.var(correction=0)),
        "mean_abs": float(x.abs().mean()),
        "frac_zero": float((x == 0).double().mean()),
        "l2": float(flat.norm(dim=1).mean()),
    }


def variance_shift(mean: float | Tensor, var: float | Tensor, p: float) -> float | Tensor:
    """Closed-form variance ratio ``Var_eval / Var_train`` of inverted dropout (Li et al. 2019).

    For an input unit ``x`` with mean ``c`` and variance ``v`` and noise ``A / keep``,
    ``A ~ Bernoulli(keep)``, ``keep = 1 - p``, independent of ``x``:

    - training: ``y = x A / keep``. ``E[y] = c``, ``E[y²] = E[x²] E[A²] / keep² = (v + c²) / keep``,
      so ``Var_train = (v + c²) / keep - c² = (v + c² - keep c²) / keep = (v + p c²) / keep``;
    - eval: ``y = x``, ``Var_eval = v``;
    - ratio: ``Var_eval / Var_train = keep · v / (v + p · c²)``, at most ``keep`` (reached at
      ``c = 0``).

    The same ratio holds for ``scale="none"`` (training ``x A``, eval ``keep · x``: both
    variances are multiplied by ``keep²``), for any unit-mean noise with variance ``p / keep``
    (``gaussian``, ``uniform`` in :mod:`dropens.masks`), for any structure whose marginal drop rate
    is ``p`` at every unit (``element``, ``channel``, ``location``; only approximately for
    ``block``), and for pooled statistics over a whole tensor (``c``, ``v`` its pooled mean and
    variance), since it only uses ``E[y] = E[x]`` and ``E[y²] = E[x²] / keep``.

    Args:
        mean: ``c``, the input mean (float or tensor, broadcast).
        var: ``v``, the input variance.
        p: drop probability in ``[0, 1)``.

    Returns:
        ``keep · v / (v + p · c²)``, same type as the inputs (NaN if ``v = c = 0``).
    """
    if not 0.0 <= p < 1.0:
        raise ConfigError(f"p={p!r} is not valid; expected a drop probability in [0, 1)")
    keep = 1.0 - p
    denom = var + p * mean**2
    if isinstance(denom, Tensor):
        return keep * var / denom
    return keep * var / denom if denom != 0 else math.nan


def bn_variance_mismatch(bn: _BatchNorm, x: Tensor) -> dict[str, Tensor]:
    """A BatchNorm's running variance vs the actual variance of its input ``x`` per channel.

    ``input_var_c`` is the unbiased variance of channel ``c`` of ``x`` ``(N, C, *)`` over the batch
    and all positions (what BatchNorm's running average estimates); ``ratio_c =
    input_var_c / running_var_c``. Fed the deterministic-pass input of a BatchNorm that follows
    dropout, ``ratio`` is the variance shift of Li et al. (2019): about :func:`variance_shift` of
    the dropout's input when the running statistics were learned on training passes.

    Args:
        bn: a BatchNorm with running statistics.
        x: ``(N, C)`` or ``(N, C, *spatial)``, the input the BatchNorm would see.

    Returns:
        ``{"running_var": [C], "input_var": [C], "ratio": [C]}`` (float64).
    """
    if bn.running_var is None:
        raise ConfigError(
            f"bn={type(bn).__name__} has no running statistics (track_running_stats=False); "
            "expected a BatchNorm with running_var"
        )
    if x.dim() < 2 or x.shape[1] != bn.running_var.shape[0]:
        raise ConfigError(
            f"x has shape {tuple(x.shape)}; "
            f"expected (N, {bn.running_var.shape[0]}, *) for this BatchNorm"
        )
    x = x.detach().double()
    dims = [0, *range(2, x.dim())]
    input_var = x.var(dim=dims, correction=1)
    running_var = bn.running_var.detach().double()
    return {"running_var": running_var, "input_var": input_var, "ratio": input_var / running_var}


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
    dropens_dropout = _dropens_dropout()
    return type(module) in _INVERTED_TORCH or bool(
        dropens_dropout and isinstance(module, dropens_dropout)
    )


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
    dropens_dropout = _dropens_dropout()
    training = [(m, m.training) for m in model.modules()]
    buffers = [
        (m, name, buf, buf.detach().clone())
        for m in model.modules()
        for name, buf in m._buffers.items()
        if buf is not None
    ]
    modes = [
        (m, m.mode) for m in model.modules() if dropens_dropout and isinstance(m, dropens_dropout)
    ]
    recorder = ActivationRecorder(model, kinds)
    try:
        with recorder, torch.no_grad():
            recorder.phase = "eval"
            model.eval()
            for m, _ in modes:
                m.mode = "off"
            model(x)
            recorder.phase = "train"
            model.train()
            for m, _ in modes:
                m.mode = "sample"
            if seed is None:
                model(x)
            else:
                devices = [x.device.index or 0] if x.device.type == "cuda" else []
                with torch.random.fork_rng(devices=devices):
                    torch.manual_seed(seed)
                    model(x)
    finally:
        for m, flag in training:
            m.training = flag
        with torch.no_grad():
            for m, name, buf, saved in buffers:
                m._buffers[name] = buf
                buf.copy_(saved)
        for m, mode in modes:
            m.mode = mode
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
