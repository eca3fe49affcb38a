"""Training-step time of the MNIST-1D reference CNN with 1 vs 2 torch CPU threads, side by side.

Why it exists: dropens defaults to ``cpu_threads: 1`` (configs/train.yaml). The backbones are tiny;
with two OpenMP threads on a 2-core machine where anything else runs, the threads spin-wait and a
step becomes an order of magnitude slower. Run: ``.venv/bin/python benchmarks/bench_threads.py``.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time

CHILD = r"""
import sys, time, torch
from omegaconf import OmegaConf
from dropens.models import build_model
torch.set_num_threads(int(sys.argv[1]))
torch.manual_seed(0)
cfg = OmegaConf.load("configs/model/cnn1d.yaml")
model = build_model(cfg, {"p": 0.1}, (1, 40), 10)
opt = torch.optim.AdamW(model.parameters(), 1e-2)
x, y = torch.randn(100, 1, 40), torch.randint(0, 10, (100,))
def step():
    loss = torch.nn.functional.cross_entropy(model(x), y)
    opt.zero_grad(); loss.backward(); opt.step()
for _ in range(20):
    step()
times = []
for _ in range(5):
    t = time.perf_counter()
    for _ in range(50):
        step()
    times.append((time.perf_counter() - t) / 50 * 1e3)
print(min(times))
"""


def step_ms(threads: int) -> float:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(threads)],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    load = os.getloadavg()[0]
    rows = []
    for _ in range(3):  # interleave to share the machine's load fairly
        rows.append((step_ms(1), step_ms(2)))
    one = statistics.median(r[0] for r in rows)
    two = statistics.median(r[1] for r in rows)
    print(
        f"MNIST-1D CNN training step, batch 100 (cpus={os.cpu_count()}, load avg {load:.1f}, {time.strftime('%F %T')})"
    )
    print(f"{'threads':>8s} {'ms/step':>9s}")
    print(f"{1:>8d} {one:9.2f}")
    print(f"{2:>8d} {two:9.2f}")
    print(f"ratio 2-thread / 1-thread: {two / one:.2f}x")


if __name__ == "__main__":
    main()
