"""A Lightning training step vs a plain PyTorch loop over the same model, optimizer and batches.

Setting: MNIST-1D (``configs/data/mnist1d.yaml``, batch 100 from the data module's own loader),
the reference MLP and CNN (``configs/model/{mlp,cnn1d}.yaml``), the real
``dropens.methods.DropoutMethod`` (dropout p = 0.1, AdamW lr 1e-2 with the cosine schedule of
``configs/train.yaml`` + the MNIST-1D recipe), composed with ``dropens.config.compose``.

Rows (time per optimizer step over ``--steps`` steps after ``--warmup`` steps of the same run):

- ``Lightning, as configured``: ``Trainer(max_steps, logger=False, enable_checkpointing=False,
  enable_progress_bar=False, enable_model_summary=False)`` fitting the real method with its data
  module: validation every epoch (36 steps; deterministic + MC-8 metrics), ``self.log`` per step,
  the LR scheduler stepped per step;
- ``- validation``: the same with ``limit_val_batches=0`` (no validation loop);
- ``- self.log``: also a ``training_step`` without the per-step ``self.log("train/loss", ...)``;
- ``- validation - self.log, manual optimization``: the same training step under Lightning's manual
  optimization (``automatic_optimization = False``; ``manual_backward``, the wrapped optimizer's
  ``step`` and the scheduler's ``step`` in ``training_step``): the automatic loop's closure and hooks
  are skipped, what it costs is the rest of Lightning's per-step machinery;
- ``- scheduler``: also ``configure_optimizers`` without the LR scheduler: what is left is the
  Lightning loop itself;
- ``plain loop + scheduler``: ``for x, y in loader``: the method's ``training_loss``,
  ``zero_grad``, ``backward``, ``step``, ``scheduler.step`` (the same optimizer and schedule, from
  the method's own ``configure_optimizers``), and ``plain loop`` without the scheduler.

The last column is the ratio to ``plain loop + scheduler`` (the same work as Lightning as
configured, minus validation). Each row is timed inside one run, between the start of step
``warmup`` and the end of step ``warmup + steps`` (a callback for Lightning), so Trainer set-up
and the sanity check are outside the window and per-epoch validation inside it.
``--profile`` adds a cProfile of the ``as configured`` window: Lightning's per-step functions.
Run: ``.venv/bin/python benchmarks/bench_lightning.py [--threads 1] [--repeats 3] [--profile]``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import logging
import pstats
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from statistics import median
from typing import Any

import lightning as L
import torch
from _common import header

from dropens.config import compose, to_container
from dropens.data import build_datamodule
from dropens.methods import DropoutMethod
from dropens.train import _quiet_lightning

BATCH = 100  # why: the MNIST-1D reference batch size (configs/data/mnist1d.yaml)
MODELS = ("mlp", "cnn1d")
BASE = "plain loop + scheduler"


def config(model: str, total_steps: int) -> dict[str, Any]:
    overrides = [
        "data=mnist1d",
        f"model={model}",
        "method=dropout",
        "logger=none",
        f"data.batch_size={BATCH}",
        f"steps={total_steps}",
        "results_root=/tmp/dropens-bench-unused",
    ]
    return to_container(compose(overrides))


def build(cfg: dict[str, Any], cls: type[DropoutMethod]):
    L.seed_everything(0, verbose=False)
    data = build_datamodule(cfg["data"], seed=0)
    data.prepare_data()
    data.setup("fit")
    method = cls(cls.build_backbone(cfg, data.input_shape, data.n_classes), cfg)
    return method, data


class NoLog(DropoutMethod):
    """The real method without the per-step ``self.log``."""

    def training_step(self, batch, batch_idx):
        x, y = batch
        return self.training_loss(x, y)


class NoLogManual(NoLog):
    """... trained with Lightning's manual optimization (the same optimizer and schedule)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        x, y = batch
        opt, sched = self.optimizers(), self.lr_schedulers()
        loss = self.training_loss(x, y)
        opt.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        opt.step()  # the wrapped optimizer: Lightning counts global_step here
        sched.step()


class NoLogNoScheduler(NoLog):
    """... and without the LR scheduler (the optimizer alone)."""

    def configure_optimizers(self):
        return super().configure_optimizers()["optimizer"]


@dataclass
class Step:
    """Wall and process CPU seconds per step."""

    wall: float
    cpu: float


def clocks() -> tuple[float, float]:
    """``(wall, process CPU)`` seconds now."""
    return time.perf_counter(), time.process_time()


def per_step(start: tuple[float, float], stop: tuple[float, float], steps: int) -> Step:
    return Step((stop[0] - start[0]) / steps, (stop[1] - start[1]) / steps)


class Window(L.Callback):
    """Clocks at the start of step ``warmup`` and at the end of step ``warmup + steps``."""

    def __init__(self, warmup: int, steps: int, profiler: cProfile.Profile | None = None) -> None:
        self.warmup, self.steps, self.profiler = warmup, steps, profiler
        self.start: tuple[float, float] | None = None
        self.stop: tuple[float, float] | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup and self.start is None:
            if self.profiler is not None:
                self.profiler.enable()
            self.start = clocks()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup + self.steps and self.stop is None:
            self.stop = clocks()
            if self.profiler is not None:
                self.profiler.disable()


