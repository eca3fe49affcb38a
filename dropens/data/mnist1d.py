"""MNIST-1D (Greydanus & Kobak 2020, "Scaling down deep learning"), generated locally.

``mnist1d.data.make_dataset`` builds the set from its 10 templates in a few seconds; we never
call ``get_dataset``, which tries the web first. The arrays are cached as
``<root>/mnist1d/mnist1d-<key>.npz`` where ``key`` hashes the dataset args and the package
version, so changing an arg (e.g. ``num_samples``) makes a new file and a second setup reads
the cache. The official split is ``train_split`` (default 4000 train / 1000 test).
"""

from __future__ import annotations

import hashlib
import json
import random
import types
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import mnist1d.data
import numpy as np
from torch import Tensor

from dropens.data.base import TensorDataModule, as_tensors, cached_arrays, ensure_cached
from dropens.errors import ConfigError


def default_args() -> dict[str, Any]:
    """``mnist1d.data.get_dataset_args()`` as a dict, without the download URL."""
    args = dict(mnist1d.data.get_dataset_args(as_dict=True))
    args.pop("url", None)
    return args


def _package_version() -> str:
    try:
        return version("mnist1d")
    except PackageNotFoundError:  # pragma: no cover - source checkout
        return "unknown"


def generate(args: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Run ``make_dataset`` without disturbing the caller's RNGs.

    ``make_dataset`` reseeds the *global* numpy and ``random`` generators; left alone, that
    would silently reset a training seed set before ``setup``. Their states are restored.
    """
    np_state, py_state = np.random.get_state(), random.getstate()  # noqa: NPY002
    try:
        data = mnist1d.data.make_dataset(types.SimpleNamespace(**args))
    finally:
        np.random.set_state(np_state)  # noqa: NPY002
        random.setstate(py_state)
    return {k: np.asarray(data[k]) for k in ("x", "y", "x_test", "y_test")}


class MNIST1DDataModule(TensorDataModule):
    """MNIST-1D: 10 classes of length-40 1-D signals, ``input_shape=(1, 40)``.

    Args:
        args: overrides of ``mnist1d.data.get_dataset_args()`` (``num_samples``,
            ``train_split``, ``final_seq_length``, ``seed``, ...).
        **kwargs: see :class:`TensorDataModule`.
    """

    name = "mnist1d"
    input_shape = (1, 40)
    n_classes = 10
    class_names = tuple(str(i) for i in range(10))
    # make_dataset already centers the whole set and scales it to unit std; the reference
    # models train on exactly that, so we keep it rather than re-standardizing.
    standardize = False

    def __init__(self, *, args: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        defaults = default_args()
        for key in args or {}:
            if key not in defaults:
                valid = ", ".join(defaults)
                raise ConfigError(
                    f"data.args.{key} is not an mnist1d dataset arg; use one of: {valid}"
                )
        merged = {**defaults, **dict(args or {})}
        if isinstance(merged.get("padding"), tuple):
            merged["padding"] = list(merged["padding"])
        self.args = merged
        self.input_shape = (1, int(merged["final_seq_length"]))

    @property
    def cache_path(self) -> Path:
        blob = json.dumps({"args": self.args, "mnist1d": _package_version()}, sort_keys=True)
        key = hashlib.sha256(blob.encode()).hexdigest()[:16]
        return self.root / "mnist1d" / f"mnist1d-{key}.npz"

    def prepare_data(self) -> None:
        ensure_cached(self.cache_path, lambda: generate(self.args))

    def load_arrays(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        a = cached_arrays(
            self.cache_path, lambda: generate(self.args), ("x", "y", "x_test", "y_test")
        )
        x, y = as_tensors(a["x"], a["y"], self.input_shape)
        x_test, y_test = as_tensors(a["x_test"], a["y_test"], self.input_shape)
        return x, y, x_test, y_test
