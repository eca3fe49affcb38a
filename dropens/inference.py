"""Inference strategies: a trained model -> :class:`Predictions` with members ``[M, N, C]``.

Every way dropens evaluates a model is one :class:`Strategy`, registered once in
:data:`STRATEGIES` (:func:`register`). A strategy declares

- how many members it yields and how it switches the model to run them (:meth:`Strategy.members`,
  through :mod:`dropens.control`); :func:`predict` then runs them batched ``(m b)``
  (:func:`dropens.batching.run_members`);
- the labels it records and their metrics (:meth:`Strategy.rows`), and the predictions that
  temperature scaling and OOD scores use (:meth:`Strategy.scored`);
- whether it applies to a model at all (:meth:`Strategy.applies`).

:func:`dropens.evaluation.evaluate` runs a method's plan (a tuple of names) on every eval set;
validation in every method calls :func:`predict` with the same strategies.

========================  ===  ===============================================================
strategy                  M    labels (``test/<set>/<label>/<metric>``)
========================  ===  ===============================================================
``deterministic``         1    ``deterministic``: every dropout layer off (weight scaling)
``mc``                    T    ``mc<T>`` for every T of the MC curve: the first T of one run of
                               ``max(T)`` fresh masks (nested, Srivastava et al. 2014, Fig. 11),
                               model in eval mode (BatchNorm on running statistics)
``single``                1    ``single``: one random subnetwork (one fresh mask per example)
``members``               K    ``members`` (mean), ``members_geometric``, ``member<k>``,
                               ``members@<m>`` (first m members): the K fixed masks of
                               ``subnets`` or the K nets of ``ensemble``
``exhaustive``            2^n  ``exhaustive_mean``, ``exhaustive_geometric``: every Bernoulli mask
                               of a tiny model, probability-weighted
``ws_off`` / ``ws_on``    1    the deterministic pass with every dropout multiplier forced to 1 /
                               to keep (the weight-scaling probe)
``bn_recomputed``         1    the deterministic pass with BatchNorm statistics recomputed with
                               dropout off (:mod:`dropens.batchnorm`)
========================  ===  ===============================================================

With ``aggregate="geometric"`` and dropout only on the inputs of the final softmax layer, the
``exhaustive`` average is exactly the deterministic pass (Baldi & Sadowski 2013; Warde-Farley et
al. 2014): the logits are affine in the mask, so their expectation is the weight-scaled logits
and the log-normalizer cancels in the normalized geometric mean.

Adding a strategy is one registration (a :class:`Strategy` subclass under :func:`register`) plus
its test; a method lists its name in ``eval_strategies`` (README, "Adding a strategy").
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from dropens import control, keys
from dropens.batching import (
    Members,
    Predictions,
    chunk_sizes,
    cpu_max_rows,
    device_of,
    geometric_from_logprobs,
    probe,
    row_bytes,
    run_members,
)
from dropens.batchnorm import BN_BATCH_SIZE, batchnorm_layers, recompute_bn
from dropens.errors import ConfigError, bad_choice
from dropens.layers import Dropout
from dropens.metrics._common import AGGREGATES, safe_log
from dropens.metrics.summary import prediction_metrics

__all__ = [
    "AGGREGATES",
    "DROPOUT_PROBES",
    "STRATEGIES",
    "EvalContext",
    "MaskFamily",
    "Members",
    "Predictions",
    "Strategy",
    "chunk_sizes",
    "cpu_max_rows",
    "geometric_from_logprobs",
    "mask_family",
    "predict",
    "register",
    "row_bytes",
]

DEFAULT_MAX_MEMBERS = 2**16  # why: 2^16 masks of a toy model run in seconds on a CPU
# the probes every dropout-family method adds to its plan: weight scaling forced off / on, and
# BatchNorm statistics recomputed with dropout off (only where the backbone has BatchNorm)
DROPOUT_PROBES = ("ws_off", "ws_on", "bn_recomputed")


# ----------------------------------------------------------------------------- exhaustive masks


@dataclass(frozen=True)
class MaskFamily:
    """Every Bernoulli mask of a model's droppable units, in a fixed order.

    Unit ``i`` (layers in ``model.modules()`` order, units of one layer in row-major order of its
    noise unit shape) is kept in member ``j`` iff bit ``i`` of ``j`` is 1: member 0 drops every
    unit, member ``2^n - 1`` keeps every unit.

    Attributes:
        layers: the dropout layers with ``p > 0`` that the model's forward calls.
        shapes: per layer, the per-example noise unit shape (:meth:`Dropout.noise_unit_shape`).
    """

    layers: tuple[Dropout, ...]
    shapes: tuple[tuple[int, ...], ...]

    @property
    def sizes(self) -> tuple[int, ...]:
        """Independent draw groups (units) per layer."""
        return tuple(math.prod(s) for s in self.shapes)

    @property
    def n_units(self) -> int:
        return sum(self.sizes)

    def __len__(self) -> int:
        return 2**self.n_units

    def kept(self, start: int = 0, stop: int | None = None) -> Tensor:
        """``[stop - start, n]`` bool: unit ``i`` kept in member ``j`` (bit ``i`` of ``j``)."""
        stop = len(self) if stop is None else stop
        j = torch.arange(start, stop, dtype=torch.int64)
        return ((j[:, None] >> torch.arange(self.n_units, dtype=torch.int64)) & 1).bool()

    def banks(self, start: int = 0, stop: int | None = None) -> dict[Dropout, Tensor]:
        """``{layer: [stop - start, *noise unit shape]}`` float64 unit-mean noise (0 or 1/keep)."""
        kept = self.kept(start, stop).double()
        out, offset = {}, 0
        for layer, shape, size in zip(self.layers, self.shapes, self.sizes):
            out[layer] = kept[:, offset : offset + size].reshape(-1, *shape) / layer.keep
            offset += size
        return out

    def weights(self, start: int = 0, stop: int | None = None) -> Tensor:
        """``[stop - start]`` float64 probabilities ``Π_layers keep^{#kept} p^{#dropped}``."""
        kept = self.kept(start, stop).double()
        if not self.layers:  # nothing to drop: one member, the deterministic pass
            return torch.ones(len(kept), dtype=torch.float64)
        pairs = list(zip(self.layers, self.sizes))
        log_keep = torch.cat(
            [torch.full((s,), math.log(m.keep), dtype=kept.dtype) for m, s in pairs]
        )
        log_p = torch.cat([torch.full((s,), math.log(m.p), dtype=kept.dtype) for m, s in pairs])
        return torch.exp(kept @ log_keep + (1.0 - kept) @ log_p)


def mask_family(model: nn.Module, x: Tensor, max_members: int = DEFAULT_MAX_MEMBERS) -> MaskFamily:
    """The family of every Bernoulli mask of ``model`` for inputs like ``x`` ``[N, *input_shape]``.

    ``n`` = the number of independent draw groups of all dropout layers with ``p > 0`` that the
    forward calls, per example: ``element`` -> the numel of the per-example input, ``channel`` ->
    ``C``, ``location`` -> the number of positions. Found by one deterministic forward of ``x[:1]``.

    Raises:
        ConfigError (one line): no dropout with ``p > 0``; a ``block`` structure or a
        non-``bernoulli`` distribution; a layer called on two input shapes; ``2^n > max_members``.
    """
    if stacked_members(model) is not None:
        raise ConfigError(
            f"strategy='exhaustive' enumerates the masks of one network, but {type(model).__name__} "
            "is a stacked ensemble; use strategy='members'"
        )
    live = control.require_layers(model, "exhaustive inference")
    for m in live:
        if m.structure == "block":
            raise ConfigError(
                f"strategy='exhaustive' does not support structure='block' (layer {m.site!r}): "
                "overlapping blocks are not independent units; use mc"
            )
        if m.dist != "bernoulli":
            raise ConfigError(
                f"strategy='exhaustive' enumerates Bernoulli masks, but layer {m.site!r} has "
                f"dist={m.dist!r}; use mc"
            )
    with control.preserved(model):
        model.eval()
        _, seen = probe(model, x[:1].to(device_of(model)))
    layers, shapes = [], []
    for m in live:
        if m not in seen:  # never called: its mask cannot change the output
            continue
        if len(seen[m]) > 1:
            raise ConfigError(
                f"strategy='exhaustive' needs one input shape per dropout layer, but layer "
                f"{m.site!r} is called on {seen[m]}"
            )
        layers.append(m)
        shapes.append(m.noise_unit_shape(seen[m][0]))
    family = MaskFamily(tuple(layers), tuple(shapes))
    n = family.n_units
    if n > 62 or 2**n > max_members:
        per_layer = ", ".join(f"{m.site}: {s}" for m, s in zip(layers, family.sizes))
        raise ConfigError(
            f"strategy='exhaustive' would enumerate 2^{n} masks of n={n} droppable units "
            f"({per_layer}), above the limit max_members={max_members}; use mc, or a smaller model"
        )
    return family


@contextmanager
def _masks_of(model: nn.Module, family: MaskFamily, j0: int, j1: int) -> Iterator[None]:
    with ExitStack() as stack:
        stack.enter_context(control.explicit_masks(model, family.banks(j0, j1)))
        stack.enter_context(control.member(model, range(j1 - j0)))
        yield


# ----------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class EvalContext:
    """What a strategy needs besides the model and the inputs.

    Attributes:
        samples: ``mc``: masks per evaluation (the largest ``T`` of the curve).
        curve: ``mc``: the ``T`` recorded as labels ``mc<T>`` (default: ``samples`` alone).
        headline: ``mc``: the ``T`` whose prediction temperature scaling and OOD scores use
            (``eval.mc_samples``; default ``samples``).
        n_bins: calibration bins of the recorded metrics.
        memory_budget_mb, max_rows: chunking of the batched forwards (:func:`run_members`).
        share_prefix: run what precedes the first dropout layer once per example rather than
            once per member (:func:`dropens.batching.shared_prefix`; checked on the model).
        max_members: ``exhaustive``: refuse more masks than this.
        train_x, train_batch_size: ``bn_recomputed``: the training inputs and rows per forward.
        seed: ``single``: its mask is drawn from this seed in a forked RNG (reproducible, and the
            global RNG -- hence every other strategy's masks -- untouched); ``None``: from the
            global RNG.
    """

    samples: int | None = None
    curve: tuple[int, ...] = ()
    headline: int | None = None
    n_bins: int = 15
    memory_budget_mb: float = 256
    max_rows: int | None = None
    share_prefix: bool = True
    max_members: int = DEFAULT_MAX_MEMBERS
    train_x: Tensor | None = field(default=None, repr=False)
    train_batch_size: int = BN_BATCH_SIZE
    seed: int | None = None

    @property
    def mc_curve(self) -> tuple[int, ...]:
        return self.curve or ((self.samples,) if self.samples else ())

    @property
    def mc_headline(self) -> int | None:
        return self.headline or self.samples


class Strategy:
    """One evaluation strategy (module docstring); subclasses are registered with :func:`register`.

    Override :meth:`members` (required) and, where the defaults do not fit, :meth:`applies`,
    :meth:`prepare`, :meth:`labels`, :meth:`rows` and :meth:`scored`.
    """

    name: ClassVar[str] = ""
    # its member predictions are stored in the run record (predictions.npz, "<set>/<name>")
    stored: ClassVar[bool] = True
    # keep the members' log-probabilities (geometric means, temperature scaling, OOD scores)
    logprobs: ClassVar[bool] = False

    def applies(self, model: nn.Module) -> bool:
        """Whether the strategy has anything to evaluate on ``model`` (no keys otherwise)."""
        return True

    def prepare(self, model: nn.Module, ctx: EvalContext) -> nn.Module:
        """The model the strategy runs, prepared once per evaluation (default: ``model``)."""
        return model

    def members(self, model: nn.Module, x: Tensor, ctx: EvalContext) -> Members:
        """How many members, and how to switch ``model`` (prepared) to run them."""
        raise NotImplementedError

    def labels(self, ctx: EvalContext) -> list[str]:
        """The labels :meth:`rows` records (documentation and key checks)."""
        return [self.name]

    def rows(self, preds: Predictions, y: Tensor, ctx: EvalContext) -> dict[str, dict[str, float]]:
        """``{label: {metric: value}}`` of the predictions on labels ``y [N]``."""
        return {self.name: _metrics(preds.member_probs, y, ctx, preds.aggregate)}

    def scored(self, preds: Predictions, ctx: EvalContext) -> dict[str, Tensor]:
        """``{label: [M, N, C] log-probabilities}`` of the predictions that temperature scaling and
        the OOD scores use (:mod:`dropens.evaluation`); none by default."""
        return {}


STRATEGIES: dict[str, Strategy] = {}


def register(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator: register one instance of ``cls`` under ``cls.name``."""
    if not cls.name or cls.name in STRATEGIES:
        raise ValueError(f"strategy name {cls.name!r} is empty or registered twice")
    STRATEGIES[cls.name] = cls()
    return cls


def get(name: str) -> Strategy:
    """The registered strategy ``name``; a one-line ConfigError naming the valid ones."""
    if name not in STRATEGIES:
        raise bad_choice("strategy", name, sorted(STRATEGIES))
    return STRATEGIES[name]


def _metrics(member_probs: Tensor, y: Tensor, ctx: EvalContext, aggregate: str = "mean") -> dict:
    return prediction_metrics(member_probs, y, aggregate=aggregate, n_bins=ctx.n_bins)


def has_dropout(model: nn.Module) -> bool:
    """Whether ``model`` has a :class:`dropens.layers.Dropout` with ``p > 0``."""
    return any(m.p > 0 for m in control.dropout_layers(model))


def stacked_members(model: nn.Module) -> int | None:
    """``K`` of a stacked ensemble (``stacked_members = True``), else ``None``."""
    if getattr(model, "stacked_members", False) is not True:
        return None
    k = getattr(model, "n_members", None)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(
            f"{type(model).__name__} has stacked_members=True but n_members={k!r}; "
            "a stacked ensemble needs an integer n_members >= 1"
        )
    return k


def _single_network(model: nn.Module, strategy: str) -> None:
    if stacked_members(model) is not None:
        raise ConfigError(
            f"strategy={strategy!r} runs one network, but {type(model).__name__} is a stacked "
            "ensemble of n_members nets; use strategy='members'"
        )


@register
class Deterministic(Strategy):
    """Every dropout layer off: weight scaling (``scale=none`` layers multiply by keep)."""

    name = "deterministic"
    logprobs = True

    def members(self, model, x, ctx):
        _single_network(model, self.name)
        return Members(1, lambda j0, j1: control.deterministic(model))

    def scored(self, preds, ctx):
        return {self.name: preds.member_logprobs}


@register
class MC(Strategy):
    """MC dropout (Gal & Ghahramani 2016): ``samples`` fresh masks, model in eval mode."""

    name = "mc"

    def members(self, model, x, ctx):
        _single_network(model, self.name)
        t = ctx.samples
        if isinstance(t, bool) or not isinstance(t, numbers.Integral) or t < 1:
            raise ConfigError(
                f"eval.mc_samples={t!r} is not valid; MC dropout needs an integer >= 1"
            )
        control.require_layers(model, "MC dropout")  # fail before the probe
        return Members(int(t), lambda j0, j1: control.mc(model))

    def labels(self, ctx):
        return [keys.mc_label(t) for t in ctx.mc_curve]

    def rows(self, preds, y, ctx):
        probs = preds.member_probs
        return {keys.mc_label(t): _metrics(probs[:t], y, ctx) for t in ctx.mc_curve}

    def scored(self, preds, ctx):
        t = ctx.mc_headline
        return {keys.mc_label(t): safe_log(preds.member_probs[:t])}


@register
class Single(Strategy):
    """One random subnetwork: one fresh mask per example (a single MC sample), drawn from
    ``ctx.seed`` in a forked RNG when set."""

    name = "single"
    logprobs = True

    def applies(self, model):
        return has_dropout(model)

    def members(self, model, x, ctx):
        _single_network(model, self.name)
        control.require_layers(model, "a random subnetwork")
        return Members(1, lambda j0, j1: _seeded(ctx.seed, control.mc(model), device_of(model)))

    def scored(self, preds, ctx):
        return {self.name: preds.member_logprobs}


@contextmanager
def _seeded(seed: int | None, inner, device: torch.device) -> Iterator[None]:
    """``inner`` with the global RNG forked and seeded by ``seed`` (``None``: not forked)."""
    if seed is None:
        with inner:
            yield
        return
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), inner:
        torch.manual_seed(int(seed))
        yield


@register
class MemberAverage(Strategy):
    """The ``K`` members of a finite family: a ``subnets`` model (its dropout layers have
    ``n_members = K``; member ``k`` is the fixed mask ``k``) or a stacked ``ensemble`` of ``K``
    nets (``n_members = K``, ``stacked_members = True``; its forward takes ``(K*B, ...)`` rows
    member-major and returns ``(K*B, C)``)."""

    name = "members"
    logprobs = True

    def members(self, model, x, ctx):
        k = stacked_members(model)
        if k is not None:
            return Members(k, lambda j0, j1: nullcontext(), fixed=True)
        families = {m.n_members for m in control.dropout_layers(model) if m.p > 0}
        if not families or families == {None}:
            raise ConfigError(
                f"strategy='members' needs a subnets model (dropout layers with n_members set) or "
                f"a stacked ensemble (n_members and stacked_members=True); {type(model).__name__} "
                "has neither; use deterministic or mc"
            )
        if len(families) > 1:
            raise ConfigError(
                f"strategy='members': the dropout layers of {type(model).__name__} disagree on "
                f"n_members ({sorted(families, key=str)}); set it on all with control.set_n_members"
            )
        (k,) = families
        return Members(k, lambda j0, j1: control.member(model, range(j0, j1)))

    def labels(self, ctx):
        return ["members", "members_geometric", keys.member_label(0), keys.prefix_label(1)]

    def rows(self, preds, y, ctx):
        probs = preds.member_probs
        rows = {"members": _metrics(probs, y, ctx)}
        # The geometric aggregate from log-probabilities (stored probabilities underflow); its
        # member-level rows are those of `members`, its ensemble gain is against its own NLL.
        geometric = _metrics(geometric_from_logprobs(preds.member_logprobs).unsqueeze(0), y, ctx)
        if len(probs) > 1:
            mean_row = rows["members"]
            geometric.update(
                {k: mean_row[k] for k in ("mi", "disagreement", "member_acc", "member_nll")}
            )
            geometric["ensemble_gain"] = mean_row["member_nll"] - geometric["nll"]
        rows["members_geometric"] = geometric
        for k in range(len(probs)):
            rows[keys.member_label(k)] = _metrics(probs[k : k + 1], y, ctx)
        m = 1  # the members curve: the average of the first m members, m = 1, 2, 4, ... < K
        while m < len(probs):
            rows[keys.prefix_label(m)] = _metrics(probs[:m], y, ctx)
            m *= 2
        return rows

    def scored(self, preds, ctx):
        return {self.name: preds.member_logprobs}


@register
class Exhaustive(Strategy):
    """Every Bernoulli mask of a small model (:func:`mask_family`), weighted by its probability
    ``keep^{#kept} p^{#dropped}`` (Warde-Farley et al. 2014); not stored (up to 2^16 members)."""

    name = "exhaustive"
    stored = False
    logprobs = True

    def members(self, model, x, ctx):
        family = mask_family(model, x, ctx.max_members)
        return Members(
            len(family), lambda j0, j1: _masks_of(model, family, j0, j1), weights=family.weights()
        )

    def labels(self, ctx):
        return ["exhaustive_mean", "exhaustive_geometric"]

    def rows(self, preds, y, ctx):
        geometric = geometric_from_logprobs(preds.member_logprobs, preds.weights).unsqueeze(0)
        return {
            "exhaustive_mean": _metrics(preds.probs.unsqueeze(0), y, ctx),
            "exhaustive_geometric": _metrics(geometric, y, ctx),
        }


class _WeightScalingProbe(Strategy):
    """The deterministic pass with every dropout layer's multiplier forced to ``multiplier``
    (:func:`dropens.control.eval_multiplier`): for ``scale=inverted`` ``ws_off`` is the usual pass
    and ``ws_on`` the mismatched one (scaled twice); for ``scale=none`` the other way round."""

    multiplier: ClassVar[str] = ""

    def applies(self, model):
        return has_dropout(model)

    def members(self, model, x, ctx):
        _single_network(model, self.name)

        @contextmanager
        def enter(j0: int, j1: int) -> Iterator[None]:
            with control.eval_multiplier(model, self.multiplier), control.deterministic(model):
                yield

        return Members(1, enter)


@register
class WeightScalingOff(_WeightScalingProbe):
    name = "ws_off"
    multiplier = "one"


@register
class WeightScalingOn(_WeightScalingProbe):
    name = "ws_on"
    multiplier = "keep"


@register
class BatchNormRecomputed(Strategy):
    """The deterministic pass of a copy whose BatchNorm running statistics are recomputed on the
    training inputs with dropout off (:func:`dropens.batchnorm.recompute_bn`)."""

    name = "bn_recomputed"

    def applies(self, model):
        return has_dropout(model) and bool(batchnorm_layers(model))

    def prepare(self, model, ctx):
        if ctx.train_x is None:
            raise ConfigError(
                "eval strategy 'bn_recomputed' needs the training inputs: pass train_x to evaluate"
            )
        return recompute_bn(model, ctx.train_x, ctx.train_batch_size)

    def members(self, model, x, ctx):
        _single_network(model, self.name)
        return Members(1, lambda j0, j1: control.deterministic(model))


# ----------------------------------------------------------------------------- predict


def run(
    strategy: Strategy,
    model: nn.Module,
    x: Tensor,
    ctx: EvalContext,
    aggregate: str = "mean",
    keep_logprobs: bool | None = None,
) -> Predictions:
    """Run a strategy on a model it has already prepared (:meth:`Strategy.prepare`): members
    ``[M, N, C]`` on the CPU; the model in eval mode for the call, its state restored after."""
    if aggregate not in AGGREGATES:
        raise bad_choice("aggregate", aggregate, AGGREGATES)
    if len(x) == 0:
        raise ConfigError("predict got no inputs (x has 0 rows); give at least one example")
    if keep_logprobs is None:
        keep_logprobs = strategy.logprobs or aggregate == "geometric"
    with control.preserved(model), torch.no_grad():
        model.eval()
        members = strategy.members(model, x, ctx)
        out = run_members(model, x, members, ctx.memory_budget_mb, ctx.max_rows, ctx.share_prefix)
    if keep_logprobs:
        return Predictions(out.exp(), aggregate, strategy.name, members.weights, out)
    return Predictions(out.exp_(), aggregate, strategy.name, members.weights)


def inputs_and_labels(data: Any, what: str = "data") -> tuple[Tensor, Tensor | None]:
    """``(x, y)`` of tensors, a tuple ``(x, y)``, a tensor ``x`` (no labels), or an iterable of
    batches (a ``DataLoader``) yielding ``(x, y)`` / ``[x, y]`` / ``x``, concatenated in order.

    Raises:
        ConfigError: one line saying what ``data`` is and what is expected.
    """
    if isinstance(data, Tensor):
        return data, None
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], Tensor):
        return data[0], data[1]
    if isinstance(data, Iterable) and not isinstance(data, (str, bytes, Mapping)):
        xs: list[Tensor] = []
        ys: list[Tensor] = []
        # a DataLoader draws its base seed from the global RNG: reading the data must not move
        # the stream the masks are drawn from (a loader gives the numbers its tensors give)
        with torch.random.fork_rng(devices=[]):
            batches = list(data)
        for batch in batches:
            if isinstance(batch, Tensor):
                xs.append(batch)
            elif isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
                xs.append(batch[0])
                if len(batch) > 1 and isinstance(batch[1], Tensor):
                    ys.append(batch[1])
            else:
                raise ConfigError(
                    f"{what}: a batch is a {type(batch).__name__}; expected x or (x, y) tensors"
                )
        if not xs:
            raise ConfigError(f"{what} yielded no batches; give at least one example")
        if ys and len(ys) != len(xs):
            raise ConfigError(f"{what}: some batches have labels and some do not")
        return torch.cat(xs), (torch.cat(ys) if ys else None)
    raise ConfigError(
        f"{what} is a {type(data).__name__}; give (x, y) tensors, a DataLoader of (x, y) "
        "batches, {name: (x, y)} sets or a dropens data module"
    )


def as_inputs(x: Any) -> Tensor:
    """``x`` itself, or the inputs ``[N, *input_shape]`` of every batch of a ``DataLoader`` (or any
    iterable of ``x`` or ``(x, y, ...)`` batches), concatenated in order
    (:func:`inputs_and_labels`).

    Raises:
        ConfigError: one line when ``x`` is neither.
    """
    return inputs_and_labels(x, "predict: x")[0]


def predict(
    model: nn.Module,
    x: Tensor | Iterable,
    strategy: str,
    samples: int | None = None,
    aggregate: str = "mean",
    memory_budget_mb: float = 256,
    max_members: int = DEFAULT_MAX_MEMBERS,
    keep_logprobs: bool | None = None,
    max_rows: int | None = None,
    **options: Any,
) -> Predictions:
    """Run ``strategy`` on inputs ``x`` ``[N, *input_shape]`` (or a ``DataLoader`` of ``x`` /
    ``(x, y)`` batches, concatenated); returns members ``[M, N, C]`` on CPU.

    The model is put in eval mode for the call (BatchNorm running statistics) and its previous
    train/eval state, dropout modes and mask banks are restored afterwards
    (:func:`dropens.control.preserved`).

    Args:
        strategy: a registered strategy (:data:`STRATEGIES`, module docstring).
        samples: ``mc`` only: the number of masks ``T`` (ignored by the other strategies).
        aggregate: what :attr:`Predictions.probs` computes: ``mean`` | ``geometric``.
        memory_budget_mb: working memory of one stacked forward (activations of all its rows,
            estimated by :func:`row_bytes`); chunks over members and examples are sized to it
            (:func:`chunk_sizes`). On a CPU, chunks are also capped to a cache-sized working set
            (:func:`cpu_max_rows`), which is faster than one huge forward, but never below
            ``CPU_MIN_ROWS`` (256) rows per torch thread: a small input is one forward.
        max_members: ``exhaustive`` only: refuse more than this many masks.
        keep_logprobs: also keep ``member_logprobs`` (default: for ``aggregate="geometric"`` and
            the strategies that need them).
        max_rows: at most this many stacked rows per forward (within the memory budget);
            ``None``: a cache-sized working set on a CPU (:func:`cpu_max_rows`), no cap on a GPU.
        **options: further :class:`EvalContext` fields (``train_x`` for ``bn_recomputed``,
            ``seed`` for ``single``, ``share_prefix=False`` to stack members at the input).

    Raises:
        ConfigError (one line): unknown strategy/aggregate, no inputs, ``mc`` with samples < 1, a
            model without dropout for ``mc``/``exhaustive``/``single``, ``members`` on a model
            that is neither a subnets model nor a stacked ensemble, ``exhaustive`` above
            ``max_members`` or on a block/non-Bernoulli dropout.
    """
    chosen = get(strategy)
    if aggregate not in AGGREGATES:
        raise bad_choice("aggregate", aggregate, AGGREGATES)
    x = as_inputs(x)
    ctx = EvalContext(
        samples=samples,
        memory_budget_mb=memory_budget_mb,
        max_members=max_members,
        max_rows=max_rows,
        **options,
    )
    prepared = chosen.prepare(model, ctx)
    kept = keep_logprobs if keep_logprobs is not None else aggregate == "geometric"
    return run(chosen, prepared, x, ctx, aggregate, kept)
