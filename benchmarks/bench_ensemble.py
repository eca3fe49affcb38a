"""Training a K = 8 ensemble vectorized (``torch.func``: one stacked forward/backward per step) vs
the same 8 networks trained one after the other, for the same number of steps, side by side.

Setting: the MNIST-1D reference MLP (``configs/model/mlp.yaml``), batch 100 of the real MNIST-1D
training set, AdamW lr 1e-2, 200 steps per network, no dropout (``method.member_dropout=false``).

- ``plain loop``: a bare PyTorch loop on both sides (same batches, same optimizer, same member
  seeds), so only the vectorization differs. Both sides train the same networks
  (tests/test_methods_ensemble.py checks equality in float64; in float32 the two summation orders
  round differently and Adam amplifies that on near-zero gradients, so the float32 trajectories
  drift apart over hundreds of steps, as two runs on different BLAS builds would).
- ``Lightning``: ``Trainer.fit`` of ``method=ensemble method.k=8`` vs 8 fits of one network
  (``method=plain``, the same backbone), validation, logging and checkpoints off; the sequential
  side also pays 8 Trainer set-ups, as 8 separate runs would.

Times are the best of ``--repeats`` runs (each side in turn, so both see the same machine load), on
``--threads`` CPU threads (default 1, as ``cpu_threads`` in configs/train.yaml) or on a GPU
(``--device cuda``). Run: ``.venv/bin/python benchmarks/bench_ensemble.py``.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F

from dropens.config import compose, to_container
from dropens.data import build_datamodule
from dropens.methods import Ensemble, Plain
from dropens.methods.ensemble import ensemble_loss

K, BATCH, STEPS = 8, 100, 200


def _config(*overrides: str) -> dict:
    base = ["data=mnist1d", "model=mlp", f"data.batch_size={BATCH}", f"steps={STEPS}"]
    return to_container(compose([*base, "logger=none", "results_root=/tmp/unused", *overrides]))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _race(fns: list[Callable[[], object]], repeats: int, device: torch.device) -> list[float]:
    """Best wall time of each of ``fns`` over ``repeats`` rounds, the functions interleaved in
    every round (so that a change of the machine's load hits both sides alike)."""
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            _sync(device)
            t = time.perf_counter()
            fn()
            _sync(device)
            best[i] = min(best[i], time.perf_counter() - t)
    return best


def plain_loop(cfg: dict, batches, device: torch.device, repeats: int) -> list[float]:
    shape, n_classes = tuple(batches[0][0].shape[1:]), 10

    def vectorized() -> None:
        stacked = Ensemble.build_backbone(cfg, shape, n_classes).to(device).train()
        opt = torch.optim.AdamW(stacked.parameters(), lr=1e-2)
        for x, y in batches:
            opt.zero_grad(set_to_none=True)
            ensemble_loss(stacked.forward_members(x), y).backward()
            opt.step()

    def sequential() -> None:
        for k in range(K):
            net = Ensemble.build_member(cfg, shape, n_classes, k).to(device).train()
            opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
            for x, y in batches:
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(net(x), y).backward()
                opt.step()

    return _race([vectorized, sequential], repeats, device)


def lightning_fit(accelerator: str, repeats: int) -> list[float]:
    import lightning as L

    from dropens.train import _quiet_lightning

    _quiet_lightning()
    warnings.filterwarnings("ignore")
    trainer_args = {
        "max_steps": STEPS,
        "max_epochs": -1,
        "accelerator": accelerator,
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "limit_val_batches": 0,
        "num_sanity_val_steps": 0,
    }

    def fit(cfg: dict, cls) -> None:
        L.seed_everything(0, verbose=False)
        dm = build_datamodule(cfg["data"], seed=0)
        dm.prepare_data()
        dm.setup("fit")
        method = cls(cls.build_backbone(cfg, dm.input_shape, dm.n_classes), cfg)
        L.Trainer(**trainer_args).fit(method, datamodule=dm)

    ens_cfg = _config("method=ensemble", f"method.k={K}")
    one_cfg = _config("method=plain")
    return _race(
        [lambda: fit(ens_cfg, Ensemble), lambda: [fit(one_cfg, Plain) for _ in range(K)]],
        repeats,
        torch.device(accelerator),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu | cuda")
    parser.add_argument("--threads", type=int, default=1, help="CPU intra-op threads")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-lightning", action="store_true", help="skip the Lightning rows")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    cfg = _config("method=ensemble", f"method.k={K}")
    dm = build_datamodule(cfg["data"], seed=0)
    dm.prepare_data()
    dm.setup("fit")
    g = torch.Generator().manual_seed(0)
    batches = []
    while len(batches) < STEPS:
        order = torch.randperm(len(dm.x_train), generator=g)
        for i in range(0, len(order) - BATCH + 1, BATCH):
            idx = order[i : i + BATCH]
            batches.append((dm.x_train[idx].to(device), dm.y_train[idx].to(device)))
    batches = batches[:STEPS]

    plain_loop(cfg, batches[:10], device, 1)  # warm-up (allocator, vmap batching rules)
    rows = [("plain PyTorch loop", *plain_loop(cfg, batches, device, args.repeats))]
    if not args.no_lightning:
        rows.append(("Lightning Trainer.fit", *lightning_fit(args.device, args.repeats)))

    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu, {torch.get_num_threads()} thread(s), load {os.getloadavg()[0]:.1f}"
    )
    print(
        f"bench_ensemble: K={K} MNIST-1D MLP, batch {BATCH}, {STEPS} steps per net, AdamW "
        f"({where}; best of {args.repeats})"
    )
    print(f"{'path':24s}{'vectorized K=8 (s)':>20s}{'8 sequential (s)':>18s}{'speedup':>9s}")
    for name, vec, seq in rows:
        print(f"{name:24s}{vec:20.2f}{seq:18.2f}{seq / vec:8.1f}x")


if __name__ == "__main__":
    main()
