"""Writers of tiny datasets in the real on-disk formats, so the real loading code is exercised."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

IDX_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def idx_bytes(array: np.ndarray) -> bytes:
    """The idx format of LeCun's MNIST files: magic (0, 0, dtype=0x08 uint8, ndim), dims, data."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def balanced_labels(n: int, n_classes: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(np.arange(n) % n_classes).astype(np.int64)


def make_idx_set(
    directory: Path, n_train: int, n_test: int, *, gz: bool, seed: int = 0
) -> dict[str, np.ndarray]:
    """Write the four MNIST-style idx files (``.gz`` as in the Debian package when ``gz``)."""
    rng = np.random.default_rng(seed)
    arrays = {
        "x_train": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "y_train": balanced_labels(n_train, 10, rng),
        "x_test": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "y_test": balanced_labels(n_test, 10, rng),
    }
    order = ("x_train", "y_train", "x_test", "y_test")
    directory.mkdir(parents=True, exist_ok=True)
    for name, key in zip(IDX_NAMES, order):
        data = idx_bytes(arrays[key])
        if gz:
            with gzip.open(directory / f"{name}.gz", "wb") as f:
                f.write(data)
        else:
            (directory / name).write_bytes(data)
    return arrays


def make_cifar(root: Path, n_train: int, n_test: int, *, hundred: bool, seed: int = 0):
    """CIFAR python-pickle batches + meta (CIFAR-10: 5 train batches; CIFAR-100: one file)."""
    rng = np.random.default_rng(seed)
    n_classes = 100 if hundred else 10
    x_train = rng.integers(0, 256, (n_train, 3, 32, 32), dtype=np.uint8)
    y_train = balanced_labels(n_train, n_classes, rng)
    x_test = rng.integers(0, 256, (n_test, 3, 32, 32), dtype=np.uint8)
    y_test = balanced_labels(n_test, n_classes, rng)
    label_key = "fine_labels" if hundred else "labels"
    folder = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    folder.mkdir(parents=True, exist_ok=True)

    def dump(name: str, x: np.ndarray, y: np.ndarray) -> None:
        # rows of 3072 bytes: the 1024 red, then green, then blue values, each 32x32 row-major
        entry = {"data": x.reshape(len(x), 3072), label_key: y.tolist(), "batch_label": name}
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f)

    if hundred:
        dump("train", x_train, y_train)
        dump("test", x_test, y_test)
        meta = {"fine_label_names": [f"c{i}" for i in range(100)]}
        meta_name = "meta"
    else:
        for i, part in enumerate(np.array_split(np.arange(n_train), 5)):
            dump(f"data_batch_{i + 1}", x_train[part], y_train[part])
        dump("test_batch", x_test, y_test)
        meta = {"label_names": [f"c{i}" for i in range(10)]}
        meta_name = "batches.meta"
    with open(folder / meta_name, "wb") as f:
        pickle.dump(meta, f)
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def make_svhn(directory: Path, n_train: int, n_test: int, seed: int = 0):
    """SVHN ``.mat`` files: X (32, 32, 3, N) uint8, y (N, 1) with digit 0 stored as 10."""
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        y = balanced_labels(n, 10, rng)
        stored = np.where(y == 0, 10, y).astype(np.uint8)[:, None]
        savemat(directory / f"{split}_32x32.mat", {"X": x.transpose(2, 3, 1, 0), "y": stored})
        out[f"x_{split}"], out[f"y_{split}"] = x, y
    return out


def assert_one_line_config_error(excinfo: pytest.ExceptionInfo, *parts: str) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    for part in parts:
        assert part in msg, (part, msg)
    return msg
