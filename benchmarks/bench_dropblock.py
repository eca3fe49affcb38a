"""DropBlock keep-mask: one b x b max-pool vs separable per-axis pools (``masks.block_max`` picks).

Both give the same mask (checked here before timing); the separable form does ``d * b`` comparisons
per position instead of ``b^d``; these ratios set ``block_max``'s rule (separable iff b^d > 2 d b). Shapes are the conv maps of the ``structured`` study's Fashion-MNIST
CNN (batch 128, 8 and 16 channels at 28x28 and 14x14) with block widths 3 and 7. Run:
``.venv/bin/python benchmarks/bench_dropblock.py [--threads 1] [--repeats 20]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from _common import bench_args, header, interleaved, table


def separable(seeds: torch.Tensor, b: int) -> torch.Tensor:
    """The per-axis form ``masks.block_max`` uses for large blocks (forced here for every b)."""
    seeds = F.max_pool2d(seeds, kernel_size=(b, 1), stride=1)
    return F.max_pool2d(seeds, kernel_size=(1, b), stride=1)


def main() -> None:
    args = bench_args(__doc__, repeats=20, warmup=3)
    print(header("DropBlock keep-mask: b x b max-pool vs separable per-axis pools", args))
    g = torch.Generator().manual_seed(0)
    for channels, side, b in ((8, 28, 3), (8, 28, 7), (16, 14, 3), (16, 14, 7)):
        seeds = (torch.rand(128, channels, side + b - 1, side + b - 1, generator=g) < 0.02).float()
        square = F.max_pool2d(seeds, kernel_size=b, stride=1)
        assert torch.equal(square, separable(seeds, b)), "the two forms must give the same mask"
        times = interleaved(
            {
                f"{b}x{b} max-pool": lambda s=seeds, b=b: F.max_pool2d(s, kernel_size=b, stride=1),
                "separable": lambda s=seeds, b=b: separable(s, b),
            },
            args.repeats,
            args.warmup,
        )
        print(f"\n(128, {channels}, {side}, {side}), block {b}")
        print(table(times, f"{b}x{b} max-pool"))


if __name__ == "__main__":
    main()
