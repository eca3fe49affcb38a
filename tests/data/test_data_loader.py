"""TensorLoader: coverage per epoch, deterministic reshuffling, partial batches, private RNG."""

from __future__ import annotations

import pytest
import torch

from dropens.data import TensorLoader, random_crop_flip
from dropens.data.loader import epoch_generator


def _loader(n: int = 103, batch_size: int = 10, **kwargs) -> TensorLoader:
    x = torch.arange(n, dtype=torch.float32)[:, None] * torch.ones(1, 3)  # row i holds i
    y = torch.arange(n)
    return TensorLoader(x, y, batch_size, **kwargs)


def _epoch(loader: TensorLoader) -> tuple[list[int], torch.Tensor]:
    batches = list(loader)
    sizes = [len(yb) for _, yb in batches]
    ys = torch.cat([yb for _, yb in batches])
    for xb, yb in batches:  # x and y stay paired
        assert torch.equal(xb[:, 0].long(), yb)
    return sizes, ys


@pytest.mark.parametrize("shuffle", [False, True])
def test_every_example_once_per_epoch_with_partial_last_batch(shuffle):
    loader = _loader(103, 10, shuffle=shuffle, seed=1)
    assert len(loader) == 11
    for _ in range(2):
        sizes, ys = _epoch(loader)
        assert sizes == [10] * 10 + [3]
        assert torch.equal(ys.sort().values, torch.arange(103))
    if not shuffle:
        assert torch.equal(ys, torch.arange(103))


def test_drop_last_drops_only_the_partial_batch():
    loader = _loader(103, 10, shuffle=True, seed=0, drop_last=True)
    assert len(loader) == 10
    sizes, ys = _epoch(loader)
    assert sizes == [10] * 10
    assert len(set(ys.tolist())) == 100
    assert len(_loader(100, 10, drop_last=True)) == len(_loader(100, 10)) == 10


def test_reshuffles_every_epoch_deterministically_from_seed_and_epoch():
    a = _loader(seed=7, shuffle=True)
    a0, a1, a2 = (_epoch(a)[1] for _ in range(3))
    assert not torch.equal(a0, a1) and not torch.equal(a1, a2)
    b = _loader(seed=7, shuffle=True)
    assert torch.equal(_epoch(b)[1], a0) and torch.equal(_epoch(b)[1], a1)
    c = _loader(seed=7, shuffle=True)
    c.set_epoch(2)  # what Lightning does (via loader.sampler) at each epoch start / on resume
    assert torch.equal(_epoch(c)[1], a2)
    d = _loader(seed=7, shuffle=True)
    d.sampler.set_epoch(1)
    assert torch.equal(_epoch(d)[1], a1)
    assert not torch.equal(_epoch(_loader(seed=8, shuffle=True))[1], a0)


def test_order_is_drawn_lazily_at_the_first_batch():
    reference = _loader(seed=7, shuffle=True)
    reference.set_epoch(5)
    expected = _epoch(reference)[1]
    loader = _loader(seed=7, shuffle=True)
    iter(loader)  # a probe that never asks for a batch consumes no epoch
    it = iter(loader)
    loader.set_epoch(5)  # Lightning: iter() first, then sampler.set_epoch(e), then batches
    assert torch.equal(torch.cat([yb for _, yb in it]), expected)
    assert loader.epoch == 6


def test_never_touches_the_global_rng():
    torch.manual_seed(0)
    state = torch.get_rng_state()
    first = _epoch(_loader(seed=3, shuffle=True, transform=lambda x, g: x))[1]
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(12345)
    assert torch.equal(_epoch(_loader(seed=3, shuffle=True))[1], first)


def test_epoch_generators_differ_by_seed_and_epoch():
    draws = {
        (s, e): torch.randint(0, 2**31, (4,), generator=epoch_generator(s, e)).tolist()
        for s in range(3)
        for e in range(3)
    }
    assert len({tuple(v) for v in draws.values()}) == 9
    assert draws[(1, 2)] == torch.randint(0, 2**31, (4,), generator=epoch_generator(1, 2)).tolist()


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="differ in length"):
        TensorLoader(torch.zeros(3, 1), torch.zeros(4), 2)
    with pytest.raises(ValueError, match="batch_size"):
        TensorLoader(torch.zeros(3, 1), torch.zeros(3), 0)


def test_empty_set_yields_no_batches():
    loader = TensorLoader(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long), 4)
    assert len(loader) == 0 and list(loader) == []


def test_random_crop_flip_is_a_shift_or_flip_of_each_input():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 2, 6, 5)
    pad = 2
    out = random_crop_flip(x, g, padding=pad)
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (pad,) * 4)
    n_flipped = n_shifted = 0
    for i in range(len(x)):
        candidates = {}
        for dy in range(2 * pad + 1):
            for dx in range(2 * pad + 1):
                crop = padded[i, :, dy : dy + 6, dx : dx + 5]
                candidates[(dy, dx, False)] = crop
                candidates[(dy, dx, True)] = crop.flip(-1)
        matches = [k for k, c in candidates.items() if torch.equal(c, out[i])]
        assert matches, f"example {i} is not a shifted/flipped copy"
        dy, dx, flipped = matches[0]
        n_flipped += flipped
        n_shifted += (dy, dx) != (pad, pad)
    assert 0 < n_flipped < len(x) and n_shifted > 0
    again = random_crop_flip(x, torch.Generator().manual_seed(0), padding=pad)
    assert torch.equal(again, out)


def test_transform_draws_from_the_loader_generator():
    x = torch.randn(20, 1, 4, 4)
    y = torch.arange(20)
    runs = [
        [xb for xb, _ in TensorLoader(x, y, 8, shuffle=True, seed=5, transform=random_crop_flip)]
        for _ in range(2)
    ]
    assert all(torch.equal(a, b) for a, b in zip(*runs))
