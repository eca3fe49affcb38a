"""The common base of every data module: whole datasets as tensors, deterministic splits.

Splits. The validation set is a stratified ``val_fraction`` of the official training set
(and, for datasets without an official test set, the test set is a stratified
``test_fraction`` of all examples, carved first). Both are pure functions of ``split_seed``,
which is *not* the training seed: it stays fixed (default 0) across the seeds of a study, so
every seed trains on the same examples and only initialisation, data order and dropout masks
vary. The training seed only drives the order of training batches (and augmentation).

Preprocessing. Inputs are float32 ``(N, *input_shape)``, channels first; where standard they
are standardized per channel with the mean/std of the final training split (after the
validation examples are removed). ``normalize`` applies the same map to new raw inputs (e.g.
corrupted test images). Labels are int64.
"""

from __future__ import annotations

import inspect
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import numpy as np
import torch
from torch import Tensor

from dropens.data.loader import AUGMENTATIONS, TensorLoader
from dropens.errors import ConfigError, check_choice

DEFAULT_ROOT = "~/.cache/dropens/data"
VAL_STREAM, TEST_STREAM = 0, 1  # independent random streams of one split_seed


def resolve_root(root: str | os.PathLike | None) -> Path:
    """The data root: ``root``, else ``$DROPENS_DATA``, else ``~/.cache/dropens/data``."""
    if root is None or str(root) == "":
        root = os.environ.get("DROPENS_DATA") or DEFAULT_ROOT
    return Path(os.path.expandvars(os.path.expanduser(str(root))))


