"""MC-dropout inference batched on the batch axis ``(m b)`` vs a Python loop of single passes.

Setting: the MNIST-1D reference MLP (``configs/model/mlp.yaml``, dropout p = 0.1 at its hidden
sites, untrained weights: inference cost does not depend on them), the whole MNIST-1D test set
(1000 examples, ``configs/data/mnist1d.yaml``), T = 32 masks.

- ``loop``: ``T`` single passes over the 1000 examples under ``control.mc`` (log-softmax, exp,
  stacked into ``[T, N, C]``: the same output as ``predict``);
- ``predict``: ``dropens.inference.predict(model, x, "mc", T)`` with its defaults (256 MB budget;
  on a CPU, chunks capped to a cache-sized working set, ``inference.cpu_max_rows``), and the same
  at a fixed ``max_rows`` stacked rows per forward (the chunk-size sweep; ``T x N`` rows is one
  forward over everything, the behaviour without the CPU cap).

A second table repeats loop vs ``predict`` on fewer examples per pass: batching removes a
per-pass cost (Python, dispatch, ~10 module calls), so it pays most when a pass is short.
``--profile`` prints where the batched call spends its time (``torch.profiler``, by op).

Times: median (and best) wall time of ``--repeats`` rounds after ``--warmup`` rounds, the variants
interleaved in every round so that a change of the machine's load hits all of them alike.
Run: ``.venv/bin/python benchmarks/bench_mc.py [--threads 1] [--repeats 9] [--profile]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import header, interleaved, table
from omegaconf import OmegaConf

from dropens import control
from dropens.data import build_datamodule
from dropens.inference import chunk_sizes, cpu_max_rows, predict, row_bytes
from dropens.models import build_model

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
P = 0.1  # why: the dropout.p of configs/dropout/bernoulli.yaml


def mlp_and_test_set() -> tuple[torch.nn.Module, torch.Tensor]:
    data = build_datamodule(OmegaConf.load(CONFIGS / "data" / "mnist1d.yaml"), seed=0)
    data.setup("test")
    dropout = OmegaConf.load(CONFIGS / "dropout" / "bernoulli.yaml")
    dropout.p = P
    torch.manual_seed(0)
    model = build_model(
        OmegaConf.load(CONFIGS / "model" / "mlp.yaml"), dropout, data.input_shape, data.n_classes
    )
    return model.eval(), data.x_test


def loop(model: torch.nn.Module, x: torch.Tensor, t: int) -> torch.Tensor:
    with torch.no_grad(), control.mc(model):
        return torch.stack([F.log_softmax(model(x), dim=-1).exp() for _ in range(t)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (cpu_threads)")
    parser.add_argument("--samples", type=int, default=32, help="MC masks T")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--profile", action="store_true", help="profile the batched call")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, x = mlp_and_test_set()
    t, n = args.samples, len(x)
    row = row_bytes(model, x[:1])

    variants = {"loop: T single passes": lambda: loop(model, x, t)}
    m_c, b_c = chunk_sizes(t, n, row, 256, max_rows=cpu_max_rows(row))
    variants[f"predict, default ({m_c} members x {b_c} examples)"] = lambda: predict(
        model, x, "mc", t
    )
    for rows in (512, 4096, t * n):  # one forward of all T x N rows: the uncapped behaviour
        m_c, b_c = chunk_sizes(t, n, row, 1e6, max_rows=rows)
        variants[f"predict, max_rows={rows} ({m_c} members x {b_c} examples)"] = lambda rows=rows: (
            predict(model, x, "mc", t, max_rows=rows)
        )
    times = interleaved(variants, args.repeats, args.warmup)
    print(header(f"bench_mc: MC dropout T={t}, MNIST-1D MLP p={P}, N={n} test examples", args))
    print(table(times, "loop: T single passes"))

    print(f"\nloop vs predict (defaults) on the first N test examples, T={t} (medians)")
    small = []
    for size in (10, 100, 1000):
        xs = x[:size]
        pair = interleaved(
            {
                "loop": lambda xs=xs: loop(model, xs, t),
                "predict": lambda xs=xs: predict(model, xs, "mc", t),
            },
            args.repeats,
            args.warmup,
        )
        small.append((size, pair["loop"], pair["predict"]))
    print(f"{'N':>6s}{'loop ms':>10s}{'predict ms':>12s}{'speed-up wall':>15s}{'cpu':>7s}")
    for size, lo, pr in small:
        print(
            f"{size:6d}{lo.median * 1e3:10.2f}{pr.median * 1e3:12.2f}"
            f"{lo.median / pr.median:14.2f}x{lo.cpu_median / pr.cpu_median:6.2f}x"
        )

    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        predict(model, x, "mc", t)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(3):
                predict(model, x, "mc", t)
        print("\nprofile of 3 batched calls (self CPU time by op):")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
