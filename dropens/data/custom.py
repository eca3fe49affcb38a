"""Your own data: an image folder (``data=folder``) or a file of tensors (``data=tensors``).

``data=folder data.root=PATH`` reads images with torchvision's ``ImageFolder`` layout, all into
memory (pixels / 255, channels first), in one of two layouts:

- ``PATH/train/<class>/*`` and ``PATH/test/<class>/*`` (optionally ``PATH/val/<class>/*``, which
  is then the validation split instead of ``data.val_fraction`` of train);
- ``PATH/<class>/*``: one folder, split into test (``data.test_fraction``) and validation
  (``data.val_fraction`` of the rest), stratified by class, a pure function of ``data.split_seed``
  (fixed across training seeds, like every data set here).

Classes are the sorted subfolder names (as ``ImageFolder`` numbers them). ``data.size`` resizes
every image (``H`` or ``[H, W]``; bilinear); without it all images must have one size.
``data.grayscale`` reads one channel instead of RGB. ``data.normalize: true`` standardizes each
channel with the mean/std of the training split; ``data.mean`` / ``data.std`` (lists, pixel scale
[0, 1], e.g. ImageNet's) use fixed values instead; ``normalize: false`` keeps pixels in [0, 1].

``data=tensors data.path=FILE`` reads a ``.pt`` (``torch.save`` of a dict) or ``.npz`` file with
``x_train, y_train, x_test, y_test`` and optionally ``x_val, y_val``: inputs ``[N, *input_shape]``
(any numeric type, used as float32; channels first for images), labels ``[N]`` integers in
``[0, C)``; ``C`` is the largest label + 1 (or ``data.n_classes``). ``data.normalize`` as above
(per channel: axis 1).

Anything wrong with a folder or a file (missing, empty, unreadable image, images of different
sizes, classes that differ between train and test, a missing array, shapes that disagree, labels
that are not class indices) is refused with one line naming the path and the fix.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from dropens.data.base import TensorDataModule, carve_test, check_fraction
from dropens.errors import ConfigError

REQUIRED_ARRAYS = ("x_train", "y_train", "x_test", "y_test")
OPTIONAL_ARRAYS = ("x_val", "y_val")


class _UserDataModule(TensorDataModule):
    """What both share: input shape known only after loading, an optional explicit validation
    split, fixed or training-split standardization."""

    placeholder_shape: ClassVar[tuple[int, ...]] = ()

    def __init__(
        self,
        *,
        normalize: bool = True,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        **kwargs: Any,
    ) -> None:
        # the true shape is known after loading; a 3-D placeholder lets image-only options
        # (augment, eval_shift) pass the base checks, which load_arrays repeats on the real shape
        self.input_shape = self.placeholder_shape
        super().__init__(**kwargs)
        if not isinstance(normalize, bool):
            raise ConfigError(f"data.normalize={normalize!r} is not valid; choose true or false")
        if (mean is None) != (std is None):
            raise ConfigError("data.mean and data.std go together; give both (or neither)")
        self.standardize = normalize and mean is None
        self.fixed_stats = (
            None if mean is None else (self._stats("mean", mean), self._stats("std", std))
        )
        self.n_classes = 0
        self._val: tuple[Tensor, Tensor] | None = None

    @staticmethod
    def _stats(field: str, values: Any) -> Tensor:
        vals = [values] if isinstance(values, (int, float)) else values
        try:
            out = torch.tensor([float(v) for v in vals], dtype=torch.float32)
        except (TypeError, ValueError):
            raise ConfigError(
                f"data.{field}={values!r} is not valid; give one number per channel"
            ) from None
        if field == "std" and bool((out <= 0).any()):
            raise ConfigError(f"data.std={values!r} is not valid; every value must be > 0")
        return out

    def _set_shape(self, x: Tensor, where: str) -> None:
        self.input_shape = tuple(int(s) for s in x.shape[1:])
        if (self.augment or self.eval_shift) and len(self.input_shape) != 3:
            option = "data.augment" if self.augment else "data.eval_shift"
            raise ConfigError(
                f"{option} needs images (N, C, H, W), but {where} holds inputs of shape "
                f"{self.input_shape}; use null"
            )

    def _build(self, x_train: Tensor, y_train: Tensor, x_test: Tensor, y_test: Tensor) -> None:
        explicit = self._val
        if explicit is not None:
            fraction, self.val_fraction = self.val_fraction, 0.0
            try:
                super()._build(x_train, y_train, x_test, y_test)
            finally:
                self.val_fraction = fraction
            x_val, y_val = explicit
            self.x_val, self.y_val = self._normalize_(x_val.float().clone()), y_val.long()
        else:
            super()._build(x_train, y_train, x_test, y_test)
        if self.fixed_stats is not None:
            mean, std = self.fixed_stats
            channels = self.x_train.shape[1]
            if len(mean) not in (1, channels) or len(std) not in (1, channels):
                raise ConfigError(
                    f"data.mean/data.std have {len(mean)}/{len(std)} values, but the inputs have "
                    f"{channels} channels; give one value per channel"
                )
            self.mean, self.std = mean.expand(channels).clone(), std.expand(channels).clone()
            for attr in ("x_train", "x_val", "x_test"):
                setattr(self, attr, self._normalize_(getattr(self, attr)))

    def summary(self) -> dict[str, Any]:
        return {**super().summary(), "source": str(getattr(self, "source", ""))}


# ----------------------------------------------------------------------------- folder


def _as_size(size: Any) -> tuple[int, int] | None:
    if size is None:
        return None
    vals = [size, size] if isinstance(size, int) and not isinstance(size, bool) else size
    if (
        not isinstance(vals, (list, tuple))
        or len(vals) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in vals)
    ):
        raise ConfigError(
            f"data.size={size!r} is not valid; give an integer >= 1 or [height, width] (or null)"
        )
    return int(vals[0]), int(vals[1])


class FolderDataModule(_UserDataModule):
    """``data=folder``: images of ``data.root`` in ``ImageFolder`` layout (module docstring).

    Args:
        size: resize to ``H`` or ``[H, W]`` (``None``: all images must share one size).
        grayscale: one channel (``L``) instead of RGB.
        test_fraction: one-folder layout only: the stratified test share, in (0, 1).
        normalize, mean, std: standardization (module docstring).
        **kwargs: see :class:`dropens.data.base.TensorDataModule` (``root`` is the folder).
    """

    name: ClassVar[str] = "folder"
    raw_max: ClassVar[float] = 1.0
    placeholder_shape: ClassVar[tuple[int, ...]] = (3, 1, 1)  # images: augment may be set

    def __init__(
        self,
        *,
        size: int | Sequence[int] | None = None,
        grayscale: bool = False,
        test_fraction: float = 0.2,
        normalize: bool = True,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        root: str | os.PathLike | None = None,
        **kwargs: Any,
    ) -> None:
        if root is None or str(root).strip() in ("", "None", "null"):
            raise ConfigError(
                "data=folder needs the image folder: data.root=PATH (PATH/train/<class>/*, "
                "PATH/test/<class>/*, or PATH/<class>/*)"
            )
        if not isinstance(grayscale, bool):
            raise ConfigError(f"data.grayscale={grayscale!r} is not valid; choose true or false")
        super().__init__(normalize=normalize, mean=mean, std=std, root=root, **kwargs)
        self.size = _as_size(size)
        self.grayscale = grayscale
        self.test_fraction = check_fraction("data.test_fraction", test_fraction)
        self.source = self.root
        self.class_names: tuple[str, ...] = ()

    def prepare_data(self) -> None:
        if not self.root.is_dir():
            what = "is a file" if self.root.exists() else "does not exist"
            raise ConfigError(
                f"data.root={str(self.root)!r} {what}; give a folder of images "
                "(PATH/train/<class>/*, PATH/test/<class>/*, or PATH/<class>/*)"
            )

    def _split_dirs(self) -> dict[str, Path]:
        split = {s: self.root / s for s in ("train", "val", "test") if (self.root / s).is_dir()}
        if not split:
            return {}
        if "train" not in split or "test" not in split:
            have = ", ".join(f"{s}/" for s in split)
            raise ConfigError(
                f"data.root={str(self.root)!r} has {have} but not both train/ and test/; give "
                "PATH/train/<class>/* and PATH/test/<class>/* (or one folder PATH/<class>/*)"
            )
        return split

    def _read(self, folder: Path) -> tuple[list[str], Tensor, Tensor]:
        """``(classes, uint8 images [N, C, H, W], labels [N])`` of one ImageFolder tree."""
        from PIL import Image, UnidentifiedImageError
        from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

        try:
            classes, index = find_classes(str(folder))
            samples = make_dataset(str(folder), index, extensions=IMG_EXTENSIONS)
        except (FileNotFoundError, OSError) as err:
            first = " ".join(str(err).split())
            raise ConfigError(
                f"data.root: {folder} is not an image folder ({first[:200]}); give "
                "<folder>/<class>/<image> files (png, jpg, ...)"
            ) from None
        mode = "L" if self.grayscale else "RGB"
        images, labels, first_size = [], [], None
        for path, label in samples:
            try:
                with Image.open(path) as img:
                    img = img.convert(mode)
                    if self.size is not None:
                        img = img.resize((self.size[1], self.size[0]), Image.BILINEAR)
                    array = np.asarray(img, dtype=np.uint8)
            except (UnidentifiedImageError, OSError, ValueError) as err:
                raise ConfigError(
                    f"data.root: image {path} cannot be read ({type(err).__name__}: "
                    f"{' '.join(str(err).split())[:120]}); remove or replace it"
                ) from None
            if first_size is None:
                first_size = (path, array.shape[:2])
            elif array.shape[:2] != first_size[1]:
                raise ConfigError(
                    f"data.root: images differ in size ({first_size[0]}: {first_size[1]}, {path}: "
                    f"{array.shape[:2]}); set data.size=H or data.size=[H,W] to resize them"
                )
            images.append(array if array.ndim == 3 else array[:, :, None])
            labels.append(label)
        x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
        return classes, x, torch.tensor(labels, dtype=torch.int64)

    def load_arrays(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        split = self._split_dirs()
        if split:
            classes, x_train, y_train = self._read(split["train"])
            parts = {"train": (classes, x_train, y_train)}
            for name in ("val", "test"):
                if name in split:
                    parts[name] = self._read(split[name])
                    if parts[name][0] != classes:
                        raise ConfigError(
                            f"data.root: {split[name]} has classes {parts[name][0]}, but "
                            f"{split['train']} has {classes}; give both the same class folders"
                        )
            _, x_test, y_test = parts["test"]
            if "val" in parts:
                _, x_val, y_val = parts["val"]
                self._val = (x_val.float() / 255.0, y_val)
        else:
            if self.test_fraction <= 0.0:
                raise ConfigError(
                    f"data.test_fraction={self.test_fraction} leaves no test set for the one-folder "
                    f"layout of {self.root}; choose a fraction in (0, 1)"
                )
            classes, x, y = self._read(self.root)
            x_train, y_train, x_test, y_test = carve_test(x, y, self.test_fraction, self.split_seed)
        if len(classes) < 2:
            raise ConfigError(
                f"data.root={str(self.root)!r} has {len(classes)} class folder(s) ({classes}); a "
                "classifier needs at least 2"
            )
        if len(x_test) == 0 or len(x_train) == 0:
            raise ConfigError(
                f"data.root={str(self.root)!r}: the split leaves {len(x_train)} training and "
                f"{len(x_test)} test images; add images or change data.test_fraction"
            )
        self.class_names = tuple(classes)
        self.n_classes = len(classes)
        self._set_shape(x_train, str(self.root))
        return x_train.float() / 255.0, y_train, x_test.float() / 255.0, y_test


# ----------------------------------------------------------------------------- tensors


def _load_file(path: Path) -> dict[str, Any]:
    """The arrays of a ``.pt`` / ``.npz`` file; one line naming the file otherwise."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as f:
                return {k: f[k] for k in f.files}
        if suffix in (".pt", ".pth"):
            data = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(data, dict):
                raise ConfigError(
                    f"data.path={str(path)!r} holds a {type(data).__name__}, not a dict of "
                    f"{', '.join(REQUIRED_ARRAYS)}; torch.save a dict"
                )
            return data
    except ConfigError:
        raise
    except Exception as err:
        raise ConfigError(
            f"data.path={str(path)!r} cannot be read ({type(err).__name__}: "
            f"{' '.join(str(err).split())[:160]}); give a .pt or .npz file of tensors"
        ) from None
    raise ConfigError(f"data.path={str(path)!r} is not a .pt or .npz file; give one of those")