def stratified_split(
    y: np.ndarray | Tensor, fraction: float, split_seed: int, stream: int = VAL_STREAM
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices ``0..N-1`` into ``(keep, take)``, sorted, ``take`` holding
    ``round(fraction * n_c)`` random examples of each class ``c``.

    A pure function of ``(labels, fraction, split_seed, stream)`` (numpy generator, no global RNG).
    """
    y = np.asarray(y.cpu() if isinstance(y, Tensor) else y)
    rng = np.random.default_rng([int(split_seed), int(stream)])
    taken = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        k = int(np.floor(fraction * len(idx) + 0.5))
        taken.append(rng.permutation(idx)[:k])
    take = np.sort(np.concatenate(taken)) if taken else np.zeros(0, dtype=np.int64)
    keep = np.setdiff1d(np.arange(len(y)), take)
    return keep.astype(np.int64), take.astype(np.int64)


def atomic_save_npz(path: Path, **arrays: np.ndarray) -> None:
    """Write an ``.npz`` so that readers see either nothing or the whole file
    (concurrent runs of a sweep may build the same cache)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def ensure_cached(path: Path, make: Callable[[], dict[str, np.ndarray]]) -> None:
    """Build the arrays with ``make()`` and cache them at ``path``, unless already there."""
    if not path.is_file():
        atomic_save_npz(path, **make())


def cached_arrays(path: Path, make: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Load the arrays cached at ``path``; on a miss build them with ``make()`` and cache them."""
    ensure_cached(path, make)
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def check_fraction(field: str, value: float) -> float:
    value = float(value)
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"{field}={value!r} is not valid; must be in [0, 1)")
    return value


def _check_positive_int(field: str, value: int) -> int:
    if isinstance(value, bool) or int(value) != value or int(value) < 1:
        raise ConfigError(f"{field}={value!r} is not valid; must be a positive integer")
    return int(value)


class TensorDataModule(L.LightningDataModule):
    """A dataset held whole as tensors, with deterministic train/val/test splits.

    Subclasses set the class attributes and implement :meth:`load_arrays` (and
    :meth:`prepare_data` when files must be fetched or generated first).

    Attributes (after :meth:`setup`): ``x_train, y_train, x_val, y_val, x_test, y_test``;
    ``mean``, ``std`` (per channel, shape ``(C,)``; 0 and 1 when not standardized).

    Args:
        root: data root (``None``: ``$DROPENS_DATA`` or ``~/.cache/dropens/data``).
        batch_size: training batch size.
        eval_batch_size: batch size of the validation and test loaders.
        val_fraction: stratified fraction of the official training set held out for
            validation, in [0, 1).
        split_seed: seed of the val (and test, where carved) split; keep it fixed across
            training seeds.
        augment: ``None`` or the name of a train-batch augmentation (``crop_flip``).
        seed: training seed: order of training batches and augmentation draws.
    """

    name: ClassVar[str] = ""
    input_shape: tuple[int, ...] = ()
    n_classes: int = 0
    class_names: tuple[str, ...] = ()
    standardize: ClassVar[bool] = True

    def __init__(
        self,
        *,
        root: str | os.PathLike | None = None,
        batch_size: int = 128,
        eval_batch_size: int = 1000,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        augment: str | None = None,
        eval_limit: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.root = resolve_root(root)
        # only the first `eval_limit` test examples (tiny smoke forms of studies: `+data.eval_limit=256`;
        # absent from the data configs so that ordinary run ids do not change)
        self.eval_limit = (
            None if eval_limit is None else _check_positive_int("data.eval_limit", eval_limit)
        )
        self.batch_size = _check_positive_int("data.batch_size", batch_size)
        self.eval_batch_size = _check_positive_int("data.eval_batch_size", eval_batch_size)
        self.val_fraction = check_fraction("data.val_fraction", val_fraction)
        self.split_seed = int(split_seed)
        check_choice("data.augment", augment, [None, *AUGMENTATIONS])
        if augment is not None and len(self.input_shape) != 3:
            raise ConfigError(
                f"data.augment={augment!r} is not valid for data.name={self.name!r}; "
                "it needs 2-D images (use null)"
            )
        self.augment = augment
        self.seed = int(seed)
        self.x_train: Tensor | None = None
        self.y_train: Tensor | None = None
        self.x_val: Tensor | None = None
        self.y_val: Tensor | None = None
        self.x_test: Tensor | None = None
        self.y_test: Tensor | None = None
        self.mean: Tensor | None = None
        self.std: Tensor | None = None

    # --- subclass hooks -------------------------------------------------------------------

    def prepare_data(self) -> None:
        """Make the files available (download / decompress / generate and cache). Idempotent;
        Lightning calls it on one process, :meth:`setup` calls it again (cheap when done)."""

    def load_arrays(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(x_train, y_train, x_test, y_test)``: the official train set and the test set,
        inputs float32 ``(N, *input_shape)`` in raw scale, labels int64."""
        raise NotImplementedError

    # --- Lightning ------------------------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        """Load and split once; move the tensors to the trainer's device when attached."""
        if self.x_train is None:
            self.prepare_data()
            self._build(*self.load_arrays())
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            self.to(trainer.strategy.root_device)

    def _build(self, x_train: Tensor, y_train: Tensor, x_test: Tensor, y_test: Tensor) -> None:
        keep, take = stratified_split(y_train, self.val_fraction, self.split_seed, VAL_STREAM)
        keep, take = torch.from_numpy(keep), torch.from_numpy(take)
        x_val, y_val = x_train[take], y_train[take]
        x_train, y_train = x_train[keep], y_train[keep]
        channels = x_train.shape[1]
        if self.standardize:
            dims = [d for d in range(x_train.dim()) if d != 1]
            self.mean = x_train.mean(dim=dims)
            self.std = x_train.std(dim=dims, correction=0).clamp_min(1e-8)
        else:
            self.mean, self.std = torch.zeros(channels), torch.ones(channels)
        # in place: these are fresh copies (indexing / load_arrays), and CIFAR-size sets are big
        self.x_train, self.y_train = self._normalize_(x_train), y_train.long()
        self.x_val, self.y_val = self._normalize_(x_val), y_val.long()
        self.x_test, self.y_test = self._normalize_(x_test.contiguous()), y_test.long()

    def normalize(self, x: Tensor) -> Tensor:
        """Map raw inputs ``(N, C, *spatial)`` the way the stored ones were (train mean/std).

        "Raw" is the scale :meth:`load_arrays` returns: pixels / 255 in [0, 1] for the image
        sets, 0..16 for ``digits``; e.g. corrupt raw test images, then ``normalize`` them.
        """
        self._require_setup()
        shape = (1, -1) + (1,) * (x.dim() - 2)
        mean, std = self.mean.to(x.device).view(shape), self.std.to(x.device).view(shape)
        return ((x.float() - mean) / std).contiguous()

    def _normalize_(self, x: Tensor) -> Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return x.sub_(self.mean.view(shape)).div_(self.std.view(shape))

    def to(self, device: torch.device | str) -> TensorDataModule:
        """Move every stored tensor to ``device`` (no copy when already there)."""
        self._require_setup()
        for attr in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test", "mean", "std"):
            setattr(self, attr, getattr(self, attr).to(device))
        return self

    drop_last_train: bool = False

    def train_dataloader(self) -> TensorLoader:
        self._require_setup()
        transform = AUGMENTATIONS[self.augment] if self.augment else None
        return TensorLoader(
            self.x_train,
            self.y_train,
            self.batch_size,
            shuffle=True,
            seed=self.seed,
            transform=transform,
            # a last batch of ONE example cannot be trained with BatchNorm (no batch statistics):
            # backbones with BN drop it (train.prepare sets this); others keep every example
            drop_last=self.drop_last_train,
        )

    def val_dataloader(self) -> TensorLoader:
        self._require_setup()
        return TensorLoader(self.x_val, self.y_val, self.eval_batch_size)

    def test_dataloader(self) -> TensorLoader:
        self._require_setup()
        return TensorLoader(self.x_test, self.y_test, self.eval_batch_size)

    def eval_sets(self) -> dict[str, tuple[Tensor, Tensor]]:
        """Named ``(x, y)`` evaluation sets: ``clean`` is the test set; studies add shifted ones."""
        self._require_setup()
        if self.eval_limit is None:
            return {"clean": (self.x_test, self.y_test)}
        n = self.eval_limit
        return {"clean": (self.x_test[:n], self.y_test[:n])}

    def _require_setup(self) -> None:
        if self.x_train is None:
            raise RuntimeError(f"{type(self).__name__}: call setup() before using the data")

    def summary(self) -> dict[str, Any]:
        """Sizes and settings, for logs and run records."""
        sizes = {}
        if self.x_train is not None:
            sizes = {"n_train": len(self.x_train), "n_val": len(self.x_val)}
            sizes["n_test"] = len(self.x_test)
        return {
            "name": self.name,
            "input_shape": list(self.input_shape),
            "n_classes": self.n_classes,
            "split_seed": self.split_seed,
            "val_fraction": self.val_fraction,
            **sizes,
        }


def as_tensors(
    x: np.ndarray | Tensor, y: np.ndarray | Tensor, shape: tuple[int, ...], scale: float = 1.0
) -> tuple[Tensor, Tensor]:
    """``(float32 x reshaped to (N, *shape) and divided by scale, int64 y)``."""
    x = torch.as_tensor(x)
    x = x.reshape(len(x), *shape).to(torch.float32, copy=True)  # never alias the caller's array
    if scale != 1.0:
        x.div_(scale)
    return x, torch.as_tensor(y).to(torch.int64).reshape(-1)


def config_fields(cls: type) -> list[str]:
    """Keyword arguments accepted by ``cls`` and its bases (the valid keys of its config)."""
    fields: list[str] = []
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or klass is L.LightningDataModule:
            continue
        for p in inspect.signature(init).parameters.values():
            if p.kind is p.KEYWORD_ONLY and p.name not in fields:
                fields.append(p.name)
        if klass is TensorDataModule:
            break
    return fields


def carve_test(
    x: Tensor, y: Tensor, test_fraction: float, split_seed: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """For datasets without an official test set: a stratified ``test_fraction`` becomes the
    test set (``split_seed``, its own stream), the rest the official-train equivalent."""
    keep, take = stratified_split(y, test_fraction, split_seed, TEST_STREAM)
    keep, take = torch.from_numpy(keep), torch.from_numpy(take)
    return x[keep], y[keep], x[take], y[take]
