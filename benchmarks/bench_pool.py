"""2x2 max-pooling: ``nn.MaxPool2d(2)`` vs :func:`dropens.pooling.max_pool2x2` (same values,
checked before timing), at the Fashion-MNIST CNN's first pooled map.

Rows: the inference forward (``torch.no_grad``) on ``(B, 16, 28, 28)`` ReLU outputs: ``B = 128`` (a
training batch) and ``B = 512`` (an MC chunk of stacked rows). (Under autograd ``max_pool2x2`` *is*
the native kernel.) A second table times the whole small CNN of the ``family`` study
(``configs/model/cnn2d.yaml`` with channels [16, 32], hidden 64, dropout p = 0.05 at ``conv`` and
``hidden``) in MC inference (T = 16 over 1000 images) with each pooling.
Run: ``.venv/bin/python benchmarks/bench_pool.py [--threads 1] [--repeats 9]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from _common import bench_args, header, interleaved, table

from dropens.inference import predict
from dropens.models import build_model
from dropens.pooling import MaxPool2x2, max_pool2x2


def family_cnn() -> torch.nn.Module:
    spec = {"p": 0.05, "dist": "bernoulli", "structure": "element", "scale": "inverted"}
    spec |= {"block_size": None, "share_channels": False}
    arch = {"name": "cnn2d", "channels": [16, 32], "hidden": 64, "batchnorm": False}
    return build_model(arch | {"dropout_sites": ["conv", "hidden"]}, spec, (1, 28, 28), 10).eval()


def with_native_pools(model: torch.nn.Module) -> torch.nn.Module:
    for name, module in list(model.named_modules()):
        if isinstance(module, MaxPool2x2):
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, leaf, torch.nn.MaxPool2d(2))
    return model


def main() -> None:
    args = bench_args(__doc__, repeats=9, warmup=2)
    torch.manual_seed(0)
    print(header("bench_pool: 2x2 max-pooling, nn.MaxPool2d(2) vs dropens max_pool2x2", args))
    for b in (128, 512):
        x = torch.relu(torch.randn(b, 16, 28, 28))
        assert torch.equal(F.max_pool2d(x, 2), max_pool2x2(x))
        with torch.no_grad():
            times = interleaved(
                {
                    "native forward": lambda x=x: F.max_pool2d(x, 2),
                    "dropens forward": lambda x=x: max_pool2x2(x),
                },
                args.repeats,
                args.warmup,
            )
        print(f"\ninference, ({b}, 16, 28, 28)")
        print(table(times, "native forward"))
    ours = family_cnn()
    native = with_native_pools(family_cnn())
    native.load_state_dict(ours.state_dict())
    x = torch.randn(1000, 1, 28, 28)
    torch.manual_seed(1)
    a = predict(native, x, "mc", 16).member_probs
    torch.manual_seed(1)
    assert torch.equal(a, predict(ours, x, "mc", 16).member_probs)
    times = interleaved(
        {
            "native pools": lambda: predict(native, x, "mc", 16),
            "dropens pools": lambda: predict(ours, x, "mc", 16),
        },
        max(3, args.repeats // 3),
        1,
    )
    print("\nMC inference, family CNN (Fashion arm), T = 16, N = 1000 (same member probabilities)")
    print(table(times, "native pools"))


if __name__ == "__main__":
    main()
