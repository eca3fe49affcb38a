"""torchvision-backed modules on tiny files in the real on-disk formats; Fashion-MNIST sources."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from data_fakes import (
    IDX_NAMES,
    assert_one_line_config_error,
    make_cifar,
    make_idx_set,
    make_svhn,
)

from dropens.data import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    FashionMNISTDataModule,
    MNISTDataModule,
    SVHNDataModule,
)
from dropens.errors import ConfigError

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")


def _raw(dm, x: torch.Tensor) -> torch.Tensor:
    """Undo the standardization, back to [0, 255]."""
    shape = (1, -1) + (1,) * (x.dim() - 2)
    return (x * dm.std.view(shape) + dm.mean.view(shape)) * 255


def _check_module(dm, written: dict[str, np.ndarray], n_channels: int) -> None:
    n_train = len(written["y_train"])
    assert len(dm.x_train) + len(dm.x_val) == n_train
    assert len(dm.x_val) == pytest.approx(0.1 * n_train, abs=dm.n_classes)
    for x, y in (dm.x_train, dm.y_train), (dm.x_val, dm.y_val), (dm.x_test, dm.y_test):
        assert x.shape[1:] == dm.input_shape and x.dtype == torch.float32
        assert y.dtype == torch.int64
    # per-channel standardization with train statistics
    dims = [0, 2, 3]
    assert torch.allclose(dm.x_train.mean(dims), torch.zeros(n_channels), atol=1e-4)
    assert torch.allclose(dm.x_train.std(dims, correction=0), torch.ones(n_channels), atol=1e-4)
    # the test set is the official one, in file order, pixels and channels in place
    x_test = torch.from_numpy(written["x_test"]).float().reshape(dm.x_test.shape)
    assert torch.allclose(_raw(dm, dm.x_test), x_test, atol=1e-3)
    assert torch.equal(dm.y_test, torch.from_numpy(written["y_test"]))


def test_mnist_reads_idx_files(tmp_path):
    written = make_idx_set(tmp_path / "MNIST" / "raw", 200, 50, gz=False)
    dm = MNISTDataModule(root=tmp_path)
    dm.setup()
    assert (dm.input_shape, dm.n_classes) == ((1, 28, 28), 10)
    _check_module(dm, written, 1)


@pytest.mark.parametrize("hundred", [False, True])
def test_cifar_reads_python_pickle_batches(tmp_path, hundred):
    written = make_cifar(tmp_path, 300 if hundred else 100, 40, hundred=hundred)
    cls = CIFAR100DataModule if hundred else CIFAR10DataModule
    dm = cls(root=tmp_path)
    dm.setup()
    assert dm.input_shape == (3, 32, 32)
    assert dm.n_classes == len(dm.class_names) == (100 if hundred else 10)
    _check_module(dm, written, 3)


def test_svhn_reads_mat_files_and_maps_label_10_to_0(tmp_path):
    written = make_svhn(tmp_path / "SVHN", 100, 30)
    dm = SVHNDataModule(root=tmp_path)
    dm.setup()
    assert dm.input_shape == (3, 32, 32) and 0 in dm.y_test.tolist()
    assert dm.y_train.max() == 9
    _check_module(dm, written, 3)


@pytest.mark.parametrize(
    ("cls", "title"),
    [
        (MNISTDataModule, "MNIST"),
        (CIFAR10DataModule, "CIFAR-10"),
        (CIFAR100DataModule, "CIFAR-100"),
        (SVHNDataModule, "SVHN"),
    ],
)
def test_missing_files_raise_one_line_config_error(tmp_path, cls, title):
    dm = cls(root=tmp_path)
    with pytest.raises(ConfigError) as excinfo:
        dm.setup()
    assert_one_line_config_error(excinfo, "data.root", title, "data.download=true", str(tmp_path))


def test_download_true_asks_torchvision_for_both_splits(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(
        MNISTDataModule, "make_dataset", lambda self, train, download=False: calls.append(download)
    )
    MNISTDataModule(root=tmp_path, download=True).prepare_data()
    assert calls == [True, True]


def test_fashion_mnist_from_debian_layout_is_decompressed_once(tmp_path):
    debian = tmp_path / "debian"
    written = make_idx_set(debian, 100, 20, gz=True, seed=1)
    root = tmp_path / "root"
    dm = FashionMNISTDataModule(root=root, debian_dir=str(debian))
    dm.setup()
    assert dm.class_names[0] == "T-shirt/top" and dm.input_shape == (1, 28, 28)
    _check_module(dm, written, 1)
    raw = root / "FashionMNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(IDX_NAMES)  # no temp files left
    # prepared root is enough afterwards: no Debian files needed
    for f in debian.iterdir():
        f.unlink()
    again = FashionMNISTDataModule(root=root, debian_dir=str(debian))
    again.setup()
    assert torch.equal(again.x_test, dm.x_test)


def test_fashion_mnist_missing_everywhere_says_how_to_get_it(tmp_path):
    dm = FashionMNISTDataModule(root=tmp_path / "root", debian_dir=str(tmp_path / "nothing"))
    with pytest.raises(ConfigError) as excinfo:
        dm.setup()
    assert_one_line_config_error(
        excinfo, "apt-get install dataset-fashion-mnist", "data.download=true", "data.debian_dir"
    )
    no_debian = FashionMNISTDataModule(root=tmp_path / "root", debian_dir=None)
    with pytest.raises(ConfigError, match="dataset-fashion-mnist"):
        no_debian.setup()


@pytest.mark.skipif(
    not DEBIAN_DIR.is_dir(),
    reason="Debian package dataset-fashion-mnist not installed (/usr/share/datasets/fashion-mnist)",
)
def test_fashion_mnist_real_debian_files(tmp_path):
    dm = FashionMNISTDataModule(root=tmp_path)  # default debian_dir; the one full load here
    dm.setup()
    assert dm.x_train.shape == (54000, 1, 28, 28) and dm.x_val.shape == (6000, 1, 28, 28)
    assert dm.x_test.shape == (10000, 1, 28, 28)
    assert dm.y_train.bincount().tolist() == [5400] * 10
    assert dm.y_val.bincount().tolist() == [600] * 10
    assert dm.y_test.bincount().tolist() == [1000] * 10
    assert abs(dm.x_train.mean().item()) < 1e-3