def lightning_step(
    model: str,
    warmup: int,
    steps: int,
    cls: type[DropoutMethod] = DropoutMethod,
    validate: bool = True,
    profiler: cProfile.Profile | None = None,
) -> Step:
    cfg = config(model, warmup + steps)
    method, data = build(cfg, cls)
    window = Window(warmup, steps, profiler)
    extra = {} if validate else {"limit_val_batches": 0, "num_sanity_val_steps": 0}
    trainer = L.Trainer(
        max_steps=warmup + steps,
        max_epochs=-1,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[window],
        **extra,
    )
    trainer.fit(method, datamodule=data)
    assert window.start is not None and window.stop is not None
    return per_step(window.start, window.stop, steps)


def plain_step(model: str, warmup: int, steps: int, scheduler: bool = True) -> Step:
    cfg = config(model, warmup + steps)
    method, data = build(cfg, DropoutMethod)
    optim = method.configure_optimizers()
    opt, sched = optim["optimizer"], optim["lr_scheduler"]["scheduler"]
    method.train()
    loader = data.train_dataloader()
    step, start = 0, None
    while step < warmup + steps:
        for x, y in loader:
            if step == warmup:
                start = clocks()
            loss = method.training_loss(x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if scheduler:
                sched.step()
            step += 1
            if step == warmup + steps:
                break
    assert start is not None
    return per_step(start, clocks(), steps)


def variants(model: str, warmup: int, steps: int) -> dict[str, Callable[[], Step]]:
    return {
        "Lightning, as configured": lambda: lightning_step(model, warmup, steps),
        "  - validation": lambda: lightning_step(model, warmup, steps, validate=False),
        "  - validation - self.log": lambda: lightning_step(
            model, warmup, steps, NoLog, validate=False
        ),
        "  - validation - self.log, manual optimization": lambda: lightning_step(
            model, warmup, steps, NoLogManual, validate=False
        ),
        "  - validation - self.log - scheduler": lambda: lightning_step(
            model, warmup, steps, NoLogNoScheduler, validate=False
        ),
        "plain loop + scheduler": lambda: plain_step(model, warmup, steps),
        "plain loop": lambda: plain_step(model, warmup, steps, scheduler=False),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (cpu_threads)")
    parser.add_argument("--steps", type=int, default=300, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=50, help="untimed steps before the window")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="cProfile the Lightning window")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    _quiet_lightning()
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # "GPU available: ..." lines
    warnings.filterwarnings("ignore", module="lightning")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")

    results: dict[str, dict[str, list[Step]]] = {}
    for model in MODELS:
        runs = variants(model, args.warmup, args.steps)
        times: dict[str, list[Step]] = {name: [] for name in runs}
        for _ in range(args.repeats):  # interleaved: every round runs every variant
            for name, fn in runs.items():
                times[name].append(fn())
        results[model] = times

    title = f"bench_lightning: time per training step, MNIST-1D, batch {BATCH}, AdamW"
    timing = (
        f"median of {args.repeats} interleaved runs; each run times steps "
        f"{args.warmup}..{args.warmup + args.steps} (after {args.warmup} warm-up steps); "
        "cpu = process CPU time"
    )
    print(header(title, args, timing))
    names = list(next(iter(results.values())))
    width = max(len(n) for n in names) + 2
    print(f"{'':{width}s}" + "".join(f"{'-- ' + m + ' ' + '-' * 36:44s}" for m in MODELS))
    cols = f"{'wall ms':>9s}{'(best)':>8s}{'cpu ms':>8s}{'ratio':>7s}{'best':>6s}{'cpu':>6s}"
    print((f"{'variant':{width}s}" + f"{cols}{'':6s}" * len(MODELS)).rstrip())
    for name in names:
        cells = ""
        for model in MODELS:
            mine, base = results[model][name], results[model][BASE]
            wall, cpu = median(s.wall for s in mine), median(s.cpu for s in mine)
            best = min(s.wall for s in mine)
            cells += (
                f"{wall * 1e3:9.2f}{best * 1e3:8.2f}{cpu * 1e3:8.2f}"
                f"{wall / median(s.wall for s in base):6.2f}x"
                f"{best / min(s.wall for s in base):5.2f}x"
                f"{cpu / median(s.cpu for s in base):5.2f}x{'':6s}"
            )
        print(f"{name:{width}s}{cells}".rstrip())
    print(
        f"ratio: time per step / that of '{BASE}': median wall, best wall, median cpu; "
        "target <= 1.3x"
    )

    if args.profile:
        for model in MODELS:
            profiler = cProfile.Profile()
            lightning_step(model, args.warmup, args.steps, profiler=profiler)
            out = io.StringIO()
            stats = pstats.Stats(profiler, stream=out).sort_stats("cumulative")
            stats.print_stats(r"lightning|dropens|torch/optim", 25)
            print(f"\ncProfile of the 'as configured' window, {model}, {args.steps} steps:")
            print("\n".join(line for line in out.getvalue().splitlines()[6:] if line.strip()))


if __name__ == "__main__":
    main()
