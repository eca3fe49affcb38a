"""MNIST-1D: local generation, cache keyed by args, RNG hygiene, shapes."""

from __future__ import annotations

import random
import types
from pathlib import Path

import mnist1d.data
import numpy as np
import pytest
import torch
from data_fakes import assert_one_line_config_error
from omegaconf import OmegaConf

from dropens.data import MNIST1DDataModule
from dropens.data.mnist1d import default_args
from dropens.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "data"
SMALL = {"num_samples": 500}  # 400 train / 100 test: ~0.3 s to generate


def test_small_set_shapes_dtypes_and_official_split(tmp_path):
    dm = MNIST1DDataModule(root=tmp_path, args=SMALL)
    dm.setup()
    assert (dm.name, dm.input_shape, dm.n_classes) == ("mnist1d", (1, 40), 10)
    assert dm.x_train.shape == (360, 1, 40) and dm.x_val.shape == (40, 1, 40)
    assert dm.x_test.shape == (100, 1, 40)
    assert dm.x_train.dtype == torch.float32 and dm.y_train.dtype == torch.int64
    assert (
        dm.y_val.bincount(minlength=10).tolist()
        == np.floor(0.1 * torch.cat([dm.y_train, dm.y_val]).bincount(minlength=10).numpy() + 0.5)
        .astype(int)
        .tolist()
    )
    # the generator's own normalization is kept: the stored arrays are make_dataset's output
    ref = mnist1d.data.make_dataset(types.SimpleNamespace(**{**default_args(), **SMALL}))
    assert torch.equal(dm.x_test, torch.from_numpy(ref["x_test"]).float().view(-1, 1, 40))
    assert torch.equal(dm.y_test, torch.from_numpy(ref["y_test"]).long())


def test_second_setup_reads_the_cache_without_regenerating(tmp_path, monkeypatch):
    first = MNIST1DDataModule(root=tmp_path, args=SMALL)
    first.setup()
    assert first.cache_path.is_file() and first.cache_path.parent == tmp_path / "mnist1d"

    def boom(*args, **kwargs):
        raise AssertionError("make_dataset called although the cache exists")

    monkeypatch.setattr(mnist1d.data, "make_dataset", boom)
    second = MNIST1DDataModule(root=tmp_path, args=SMALL)
    second.setup()
    assert torch.equal(second.x_train, first.x_train) and torch.equal(second.y_test, first.y_test)
    # other args -> another cache file -> generation is attempted
    other = MNIST1DDataModule(root=tmp_path, args={**SMALL, "seed": 7})
    assert other.cache_path != first.cache_path
    with pytest.raises(AssertionError, match="make_dataset called"):
        other.setup()


def test_generation_leaves_the_global_rngs_alone(tmp_path):
    # the legacy global generators are what make_dataset reseeds, so they are what we check
    np.random.seed(123)  # noqa: NPY002
    random.seed(123)
    MNIST1DDataModule(root=tmp_path, args=SMALL).setup()  # cache miss: runs make_dataset
    got = (np.random.rand(), random.random())  # noqa: NPY002
    np.random.seed(123)  # noqa: NPY002
    random.seed(123)
    assert got == (np.random.rand(), random.random())  # noqa: NPY002


def test_args_override_shape_and_unknown_args_fail(tmp_path):
    dm = MNIST1DDataModule(root=tmp_path, args={**SMALL, "final_seq_length": 24})
    assert dm.input_shape == (1, 24)
    dm.setup()
    assert dm.x_train.shape[1:] == (1, 24)
    with pytest.raises(ConfigError) as excinfo:
        MNIST1DDataModule(root=tmp_path, args={"num_sample": 10})
    assert_one_line_config_error(excinfo, "data.args.num_sample", "num_samples")


def test_config_pins_the_package_defaults():
    cfg = OmegaConf.to_container(OmegaConf.load(CONFIGS / "mnist1d.yaml"))
    assert cfg["args"] == default_args()  # so the default config is the published 4000/1000 set
    assert cfg["batch_size"] == 100


@pytest.mark.slow
def test_default_set_is_4000_train_1000_test(tmp_path):
    dm = MNIST1DDataModule(root=tmp_path)
    dm.setup()
    assert len(dm.x_train) + len(dm.x_val) == 4000 and len(dm.x_test) == 1000
    assert abs(len(dm.x_val) - 400) <= 5  # 10% of each class, rounded per class
