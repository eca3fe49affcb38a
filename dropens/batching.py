"""Running ``M`` members of a model batched, in the one ensemble layout (:mod:`dropens.layout`).

:func:`run_members` runs members ``0..M-1`` of any strategy (:mod:`dropens.inference`) stacked on
the batch axis as ``(m b)``, in chunks over *both* members and examples sized to a memory budget
(:func:`chunk_sizes`, :func:`row_bytes`; on a CPU also a cache-sized working set,
:func:`cpu_max_rows`) -- never as a Python loop over single passes -- and returns their
log-probabilities ``[M, N, C]``; :class:`Predictions` holds them with their aggregate.

Members differ only from the first dropout layer on: what runs before it is the same for every
member. :func:`shared_prefix` finds that layer, and :func:`run_members` then runs the prefix once
on the ``b`` examples and stacks the ``(m b)`` rows at that layer's input (a forward pre-hook)
instead of at the model's input. With dropout only in a classifier head (``last-layer MC
dropout``, most torchvision models) the backbone runs once instead of ``T`` times.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dropens import control
from dropens.errors import ConfigError
from dropens.layers import Dropout
from dropens.layout import stack, unstack
from dropens.metrics._common import check_weights, weighted_sum
from dropens.metrics.summary import aggregate as aggregate_probs

CPU_WORKING_SET_MB = 8  # why: about one core's L2 + share of L3, per thread; see cpu_max_rows
# why: rows per forward and torch thread; below this the ~10 module calls per forward, and with
# 2+ threads each op's thread synchronization, start to show (see cpu_max_rows)
CPU_MIN_ROWS = 256


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


def probe(model: nn.Module, x1: Tensor) -> tuple[int, dict[Dropout, list[tuple[int, ...]]]]:
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
    thread (cache-sized), but at least :data:`CPU_MIN_ROWS` rows **per thread** so that
    per-forward overhead stays amortized. An input of at most that many stacked rows (``M x N``)
    therefore runs in one forward, when it fits the memory budget (:func:`chunk_sizes`).

    Why: one forward over ``T x 1000`` rows streams every activation through main memory; chunks
    whose activations stay in cache are faster (benchmarks/bench_mc.py, MNIST-1D MLP, T = 32, one
    thread on 2 AMD EPYC cores: ~1.5k rows per forward took 0.5x the time of 32k rows). The floor
    grows with the threads because every op of a forward synchronizes them: with 2 threads and
    another process on one core, each op waits for the descheduled thread, so the cost is per
    forward, not per row (benchmarks/bench_peer.py's CNN, N = 100, T = 32, 2 threads, time /
    TorchUncertainty's one 3200-row pass: 256 / 512 / 1024-row chunks 1.51x / 1.32x / 1.22x in a
    contended run, 0.71x / 0.84x / 0.98x in a calmer one; 1 thread: 256 rows 0.43x). The
    per-thread floor is the compromise. GPUs get no such cap.
    """
    threads = max(1, torch.get_num_threads() if threads is None else threads)
    working_set = int(CPU_WORKING_SET_MB * threads * 2**20)
    return max(CPU_MIN_ROWS * threads, working_set // max(1, row_bytes))


def row_bytes(model: nn.Module, x1: Tensor, n: int = 1) -> int:
    """Estimated working memory of one stacked row: 2 x (input + every leaf module's output) bytes
    of a deterministic probe forward of the one example ``x1`` (repeated ``n`` times for a
    stacked ensemble of ``n`` nets). The factor 2 covers temporaries the leaf outputs do not show (masks,
    functional ops inside a module's forward)."""
    with control.preserved(model):
        model.eval()
        total, _ = probe(model, stack(x1[:1], n))
    return max(1, 2 * total // n)


@dataclass(frozen=True)
class Members:
    """How a strategy runs on one model.

    Attributes:
        n: ``M``, the number of members.
        enter: ``enter(j0, j1)`` is a context manager in which the model runs members
            ``[j0, j1)`` stacked ``(m b)`` (it switches the model through :mod:`dropens.control`).
        fixed: every forward must take all ``M`` members (a stacked ensemble).
        weights: optional ``[M]`` float64 member weights summing to 1.
    """

    n: int
    enter: Callable[[int, int], AbstractContextManager]
    fixed: bool = False
    weights: Tensor | None = None


def device_of(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter or buffer (CPU without any)."""
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


@contextmanager
def stacked_at(layer: nn.Module | None, m: int) -> Iterator[None]:
    """Within the block, ``layer``'s input ``[b, ...]`` becomes the ``(m b)`` stack ``[m * b, ...]``
    (a forward pre-hook); ``None``: nothing changes."""
    if layer is None:
        yield
        return
    handle = layer.register_forward_pre_hook(lambda _, args: (stack(args[0], m), *args[1:]))
    try:
        yield
    finally:
        handle.remove()


def shared_prefix(model: nn.Module, x: Tensor, members: Members) -> Dropout | None:
    """The dropout layer before which every member computes the same thing, when sharing that
    prefix is exact on this model; ``None`` otherwise (then members are stacked at the input).

    The layer is the first dropout layer with ``p > 0`` a forward of the members runs (it must run
    once per forward: a reused layer is not a split point). Sharing assumes the prefix is
    deterministic and row-wise (no example sees another, no batch size is kept and used after the
    split); that is checked, not assumed: two examples x two members run both ways from the same
    RNG state and must agree (to float rounding) or the model is run unshared. The probes run in
    a forked RNG, so the members' masks are the ones an unshared run draws. ``M = 1`` and stacked
    ensembles (``fixed``) are never split.
    """
    if members.fixed or members.n < 2:
        return None
    layers = [m for m in model.modules() if isinstance(m, Dropout) and m.p > 0]
    order: list[Dropout] = []
    handles = [
        layer.register_forward_pre_hook(lambda mod, _: order.append(mod)) for layer in layers
    ]
    xs, m = x[:2].to(device_of(model)), 2
    devices = [xs.device] if xs.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad(), members.enter(0, m):
        state = torch.random.get_rng_state()
        cuda = torch.cuda.get_rng_state(xs.device) if devices else None
        try:
            reference = model(stack(xs, m))
        finally:
            for h in handles:
                h.remove()
        if not order or order.count(order[0]) > 1 or not isinstance(reference, Tensor):
            return None
        first = order[0]
        torch.random.set_rng_state(state)
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, xs.device)
        try:
            with stacked_at(first, m):
                shared = model(xs)
        except Exception:  # a prefix that is not row-wise (e.g. a kept batch size): run unshared
            return None
    if not isinstance(shared, Tensor) or shared.shape != reference.shape:
        return None
    scale = float(reference.abs().max()) if reference.numel() else 0.0
    if not torch.allclose(shared, reference, rtol=1e-4, atol=1e-5 * max(scale, 1.0)):
        return None
    return first


@torch.no_grad()
def run_members(
    model: nn.Module,
    x: Tensor,
    members: Members,
    memory_budget_mb: float = 256,
    max_rows: int | None = None,
    share_prefix: bool = True,
) -> Tensor:
    """``[M, N, C]`` float32 CPU log-probabilities of ``members`` on inputs ``x [N, *input_shape]``.

    The model runs as it is (its train/eval state is the caller's), in chunks of
    :func:`chunk_sizes` members x examples; ``max_rows=None`` caps a CPU forward to a cache-sized
    working set (:func:`cpu_max_rows`). ``share_prefix``: run what precedes the first dropout layer
    once per example, not once per member (:func:`shared_prefix`; module docstring).
    """
    device = device_of(model)
    m, n = members.n, len(x)
    row = row_bytes(model, x[:1].to(device), m if members.fixed else 1)
    if max_rows is None and device.type == "cpu":
        max_rows = cpu_max_rows(row)
    m_chunk, b_chunk = chunk_sizes(m, n, row, memory_budget_mb, members.fixed, max_rows)
    split = shared_prefix(model, x, members) if share_prefix else None
    out: Tensor | None = None
    for j0 in range(0, m, m_chunk):
        j1 = min(j0 + m_chunk, m)
        with members.enter(j0, j1):
            for n0 in range(0, n, b_chunk):
                n1 = min(n0 + b_chunk, n)
                logp = _stacked_logprobs(model, x[n0:n1].to(device), j1 - j0, split)
                if out is None:
                    out = torch.empty(m, n, logp.shape[-1], dtype=torch.float32)
                out[j0:j1, n0:n1] = logp
    if out is None:
        raise ConfigError("predict got no inputs (x has 0 rows); give at least one example")
    return out


def _stacked_logprobs(model: nn.Module, xb: Tensor, m: int, split: nn.Module | None) -> Tensor:
    """``[m, b, C]`` float32 CPU log-probabilities of ``m`` stacked passes over the chunk ``xb``,
    stacked at the input or, with a ``split`` layer, at that layer's input.

    ``log_softmax`` runs in float32, or float64 for a float64 model, before the float32 copy.
    """
    with stacked_at(split, m):
        logits = model(xb if split is not None else stack(xb, m))
    if logits.dim() != 2 or logits.shape[0] != m * len(xb):
        raise ConfigError(
            f"{type(model).__name__} returned logits of shape {tuple(logits.shape)} for "
            f"{m} x {len(xb)} stacked rows; expected ({m * len(xb)}, C) in the (m b) layout"
        )
    logp = F.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
    return unstack(logp, m).float().cpu()