class TensorFileDataModule(_UserDataModule):
    """``data=tensors``: train/test (and optional val) tensors of one file (module docstring).

    Args:
        path: the ``.pt`` or ``.npz`` file.
        n_classes: the number of classes (``None``: the largest label + 1).
        normalize, mean, std: standardization (module docstring).
        **kwargs: see :class:`dropens.data.base.TensorDataModule`.
    """

    name: ClassVar[str] = "tensors"

    def __init__(
        self,
        *,
        path: str | os.PathLike | None = None,
        n_classes: int | None = None,
        normalize: bool = True,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        **kwargs: Any,
    ) -> None:
        if path is None or not str(path).strip():
            raise ConfigError(
                "data=tensors needs the file: data.path=FILE (.pt or .npz with x_train, y_train, "
                "x_test, y_test; optional x_val, y_val)"
            )
        super().__init__(normalize=normalize, mean=mean, std=std, **kwargs)
        self.path = Path(os.path.expandvars(os.path.expanduser(str(path))))
        self.source = self.path
        if n_classes is not None and (
            isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 2
        ):
            raise ConfigError(f"data.n_classes={n_classes!r} is not valid; choose an integer >= 2")
        self.given_classes = n_classes

    def prepare_data(self) -> None:
        if not self.path.is_file():
            what = "is a directory" if self.path.is_dir() else "does not exist"
            raise ConfigError(f"data.path={str(self.path)!r} {what}; give a .pt or .npz file")

    def _arrays(self) -> dict[str, Tensor]:
        raw = _load_file(self.path)
        missing = [k for k in REQUIRED_ARRAYS if k not in raw]
        if missing:
            raise ConfigError(
                f"data.path={str(self.path)!r} has no {missing[0]!r}; it needs "
                f"{', '.join(REQUIRED_ARRAYS)} (optional {', '.join(OPTIONAL_ARRAYS)}), has "
                f"{', '.join(sorted(map(str, raw))) or 'nothing'}"
            )
        if ("x_val" in raw) != ("y_val" in raw):
            raise ConfigError(
                f"data.path={str(self.path)!r} has only one of x_val, y_val; give both or neither"
            )
        out = {}
        for key in (*REQUIRED_ARRAYS, *(k for k in OPTIONAL_ARRAYS if k in raw)):
            try:
                out[key] = torch.as_tensor(
                    np.asarray(raw[key]) if not isinstance(raw[key], Tensor) else raw[key]
                )
            except (TypeError, ValueError) as err:
                raise ConfigError(
                    f"data.path={str(self.path)!r}: {key} is not an array ({err})"
                ) from None
        return out

    def _check(self, arrays: dict[str, Tensor]) -> int:
        where = f"data.path={str(self.path)!r}"
        shape = None
        top = -1
        for split in ("train", "val", "test"):
            if f"x_{split}" not in arrays:
                continue
            x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
            if x.dim() < 2 or len(x) == 0:
                raise ConfigError(
                    f"{where}: x_{split} has shape {tuple(x.shape)}; expected [N, *input_shape] "
                    "with N >= 1"
                )
            if x.is_complex() or x.dtype == torch.bool or not bool(torch.isfinite(x.float()).all()):
                raise ConfigError(f"{where}: x_{split} must hold finite real numbers")
            if shape is None:
                shape = tuple(x.shape[1:])
            elif tuple(x.shape[1:]) != shape:
                raise ConfigError(
                    f"{where}: x_{split} has inputs of shape {tuple(x.shape[1:])}, x_train "
                    f"{shape}; every split needs the same input shape"
                )
            if y.dim() != 1 or len(y) != len(x):
                raise ConfigError(
                    f"{where}: y_{split} has shape {tuple(y.shape)}; expected [{len(x)}] (one "
                    f"label per row of x_{split})"
                )
            if y.is_floating_point():
                if not bool((y == y.round()).all()):
                    raise ConfigError(
                        f"{where}: y_{split} holds non-integer labels; give class indices"
                    )
            elif y.dtype == torch.bool or y.is_complex():
                raise ConfigError(f"{where}: y_{split} must hold integer class indices")
            if int(y.min()) < 0:
                raise ConfigError(f"{where}: y_{split} has label {int(y.min())}; labels are 0..C-1")
            top = max(top, int(y.max()))
        n_classes = self.given_classes or top + 1
        if top >= n_classes:
            raise ConfigError(
                f"{where}: labels reach {top}, beyond data.n_classes={n_classes}; labels are "
                "0..n_classes-1"
            )
        if n_classes < 2:
            raise ConfigError(f"{where}: all labels are 0; a classifier needs at least 2 classes")
        return n_classes

    def load_arrays(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        arrays = self._arrays()
        self.n_classes = self._check(arrays)
        self.class_names = tuple(str(c) for c in range(self.n_classes))
        x_train = arrays["x_train"].to(torch.float32, copy=True)
        self._set_shape(x_train, f"data.path={str(self.path)!r}")
        if "x_val" in arrays:
            self._val = (arrays["x_val"].to(torch.float32), arrays["y_val"].long())
        return (
            x_train,
            arrays["y_train"].long(),
            arrays["x_test"].to(torch.float32, copy=True),
            arrays["y_test"].long(),
        )
