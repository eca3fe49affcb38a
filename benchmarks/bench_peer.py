"""MC dropout, T = 32: dropens vs TorchUncertainty's ``mc_dropout`` wrapper on the same weights.

Setting: a small CNN for 1 x 28 x 28 inputs with torch dropout modules (``nn.Dropout2d`` after
each conv block, ``nn.Dropout`` before the head; p = 0.1), random weights (inference cost does not
depend on them), N examples, T = 32 masks, in eval mode (MC dropout).

- ``TorchUncertainty``: ``torch_uncertainty.models.mc_dropout(model, num_estimators=T,
  on_batch=True)``: one forward of the input repeated ``(m b)``, ``T x N`` rows, then softmax;
- ``dropens``: a deep copy of the same model converted (``dropens.convert``: the dropout modules
  become dropens layers and, by default, the plain ``nn.MaxPool2d(2)`` modules become
  ``dropens.pooling.MaxPool2x2``, bit-identical and faster without gradients), then
  ``dropens.inference.predict(model, x, "mc", T)`` with its defaults (chunks over members x
  examples sized to a 256 MB budget and, on a CPU, a cache-sized working set), which stacks the
  members at the first dropout layer (the first conv runs once per example:
  ``dropens.batching.shared_prefix``); ``unshared``: the same with ``share_prefix=False``
  (stacked at the input, as TorchUncertainty); ``native pool``: converted with
  ``fast_pool=False`` (torch's pooling kernel, as TorchUncertainty), shared prefix on.

Both give ``[T, N, C]`` probabilities. Printed per (threads, N): the median wall and process-CPU
times and the ratios ``dropens / TorchUncertainty`` (> 1: dropens slower): default, unshared and
native pool. The three dropens forms give the same probabilities (checked before timing).
TorchUncertainty is an optional import: without it the script prints one line and exits 0.
Run: ``.venv/bin/python benchmarks/bench_peer.py [--sizes 10 100 1000] [--threads 1 2]``.
"""

from __future__ import annotations

import argparse
import copy

import torch
from _common import header, interleaved
from torch import nn

from dropens import convert
from dropens.inference import chunk_sizes, cpu_max_rows, predict, row_bytes

P = 0.1  # why: the dropout.p of configs/dropout/bernoulli.yaml


def cnn(n_classes: int = 10) -> nn.Sequential:
    """Two conv blocks with channel dropout, a hidden layer with element dropout, the head."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.Dropout2d(P),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.Dropout2d(P),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, 128),
        nn.ReLU(),
        nn.Dropout(P),
        nn.Linear(128, n_classes),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--samples", type=int, default=32, help="MC masks T")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args()
    try:
        from torch_uncertainty.models import mc_dropout
    except ImportError:
        try:
            from torch_uncertainty.methods import mc_dropout
        except ImportError:
            print(
                "bench_peer: skipped, torch_uncertainty is not installed (pip install --no-deps "
                "torch-uncertainty einops)"
            )
            return
    torch.manual_seed(0)
    base = cnn().eval()
    ours, native = copy.deepcopy(base), copy.deepcopy(base)
    convert(ours)
    convert(native, fast_pool=False)
    theirs = mc_dropout(copy.deepcopy(base), num_estimators=args.samples, on_batch=True).eval()
    t = args.samples

    def tu(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            logits = theirs(x)
        return logits.softmax(-1).reshape(t, len(x), -1)

    def de(x: torch.Tensor, share: bool = True, model: nn.Module = ours) -> torch.Tensor:
        return predict(model, x, "mc", samples=t, share_prefix=share).member_probs

    x = torch.randn(3, 1, 28, 28)
    forms = []
    for share, model in ((True, ours), (False, ours), (True, native)):
        torch.manual_seed(0)
        forms.append(de(x, share, model))
    assert all(torch.equal(forms[0], f) for f in forms[1:]), "dropens forms disagree"

    print(header("MC dropout T=32: dropens vs TorchUncertainty mc_dropout (same weights)", args))
    print(
        f"{'threads':>7s} {'N':>6s} {'chunk (m x b)':>14s} {'TU ms':>9s} {'dropens ms':>11s} "
        f"{'ratio wall':>11s} {'ratio cpu':>10s} {'unshared ms':>12s} {'ratio wall':>11s} "
        f"{'native pool ms':>15s} {'ratio wall':>11s}"
    )
    for threads in args.threads:
        torch.set_num_threads(threads)
        for n in args.sizes:
            x = torch.randn(n, 1, 28, 28)
            row = row_bytes(ours, x[:1])
            m_c, b_c = chunk_sizes(t, n, row, 256, max_rows=cpu_max_rows(row))
            times = interleaved(
                {
                    "tu": lambda x=x: tu(x),
                    "dropens": lambda x=x: de(x),
                    "unshared": lambda x=x: de(x, share=False),
                    "native": lambda x=x: de(x, model=native),
                },
                args.repeats,
                args.warmup,
            )
            a, b, u, v = times["tu"], times["dropens"], times["unshared"], times["native"]
            print(
                f"{threads:7d} {n:6d} {f'{m_c} x {b_c}':>14s} {a.median * 1e3:9.1f} "
                f"{b.median * 1e3:11.1f} {b.median / a.median:10.2f}x "
                f"{b.cpu_median / a.cpu_median:9.2f}x {u.median * 1e3:12.1f} "
                f"{u.median / a.median:10.2f}x {v.median * 1e3:15.1f} {v.median / a.median:10.2f}x"
            )


if __name__ == "__main__":
    main()
