"""The subnetwork-ensemble family on one backbone: training step and inference time of every method
relative to one plain network, side by side, with parameter counts and counted FLOPs.

Setting: ``--model`` (default the MNIST-1D reference CNN, ``cnn1d``) on real MNIST-1D batches of
100, AdamW; each method at K = 4 members with its config defaults (``configs/method/*.yaml``),
dropout at ``dropout.p=0.1`` (the ``configs/dropout`` default) where the method uses it.

- ``train step``: ``training_loss`` forward + backward + one AdamW step on one batch, in train mode
  (what one optimizer step of ``dropens train`` costs, without Lightning's loop);
- ``inference``: :func:`dropens.inference.predict` on the 1000 test examples with the method's
  ensemble strategy (``members`` for the K-member methods, MC dropout with T = K masks for
  ``dropout``, the deterministic pass for ``plain`` and ``dropout (det.)``).

Printed: median (best) wall and process-CPU times, the ratio to ``plain`` (> 1: slower), the
trainable parameter count and the training FLOPs per example (:mod:`dropens.cost`). Methods not
registered in this checkout are skipped with one line. Run:
``.venv/bin/python benchmarks/bench_family.py [--model cnn1d|mlp] [--threads 1] [--repeats 7]``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from _common import Timing, header, interleaved

from dropens.config import compose, to_container
from dropens.cost import n_params, train_flops_per_example
from dropens.data import build_datamodule
from dropens.inference import predict
from dropens.methods import METHODS, method_class

K = 4
# (label, method overrides, inference strategy, MC samples)
VARIANTS: list[tuple[str, list[str], str, int | None]] = [
    ("plain", ["method=plain"], "deterministic", None),
    ("dropout (det.)", ["method=dropout"], "deterministic", None),
    ("dropout (MC)", ["method=dropout"], "mc", K),
    ("subnets", ["method=subnets", f"method.k={K}"], "members", None),
    ("ensemble", ["method=ensemble", f"method.k={K}"], "members", None),
    ("masksembles", ["method=masksembles", f"method.k={K}"], "members", None),
    ("batchensemble", ["method=batchensemble", f"method.k={K}"], "members", None),
    ("mimo", ["method=mimo", f"method.k={K}"], "members", None),
    ("packed", ["method=packed", f"method.k={K}"], "members", None),
]


def _variant(model: str, overrides: list[str], data) -> torch.nn.Module:
    cfg = to_container(
        compose(
            [f"model={model}", "data=mnist1d", "logger=none", "results_root=unused", *overrides]
        )
    )
    torch.manual_seed(0)
    cls = method_class(cfg["method"]["name"])
    return cls(cls.build_backbone(cfg, data.input_shape, data.n_classes), cfg)


def _train_step(method, x, y) -> Callable[[], None]:
    opt = torch.optim.AdamW(method.parameters(), lr=1e-3)

    def step() -> None:
        method.train()
        opt.zero_grad(set_to_none=True)
        method.training_loss(x, y).backward()
        opt.step()

    return step


def _infer(method, x, strategy: str, samples: int | None) -> Callable[[], None]:
    def run() -> None:
        method.eval()
        with torch.no_grad():
            predict(method.backbone, x, strategy, samples=samples)

    return run


def _rows(times: dict[str, Timing], base: str, extra: dict[str, str]) -> list[str]:
    ref = times[base]
    out = []
    for name, t in times.items():
        out.append(
            f"  {name:16s}{t.median * 1e3:9.2f}{t.best * 1e3:8.2f}{t.cpu_median * 1e3:9.2f}"
            f"{t.median / ref.median:9.2f}x{t.cpu_median / ref.cpu_median:6.2f}x  {extra[name]}"
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="cnn1d", help="a backbone of MNIST-1D: cnn1d | mlp")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    data = build_datamodule(
        to_container(compose(["data=mnist1d", "results_root=unused"]))["data"], seed=0
    )
    data.prepare_data()
    data.setup("fit")
    x, y = data.x_train[:100], data.y_train[:100]
    x_test = data.x_test[:1000]

    train, infer, cost = {}, {}, {}
    for label, overrides, strategy, samples in VARIANTS:
        name = overrides[0].split("=", 1)[1]
        if name not in METHODS:
            print(f"skipped {label}: method={name} is not registered in this checkout")
            continue
        method = _variant(args.model, overrides, data)
        flops = train_flops_per_example(method, x, y)
        cost[label] = f"{n_params(method.backbone):>9,d} params  {flops / 1e6:8.3f} MFLOP/ex"
        train[label] = _train_step(method, x, y)
        infer[label] = _infer(method, x_test, strategy, samples)

    print(header(f"bench_family: model={args.model}, data=mnist1d, K={K}", args))
    cols = f"  {'method':16s}{'wall ms':>9s}{'(best)':>8s}{'cpu ms':>9s}{'/ plain':>10s}{'cpu':>7s}"
    print("\ntrain step (batch 100: forward + backward + AdamW)")
    print(cols + "  parameters / training FLOPs per example")
    print("\n".join(_rows(interleaved(train, args.repeats, args.warmup), "plain", cost)))
    print("\ninference (1000 test examples; members / MC T=K / deterministic)")
    print(cols)
    blank = dict.fromkeys(infer, "")
    print("\n".join(_rows(interleaved(infer, args.repeats, args.warmup), "plain", blank)))


if __name__ == "__main__":
    main()
