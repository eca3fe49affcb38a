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
corrupted test images), ``denormalize`` inverts it. Labels are int64.

Eval sets. ``eval_sets()`` names the sets a trained model is evaluated on: ``clean`` (the test
set) and, when configured (fields absent from the data configs, so ordinary run ids do not
change; studies add them with ``+data.<field>=...``):

- ``eval_val: true``: ``val``, the validation split (temperature scaling is fitted on it,
  :func:`dropens.evaluation.evaluate`);
- ``eval_shift: [rotate, ...]`` (or ``all``): ``<corruption>_<severity>`` for severities 1..5,
  the raw test images corrupted on the fly (:mod:`dropens.data.shift`), then normalized;
- ``eval_ood: <data name>``: ``ood``, the test split of another data set with the same input
  shape (e.g. ``mnist5k`` for Fashion-MNIST), normalized with *this* set's statistics; its labels
  are its own classes, never scored.

``eval_limit: n`` keeps the first ``n`` examples of every one of them. ``train_limit: n`` trains
on a stratified subset of ``n`` examples of the training split (after the validation split is
carved, so validation and test are unchanged; a pure function of ``split_seed``): an over-fitting
regime from a large data set.
"""

from __future__ import annotations

import inspect
import os
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import numpy as np
import torch
from torch import Tensor

from dropens.data import shift
from dropens.data.loader import AUGMENTATIONS, TensorLoader
from dropens.errors import ConfigError, bad_choice, check_choice

DEFAULT_ROOT = "~/.cache/dropens/data"
VAL_STREAM, TEST_STREAM, TRAIN_STREAM = 0, 1, 2  # independent random streams of one split_seed
# fields absent from configs/data/*.yaml (studies add them with `+data.<field>=...`), so that the
# run ids of ordinary configs, which hash the resolved config, do not change
OPTIONAL_FIELDS = ("eval_limit", "eval_val", "eval_shift", "eval_ood", "train_limit")


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


def _read_npz(path: Path, required: Sequence[str]) -> dict[str, np.ndarray]:
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    missing = [k for k in required if k not in arrays]
    if missing:
        raise ValueError(f"no array {missing[0]!r}")
    return arrays


def cached_arrays(
    path: Path, make: Callable[[], dict[str, np.ndarray]], required: Sequence[str] = ()
) -> dict[str, np.ndarray]:
    """Load the arrays cached at ``path``; on a miss build them with ``make()`` and cache them.

    A cache that does not load (truncated, garbage, empty, an array of ``required`` missing) is
    moved aside to ``<name>.damaged-<time>`` and rebuilt, with a one-line warning naming both.

    Raises:
        ConfigError: the damaged cache cannot be moved aside or rebuilt (one line: file and fix).
    """
    ensure_cached(path, make)
    try:
        return _read_npz(path, required)
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as err:
        reason = " ".join(f"{type(err).__name__}: {err}".split())[:120]
    aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        path.rename(aside)
    except FileNotFoundError:
        pass  # another run moved it aside first (and is rebuilding it)
    except OSError as err:
        raise ConfigError(
            f"data cache {path} is damaged ({reason}) and cannot be moved aside "
            f"({err.strerror}); delete it, or point data.root at a writable directory"
        ) from None
    print(
        f"warning: data cache {path} is damaged ({reason}); moved to {aside.name}, rebuilding it",
        file=sys.stderr,
        flush=True,
    )
    try:
        ensure_cached(path, make)
        return _read_npz(path, required)
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as err:
        raise ConfigError(
            f"data cache {path} is damaged and could not be rebuilt ({type(err).__name__}: "
            f"{err}); delete it, or point data.root at a writable directory"
        ) from None


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
        eval_limit: evaluate on the first ``eval_limit`` examples of every eval set only.
        eval_val: also offer the validation split as eval set ``val``.
        eval_shift: corruptions (:data:`dropens.data.shift.CORRUPTIONS`, or ``all``) whose
            shifted test sets ``<corruption>_<severity>`` are offered (images only).
        eval_ood: name of the data set whose test split is offered as eval set ``ood``.
        train_limit: train on a stratified subset of this many training examples (module
            docstring); standardization statistics come from that subset.
        seed: training seed: order of training batches and augmentation draws.
    """

    name: ClassVar[str] = ""
    input_shape: tuple[int, ...] = ()
    n_classes: int = 0
    class_names: tuple[str, ...] = ()
    standardize: ClassVar[bool] = True
    # the largest raw value (what load_arrays returns); corruptions work on raw / raw_max in [0, 1]
    raw_max: ClassVar[float] = 1.0

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
        eval_val: bool = False,
        eval_shift: str | Sequence[str] | None = None,
        eval_ood: str | None = None,
        train_limit: int | None = None,
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
        if not isinstance(eval_val, bool):
            raise bad_choice("data.eval_val", eval_val, ["true", "false"])
        self.eval_val = eval_val
        self.eval_shift = self._check_shift(eval_shift)
        self.eval_ood = self._check_ood(eval_ood)
        self.train_limit = (
            None if train_limit is None else _check_positive_int("data.train_limit", train_limit)
        )
        self._extra_sets: dict[str, tuple[Tensor, Tensor]] | None = None  # built once, on demand
        self.seed = int(seed)
        self.x_train: Tensor | None = None
        self.y_train: Tensor | None = None
        self.x_val: Tensor | None = None
        self.y_val: Tensor | None = None
        self.x_test: Tensor | None = None
        self.y_test: Tensor | None = None
        self.mean: Tensor | None = None
        self.std: Tensor | None = None

    def _check_shift(self, value: str | Sequence[str] | None) -> tuple[str, ...]:
        if value is None:
            return ()
        names = [value] if isinstance(value, str) else list(value)
        for name in names:
            check_choice("data.eval_shift", name, ["all", *shift.CORRUPTIONS])
        if "all" in names:
            names = list(shift.CORRUPTIONS)
        if names and len(self.input_shape) != 3:
            raise ConfigError(
                f"data.eval_shift={value!r} is not valid for data.name={self.name!r}; "
                "the corruptions need 2-D images (use null)"
            )
        return tuple(dict.fromkeys(names))

    def _check_ood(self, value: str | None) -> str | None:
        if value is None:
            return None
        from dropens.data import DATAMODULES  # the registry imports this module

        choices = [
            n
            for n, c in DATAMODULES.items()
            if n != self.name and c.input_shape == self.input_shape
        ]
        check_choice("data.eval_ood", value, choices)
        return str(value)

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
        if self.train_limit is not None:
            if self.train_limit > len(y_train):
                raise ConfigError(
                    f"data.train_limit={self.train_limit} is larger than the {len(y_train)} "
                    f"training examples of data.name={self.name!r}"
                )
            _, subset = stratified_split(
                y_train, self.train_limit / len(y_train), self.split_seed, TRAIN_STREAM
            )
            x_train, y_train = x_train[torch.from_numpy(subset)], y_train[torch.from_numpy(subset)]
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

    def denormalize(self, x: Tensor) -> Tensor:
        """Inverse of :meth:`normalize`: normalized inputs ``(N, C, *spatial)`` back to raw scale."""
        self._require_setup()
        shape = (1, -1) + (1,) * (x.dim() - 2)
        mean, std = self.mean.to(x.device).view(shape), self.std.to(x.device).view(shape)
        return (x.float() * std + mean).contiguous()

    def _normalize_(self, x: Tensor) -> Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return x.sub_(self.mean.view(shape)).div_(self.std.view(shape))

    def to(self, device: torch.device | str) -> TensorDataModule:
        """Move every stored tensor to ``device`` (no copy when already there)."""
        self._require_setup()
        for attr in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test", "mean", "std"):
            setattr(self, attr, getattr(self, attr).to(device))
        if self._extra_sets is not None:
            self._extra_sets = {
                k: (x.to(device), y.to(device)) for k, (x, y) in self._extra_sets.items()
            }
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
        """Named ``(x [N, *input_shape], y [N])`` evaluation sets, normalized like the training set.

        ``clean`` (the test set) first, then, as configured (module docstring): ``val``, the
        shifted sets ``<corruption>_<severity>`` (corruption-major, severities 1..5) and ``ood``;
        each cut to its first ``eval_limit`` examples. The extra sets are built on the first call
        and kept (the shifted images of a corruption and severity depend on ``split_seed`` only,
        :func:`dropens.data.shift.set_seed`, so every training seed sees the same images).
        """
        self._require_setup()
        n = self.eval_limit
        sets = {
            "clean": (self.x_test, self.y_test) if n is None else (self.x_test[:n], self.y_test[:n])
        }
        if self._extra_sets is None:
            self._extra_sets = self._build_extra_sets(sets["clean"])
        return {**sets, **self._extra_sets}

    def _build_extra_sets(self, clean: tuple[Tensor, Tensor]) -> dict[str, tuple[Tensor, Tensor]]:
        n = self.eval_limit
        out: dict[str, tuple[Tensor, Tensor]] = {}
        if self.eval_val:
            out["val"] = (self.x_val[:n], self.y_val[:n])
        if self.eval_shift:
            x, y = clean
            raw = self.denormalize(x) / self.raw_max
            for name, images in shift.shifted_sets(raw, self.eval_shift, self.split_seed).items():
                out[name] = (self.normalize(images * self.raw_max), y)
        if self.eval_ood is not None:
            x_ood, y_ood = self._ood_raw()
            # a fixed shuffle (split_seed): eval_limit then keeps a mix of classes, not the first
            # classes of a class-sorted test split (mnist5k)
            gen = torch.Generator().manual_seed(shift.set_seed(self.split_seed, "ood", 0))
            order = torch.randperm(len(x_ood), generator=gen)
            x_ood, y_ood = x_ood[order], y_ood[order]
            out["ood"] = (
                self.normalize(x_ood[:n].to(self.x_test.device)),
                y_ood[:n].to(self.y_test.device),
            )
        return out

    def _ood_raw(self) -> tuple[Tensor, Tensor]:
        """The raw test split of the ``eval_ood`` data set, rescaled to this set's raw range."""
        from dropens.data import DATAMODULES

        other = DATAMODULES[self.eval_ood](root=self.root, split_seed=self.split_seed)
        other.prepare_data()
        _, _, x, y = other.load_arrays()
        if tuple(x.shape[1:]) != tuple(self.input_shape):
            raise ConfigError(
                f"data.eval_ood={self.eval_ood!r} has inputs {tuple(x.shape[1:])}; "
                f"data.name={self.name!r} needs {tuple(self.input_shape)}"
            )
        return x * (self.raw_max / other.raw_max), y.long()

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
