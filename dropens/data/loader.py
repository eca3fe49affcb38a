"""In-memory batch iteration over tensors: what the data modules hand to Lightning.

Small datasets live whole in (GPU) memory, so a ``DataLoader(TensorDataset)`` — which indexes
one example at a time and collates in Python — is pure overhead. :class:`TensorLoader` slices
whole batches with one indexing op, uses no worker processes and owns its randomness: the
order of epoch ``e`` is a pure function of ``(seed, e)``, drawn from a private
``torch.Generator`` (the global RNG is never touched, so model seeds and data order don't
interact).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

BatchTransform = Callable[[Tensor, torch.Generator], Tensor]


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator seeded from ``(seed, epoch)`` (mixed by numpy's SeedSequence)."""
    state = np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


class _EpochHook:
    """Exposed as ``loader.sampler``: Lightning calls ``sampler.set_epoch(e)`` at each epoch
    start (also after resuming from a checkpoint), which keeps the order a function of the
    trainer's epoch rather than of how many times the loader was iterated."""

    def __init__(self, loader: TensorLoader) -> None:
        self._loader = loader

    def set_epoch(self, epoch: int) -> None:
        self._loader.set_epoch(epoch)


class TensorLoader:
    """Iterate ``(x, y)`` batches of in-memory tensors; Lightning accepts it as a dataloader.

    Args:
        x, y: tensors with the same first dimension (examples), on any device.
        batch_size: examples per batch; the last batch is partial unless ``drop_last``.
        shuffle: new permutation every epoch, a pure function of ``(seed, epoch)``.
        seed: seed of the permutations (and of ``transform``'s randomness).
        drop_last: drop the last partial batch.
        transform: optional ``f(x_batch, generator) -> x_batch`` (train-time augmentation);
            it must draw its randomness from the given generator.

    Each pass uses the current :attr:`epoch` then increments it (read when the first batch is
    requested); :meth:`set_epoch` sets it explicitly (Lightning does this through
    ``loader.sampler`` at every epoch start; :class:`dropens.methods.base.Method` then sets it
    from the optimizer step, which stays right after resuming from a checkpoint).
    Not sharded across processes: with DDP every rank would see the whole set (the project runs
    on one device).
    """

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        transform: BatchTransform | None = None,
    ) -> None:
        if len(x) != len(y):
            raise ValueError(f"x and y differ in length: {len(x)} != {len(y)}")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.x, self.y = x, y
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.drop_last = drop_last
        self.transform = transform
        self.epoch = 0
        self.sampler = _EpochHook(self)
        self.batch_sampler = None  # Lightning probes it next to `sampler`

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        n = len(self.x)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        # A generator: nothing below runs until the first batch is requested, as with a
        # DataLoader's sampler. Lightning calls iter() before set_epoch(e) at each epoch
        # start (and probes iter() once while checking the loader); a lazy draw sees the
        # right epoch and the probe does not consume one.
        epoch, self.epoch = self.epoch, self.epoch + 1
        generator = epoch_generator(self.seed, epoch)
        order = None
        if self.shuffle:
            order = torch.randperm(len(self.x), generator=generator).to(self.x.device)
        b = self.batch_size
        for i in range(len(self)):
            if order is None:
                xb, yb = self.x[i * b : (i + 1) * b], self.y[i * b : (i + 1) * b]
            else:
                idx = order[i * b : (i + 1) * b]  # index_select: ~2x faster than x[idx]
                xb, yb = self.x.index_select(0, idx), self.y.index_select(0, idx)
            if self.transform is not None:
                xb = self.transform(xb, generator)
            yield xb, yb

    def __repr__(self) -> str:
        return (
            f"TensorLoader(n={len(self.x)}, batch_size={self.batch_size}, "
            f"shuffle={self.shuffle}, seed={self.seed}, drop_last={self.drop_last})"
        )


def random_crop_flip(x: Tensor, generator: torch.Generator, padding: int = 4) -> Tensor:
    """Random translation by up to ``padding`` pixels (zero padding) + random horizontal flip.

    The standard CIFAR ResNet/WRN augmentation (He et al. 2016; Zagoruyko & Komodakis 2016),
    done on a whole ``(N, C, H, W)`` batch at once on its device. Inputs are already
    standardized, so the padding value 0 is the per-channel train mean (torchvision pads black).
    Random numbers are drawn on the CPU ``generator`` and then moved, so runs are reproducible
    on any device.
    """
    n, _, h, w = x.shape
    shifts = torch.randint(0, 2 * padding + 1, (2, n), generator=generator).to(x.device)
    flips = (torch.rand(n, generator=generator) < 0.5).to(x.device)
    padded = F.pad(x, (padding, padding, padding, padding))
    rows = shifts[0, :, None] + torch.arange(h, device=x.device)  # (N, H)
    cols = shifts[1, :, None] + torch.arange(w, device=x.device)  # (N, W)
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    batch = torch.arange(n, device=x.device)[:, None, None]
    # advanced indices around a slice put their broadcast shape first: (N, H, W, C)
    out = padded[batch, :, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


AUGMENTATIONS: dict[str, BatchTransform] = {"crop_flip": random_crop_flip}
