"""Inference strategies: a trained model -> :class:`Predictions` with members ``[M, N, C]``.

Every strategy runs its ``M`` members batched on the batch axis as ``(m b)`` (member-major: rows
``m*b .. (m+1)*b - 1`` are member ``m``), in chunks over *both* members and examples sized to a
memory budget (:func:`chunk_sizes`) — never as a Python loop over single passes.

- ``deterministic``: one pass with every dropout layer off (weight scaling; ``scale=none`` layers
  multiply by keep). ``M = 1``.
- ``mc``: ``samples`` passes with fresh masks (MC dropout, Gal & Ghahramani 2016), model in eval mode
  (BatchNorm uses running statistics). ``M = samples``.
- ``members``: the ``K`` members of a finite family, ``M = K`` (``samples`` is ignored):
  a *subnets* model (its dropout layers have ``n_members = K``, :func:`dropens.control.set_n_members`;
  member ``k`` is the fixed mask ``k``, :func:`dropens.control.member`), or an *ensemble* of ``K``
  nets (the model has ``n_members = K`` and ``stacked_members = True``; its forward takes a stacked
  ``(K*B, ...)`` input, member-major, and returns ``(K*B, C)``, rows ``k*B..(k+1)*B-1`` from net
  ``k``).
- ``exhaustive``: every Bernoulli mask of a small model (:func:`mask_family`): ``M = 2^n`` for ``n``
  droppable units, member ``j`` weighted by its probability ``keep^{#kept} p^{#dropped}``
  (:attr:`Predictions.weights`). With ``aggregate="geometric"`` and dropout only on the inputs of
  the final softmax layer, this is exactly the deterministic pass (Baldi & Sadowski 2013;
  Warde-Farley et al. 2014): the logits are affine in the mask, so their expectation is the
  weight-scaled logits and the log-normalizer cancels in the normalized geometric mean.

Aggregates (:attr:`Predictions.probs`): ``mean`` (arithmetic mean of the probabilities) and
``geometric`` (normalized geometric mean: softmax of the mean log-probabilities), weighted by
:attr:`Predictions.weights` when set.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dropens import control
from dropens.errors import ConfigError, bad_choice
from dropens.layers import Dropout
from dropens.metrics._common import check_weights, weighted_sum
from dropens.metrics.summary import aggregate as aggregate_probs

AGGREGATES = ("mean", "geometric")
STRATEGY_NAMES = ("deterministic", "exhaustive", "mc", "members")
DEFAULT_MAX_MEMBERS = 2**16  # why: 2^16 masks of a toy model run in seconds on a CPU
CPU_WORKING_SET_MB = 8  # why: about one core's L2 + share of L3, per thread; see cpu_max_rows
CPU_MIN_ROWS = 256  # why: below this the ~10 module calls per forward start to show


@dataclass
class Predictions:
    """Per-member predictive distributions of one eval set.

    Attributes:
        member_probs: ``[M, N, C]`` float32 probabilities on the CPU (members, examples, classes).
        aggregate: how :attr:`probs` combines members: ``mean`` (arithmetic mean of probabilities)
            or ``geometric`` (softmax of the mean log-probabilities).
        strategy: the strategy that produced them (e.g. ``mc``).
        weights: optional ``[M]`` float64 member weights summing to 1 (``exhaustive``: the
            probability of each mask); ``None`` weighs members equally.
        member_logprobs: optional ``[M, N, C]`` float32 log-probabilities (kept by :func:`predict`
            for ``aggregate="geometric"``): the geometric mean then uses them directly, which
            stays exact where a member's probability underflows float32 (below ~1e-38, e.g. a
            confident member's wrong classes, whose stored probability would be 0).
    """

    member_probs: Tensor
    aggregate: str = "mean"
    strategy: str = ""
    weights: Tensor | None = None
    member_logprobs: Tensor | None = None

    @property
    def probs(self) -> Tensor:
        """``[N, C]`` aggregate of the members (weighted by :attr:`weights` when set)."""
        if self.aggregate == "geometric" and self.member_logprobs is not None:
            return geometric_from_logprobs(self.member_logprobs, self.weights)
        return aggregate_probs(self.member_probs, self.aggregate, self.weights)

    @property
    def n_members(self) -> int:
        return self.member_probs.shape[0]


def geometric_from_logprobs(member_logprobs: Tensor, weights: Tensor | None = None) -> Tensor:
    """Normalized geometric mean ``softmax(Σ_m w_m log p_m)`` of log-probabilities ``[M, N, C]``.

    The same aggregate as ``aggregate(exp(member_logprobs), "geometric", weights)`` without the
    round trip through probabilities (no underflow, no clamp). Returns ``[N, C]``.
    """
    m = member_logprobs.shape[0]
    w = torch.full((m,), 1.0 / m, dtype=torch.float64) if weights is None else weights
    mean_logp = weighted_sum(check_weights(w, m), member_logprobs)  # float64 accumulation
    return torch.softmax(mean_logp, dim=-1).to(member_logprobs.dtype)


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


def _probe(model: nn.Module, x1: Tensor) -> tuple[int, dict[Dropout, list[tuple[int, ...]]]]:
    """One deterministic forward of ``x1``: activation bytes (input + every leaf module's output)
    and the per-example input shapes seen by every dropout layer with ``p > 0``."""
    total = [x1.numel() * x1.element_size()]
    seen: dict[Dropout, list[tuple[int, ...]]] = {}

    def count(module: nn.Module, args: tuple, output: object) -> None:
        if isinstance(output, Tensor):
            total[0] += output.numel() * output.element_size()
        if isinstance(module, Dropout) and module.p > 0 and args and isinstance(args[0], Tensor):
            shapes = seen.setdefault(module, [])
            if tuple(args[0].shape[1:]) not in shapes:
                shapes.append(tuple(args[0].shape[1:]))

    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    handles = [m.register_forward_hook(count) for m in leaves]
    try:
        with control.deterministic(model):
            model(x1)
    finally:
        for h in handles:
            h.remove()
    return total[0], seen


def mask_family(model: nn.Module, x: Tensor, max_members: int = DEFAULT_MAX_MEMBERS) -> MaskFamily:
    """The family of every Bernoulli mask of ``model`` for inputs like ``x`` ``[N, *input_shape]``.

    ``n`` = the number of independent draw groups of all dropout layers with ``p > 0`` that the
    forward calls, per example: ``element`` -> the numel of the per-example input, ``channel`` ->
    ``C``, ``location`` -> the number of positions. Found by one deterministic forward of ``x[:1]``.

    Raises:
        ConfigError (one line): no dropout with ``p > 0``; a ``block`` structure or a
        non-``bernoulli`` distribution; a layer called on two input shapes; ``2^n > max_members``.
    """
    if _stacked_members(model) is not None:
        raise ConfigError(
            f"strategy='exhaustive' enumerates the masks of one network, but {type(model).__name__} "
            "is a stacked ensemble; use strategy='members'"
        )
    live = control._require_layers(model, "exhaustive inference")
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
    was_training = model.training
    model.eval()
    try:
        _, seen = _probe(model, x[:1].to(_device(model)))
    finally:
        model.train(was_training)
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


# ----------------------------------------------------------------------------- strategies


@dataclass
class _Plan:
    """How a strategy runs: ``M`` members; ``enter(j0, j1)`` switches the model to members
    ``[j0, j1)`` stacked ``(m b)``; ``fixed``: every forward must take all ``M`` members."""

    n_members: int
    enter: Callable[[int, int], AbstractContextManager]
    fixed: bool = False
    weights: Tensor | None = None


def _stacked_members(model: nn.Module) -> int | None:
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
    if _stacked_members(model) is not None:
        raise ConfigError(
            f"strategy={strategy!r} runs one network, but {type(model).__name__} is a stacked "
            "ensemble of n_members nets; use strategy='members'"
        )


def _deterministic(model: nn.Module, samples: int | None, x: Tensor, max_members: int) -> _Plan:
    _single_network(model, "deterministic")
    return _Plan(1, lambda j0, j1: control.deterministic(model))


def _mc(model: nn.Module, samples: int | None, x: Tensor, max_members: int) -> _Plan:
    _single_network(model, "mc")
    if isinstance(samples, bool) or not isinstance(samples, numbers.Integral) or samples < 1:
        raise ConfigError(
            f"eval.mc_samples={samples!r} is not valid; MC dropout needs an integer >= 1"
        )
    control._require_layers(model, "MC dropout")  # fail before the probe
    return _Plan(int(samples), lambda j0, j1: control.mc(model))


def _members(model: nn.Module, samples: int | None, x: Tensor, max_members: int) -> _Plan:
    k = _stacked_members(model)
    if k is not None:
        return _Plan(k, lambda j0, j1: nullcontext(), fixed=True)
    families = {m.n_members for m in control.dropout_layers(model) if m.p > 0}
    if not families or families == {None}:
        raise ConfigError(
            f"strategy='members' needs a subnets model (dropout layers with n_members set) or a "
            f"stacked ensemble (n_members and stacked_members=True); {type(model).__name__} has "
            "neither; use deterministic or mc"
        )
    if len(families) > 1:
        raise ConfigError(
            f"strategy='members': the dropout layers of {type(model).__name__} disagree on "
            f"n_members ({sorted(families, key=str)}); set it on all with control.set_n_members"
        )
    (k,) = families
    return _Plan(k, lambda j0, j1: control.member(model, range(j0, j1)))


@contextmanager
def _masks_of(model: nn.Module, family: MaskFamily, j0: int, j1: int) -> Iterator[None]:
    with ExitStack() as stack:
        stack.enter_context(control.explicit_masks(model, family.banks(j0, j1)))
        stack.enter_context(control.member(model, range(j1 - j0)))
        yield


def _exhaustive(model: nn.Module, samples: int | None, x: Tensor, max_members: int) -> _Plan:
    family = mask_family(model, x, max_members)
    return _Plan(
        len(family), lambda j0, j1: _masks_of(model, family, j0, j1), weights=family.weights()
    )


STRATEGIES: dict[str, Callable[[nn.Module, int | None, Tensor, int], _Plan]] = {
    "deterministic": _deterministic,
    "exhaustive": _exhaustive,
    "mc": _mc,
    "members": _members,
}


# ----------------------------------------------------------------------------- batching


def chunk_sizes(
    n_members: int,
    n_examples: int,
    row_bytes: int,
    memory_budget_mb: float,
    fixed_members: bool = False,
    max_rows: int | None = None,
) -> tuple[int, int]:
    """``(members, examples)`` per forward so that ``members * examples`` stacked rows fit.

    Rows per forward ``R = min(budget / row_bytes, max_rows)`` (at least 1). Examples are split
    first: all ``M`` members of ``R // M`` examples per forward; when one example's ``M`` rows alone
    exceed ``R`` (e.g. 2^16 exhaustive masks), members are split too: ``R`` members of one example.
    ``fixed_members`` (a stacked ensemble, whose forward takes all ``K`` nets) never splits members.
    """
    rows = max(1, int(memory_budget_mb * 2**20) // max(1, row_bytes))
    if max_rows is not None:
        rows = max(1, min(rows, int(max_rows)))
    if fixed_members:
        return n_members, max(1, min(n_examples, rows // n_members))
    examples = max(1, min(n_examples, rows // n_members))
    return min(n_members, max(1, rows // examples)), examples


def cpu_max_rows(row_bytes: int, threads: int | None = None) -> int:
    """Rows per forward on a CPU: a working set of about :data:`CPU_WORKING_SET_MB` per torch
    thread (cache-sized), but at least :data:`CPU_MIN_ROWS` rows so that per-forward overhead
    stays amortized.

    Why: one forward over ``T x 1000`` rows streams every activation through main memory; chunks
    whose activations stay in cache are faster (benchmarks/bench_mc.py, MNIST-1D MLP, T = 32, one
    thread on 2 AMD EPYC cores: ~1.5k rows per forward took 0.5x the time of 32k rows).
    GPUs get no such cap.
    """
    threads = torch.get_num_threads() if threads is None else threads
    working_set = int(CPU_WORKING_SET_MB * max(1, threads) * 2**20)
    return max(CPU_MIN_ROWS, working_set // max(1, row_bytes))


def row_bytes(model: nn.Module, x1: Tensor, stack: int = 1) -> int:
    """Estimated working memory of one stacked row: 2 x (input + every leaf module's output) bytes
    of a deterministic probe forward of the one example ``x1`` (repeated ``stack`` times for a
    stacked ensemble). The factor 2 covers temporaries the leaf outputs do not show (masks,
    functional ops inside a module's forward)."""
    probe = x1[:1].repeat(stack, *([1] * (x1.dim() - 1)))
    was_training = model.training
    model.eval()
    try:
        total, _ = _probe(model, probe)
    finally:
        model.train(was_training)
    return max(1, 2 * total // stack)


def _device(model: nn.Module) -> torch.device:
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


@torch.no_grad()
def predict(
    model: nn.Module,
    x: Tensor,
    strategy: str,
    samples: int | None = None,
    aggregate: str = "mean",
    memory_budget_mb: float = 256,
    max_members: int = DEFAULT_MAX_MEMBERS,
    keep_logprobs: bool | None = None,
    max_rows: int | None = None,
) -> Predictions:
    """Run ``strategy`` on inputs ``x`` ``[N, *input_shape]``; returns members ``[M, N, C]`` on CPU.

    The model is put in eval mode for the call (BatchNorm running statistics) and its previous
    train/eval state, dropout modes and mask banks are restored afterwards.

    Args:
        strategy: ``deterministic`` | ``mc`` | ``members`` | ``exhaustive`` (module docstring).
        samples: ``mc`` only: the number of masks ``T`` (ignored by the other strategies).
        aggregate: what :attr:`Predictions.probs` computes: ``mean`` | ``geometric``.
        memory_budget_mb: working memory of one stacked forward (activations of all its rows,
            estimated by :func:`row_bytes`); chunks over members and examples are sized to it
            (:func:`chunk_sizes`). On a CPU, chunks are also capped to a cache-sized working set
            (:func:`cpu_max_rows`), which is faster than one huge forward.
        max_members: ``exhaustive`` only: refuse more than this many masks.
        keep_logprobs: also keep ``member_logprobs`` (default: for ``aggregate="geometric"``).
        max_rows: at most this many stacked rows per forward (within the memory budget);
            ``None``: a cache-sized working set on a CPU (:func:`cpu_max_rows`), no cap on a GPU.

    Raises:
        ConfigError (one line): unknown strategy/aggregate, ``mc`` with samples < 1, a model
            without dropout for ``mc``/``exhaustive``, ``members`` on a model that is neither a
            subnets model nor a stacked ensemble, ``exhaustive`` above ``max_members`` or on a
            block/non-Bernoulli dropout.
    """
    if strategy not in STRATEGIES:
        raise bad_choice("strategy", strategy, sorted(STRATEGIES))
    if aggregate not in AGGREGATES:
        raise bad_choice("aggregate", aggregate, AGGREGATES)
    if keep_logprobs is None:
        keep_logprobs = aggregate == "geometric"
    device = _device(model)
    was_training = model.training
    model.eval()
    try:
        plan = STRATEGIES[strategy](model, samples, x, max_members)
        m, n = plan.n_members, len(x)
        row = row_bytes(model, x[:1].to(device), m if plan.fixed else 1)
        if max_rows is None and device.type == "cpu":
            max_rows = cpu_max_rows(row)
        m_chunk, b_chunk = chunk_sizes(m, n, row, memory_budget_mb, plan.fixed, max_rows)
        out: Tensor | None = None
        for j0 in range(0, m, m_chunk):
            j1 = min(j0 + m_chunk, m)
            with plan.enter(j0, j1):
                for n0 in range(0, n, b_chunk):
                    n1 = min(n0 + b_chunk, n)
                    logp = _stacked_logprobs(model, x[n0:n1].to(device), j1 - j0)
                    if out is None:
                        out = torch.empty(m, n, logp.shape[-1], dtype=torch.float32)
                    out[j0:j1, n0:n1] = logp
    finally:
        model.train(was_training)
    assert out is not None
    if keep_logprobs:
        return Predictions(out.exp(), aggregate, strategy, plan.weights, out)
    return Predictions(out.exp_(), aggregate, strategy, plan.weights)


def _stacked_logprobs(model: nn.Module, xb: Tensor, m: int) -> Tensor:
    """``[m, b, C]`` float32 CPU log-probabilities of ``m`` stacked passes over the chunk ``xb``.

    ``log_softmax`` runs in float32, or float64 for a float64 model, before the float32 copy.
    """
    stacked = xb.repeat(m, *([1] * (xb.dim() - 1))) if m > 1 else xb
    logits = model(stacked)
    if logits.dim() != 2 or logits.shape[0] != m * len(xb):
        raise ConfigError(
            f"{type(model).__name__} returned logits of shape {tuple(logits.shape)} for "
            f"{m} x {len(xb)} stacked rows; expected ({m * len(xb)}, C) in the (m b) layout"
        )
    logp = F.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
    return logp.reshape(m, len(xb), -1).float().cpu()
