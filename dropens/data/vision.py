"""Image datasets read through torchvision: MNIST, Fashion-MNIST, CIFAR-10/100, SVHN.

Files live under the data root in torchvision's own layout::

    <root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte
    <root>/FashionMNIST/raw/...            (same names)
    <root>/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}
    <root>/cifar-100-python/{train,test,meta}
    <root>/SVHN/{train,test}_32x32.mat     (the ``extra`` split is not used)

``download: false`` (the default; these machines are offline) never touches the network and a
missing file is a one-line :class:`ConfigError` saying how to get it; ``download: true`` (on
clusters with internet) lets torchvision fetch and md5-verify the archives. Fashion-MNIST
first looks for the Debian package ``dataset-fashion-mnist`` and decompresses its files into
the raw layout once.

Each set is loaded whole as uint8, scaled to [0, 1], then standardized per channel with the
training split's statistics (see :mod:`dropens.data.base`).
"""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torchvision.datasets as tvd
from torch import Tensor

from dropens.data.base import TensorDataModule, as_tensors
from dropens.errors import ConfigError

DIGIT_NAMES = tuple(str(i) for i in range(10))
DEBIAN_FASHION_DIR = "/usr/share/datasets/fashion-mnist"

# Files already on disk are checked for existence, not md5. torchvision hashes every CIFAR/SVHN
# file at each construction; we skip that because (1) a download is still verified (CIFAR's
# download() fetches the tarball with its md5, SVHN's download_url passes the file md5), (2) it
# lets tests read small files written in the real on-disk format, and (3) it saves hashing
# ~180 MB on every setup. A truncated file still fails loudly, while unpickling / loadmat.


class _ExistenceCheckedCIFAR:
    def _check_integrity(self) -> bool:
        return all(
            os.path.isfile(os.path.join(self.root, self.base_folder, name))
            for name, _ in self.train_list + self.test_list
        )


class _CIFAR10(_ExistenceCheckedCIFAR, tvd.CIFAR10):
    meta: ClassVar[dict[str, Any]] = {**tvd.CIFAR10.meta, "md5": None}


class _CIFAR100(_ExistenceCheckedCIFAR, tvd.CIFAR100):
    meta: ClassVar[dict[str, Any]] = {**tvd.CIFAR100.meta, "md5": None}


class _SVHN(tvd.SVHN):
    def _check_integrity(self) -> bool:
        return os.path.isfile(os.path.join(self.root, self.filename))


class TorchvisionDataModule(TensorDataModule):
    """Base of the torchvision-backed modules.

    Args:
        download: let torchvision download missing files (needs internet).
        **kwargs: see :class:`TensorDataModule`.
    """

    title: ClassVar[str] = ""  # human-readable name for messages

    def __init__(self, *, download: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.download = bool(download)

    # --- per dataset ----------------------------------------------------------------------

    def required_files(self) -> list[Path]:
        raise NotImplementedError

    def make_dataset(self, train: bool, download: bool = False) -> Any:
        raise NotImplementedError

    def dataset_arrays(self, ds: Any) -> tuple[Any, Any]:
        """``(uint8 images (N, C, H, W) or (N, H, W), labels)`` of a torchvision dataset."""
        return ds.data, ds.targets

    # --- shared ---------------------------------------------------------------------------

    def missing_files(self) -> list[Path]:
        return [p for p in self.required_files() if not p.is_file()]

    def prepare_data(self) -> None:
        missing = self.missing_files()
        if not missing:
            return
        if not self.download:
            raise self.missing_error(missing)
        for train in (True, False):
            self.make_dataset(train, download=True)

    def missing_error(self, missing: list[Path]) -> ConfigError:
        return ConfigError(
            f"data.root={str(self.root)!r}: {self.title} not found (missing {missing[0]}); "
            "set data.download=true to fetch it (needs internet) or copy the files there"
        )

    def load_arrays(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        out: list[Tensor] = []
        for train in (True, False):
            x, y = self.dataset_arrays(self.make_dataset(train))
            out.extend(as_tensors(x, y, self.input_shape, scale=255.0))
        x_train, y_train, x_test, y_test = out
        return x_train, y_train, x_test, y_test


_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


class MNISTDataModule(TorchvisionDataModule):
    """MNIST (60,000 train / 10,000 test), ``input_shape=(1, 28, 28)``."""

    name = "mnist"
    title = "MNIST"
    input_shape = (1, 28, 28)
    n_classes = 10
    class_names = DIGIT_NAMES
    dataset_cls: ClassVar[type] = tvd.MNIST

    @property
    def raw_dir(self) -> Path:
        return self.root / self.dataset_cls.__name__ / "raw"

    def required_files(self) -> list[Path]:
        return [self.raw_dir / name for name in _IDX_FILES]

    def make_dataset(self, train: bool, download: bool = False) -> Any:
        return self.dataset_cls(str(self.root), train=train, download=download)


class FashionMNISTDataModule(MNISTDataModule):
    """Fashion-MNIST (Xiao et al. 2017), ``input_shape=(1, 28, 28)``.

    Args:
        debian_dir: where the Debian package ``dataset-fashion-mnist`` puts its
            ``*-ubyte.gz`` files; used, when the root has no prepared copy, by decompressing
            them once into ``<root>/FashionMNIST/raw``. ``null`` disables it.
        **kwargs: see :class:`TorchvisionDataModule`.
    """

    name = "fashion_mnist"
    title = "Fashion-MNIST"
    class_names = tuple(tvd.FashionMNIST.classes)
    dataset_cls = tvd.FashionMNIST

    def __init__(self, *, debian_dir: str | None = DEBIAN_FASHION_DIR, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.debian_dir = Path(os.path.expanduser(debian_dir)) if debian_dir else None

    def debian_files(self) -> list[Path] | None:
        """The four ``.gz`` files of the Debian package, or ``None`` if any is absent."""
        if self.debian_dir is None:
            return None
        files = [self.debian_dir / f"{name}.gz" for name in _IDX_FILES]
        return files if all(f.is_file() for f in files) else None

    def prepare_data(self) -> None:
        missing = self.missing_files()
        if not missing:
            return
        debian = self.debian_files()
        if debian is not None:
            for src in debian:
                _gunzip_atomic(src, self.raw_dir / src.name.removesuffix(".gz"))
            return
        if not self.download:
            raise ConfigError(
                f"data.root={str(self.root)!r}: Fashion-MNIST not found (missing {missing[0]}, "
                f"and data.debian_dir={_str(self.debian_dir)!r} has no *-ubyte.gz files); "
                "run `apt-get install dataset-fashion-mnist` or set data.download=true"
            )
        for train in (True, False):
            self.make_dataset(train, download=True)


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)


def _gunzip_atomic(src: Path, dst: Path) -> None:
    """Decompress ``src`` to ``dst`` so that readers never see a partial file."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=dst.name, suffix=".tmp")
    try:
        with gzip.open(src, "rb") as fin, os.fdopen(fd, "wb") as fout:
            shutil.copyfileobj(fin, fout, length=1 << 20)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class CIFAR10DataModule(TorchvisionDataModule):
    """CIFAR-10 (50,000 train / 10,000 test), ``input_shape=(3, 32, 32)``."""

    name = "cifar10"
    title = "CIFAR-10"
    input_shape = (3, 32, 32)
    n_classes = 10
    class_names = (
        "airplane", "automobile", "bird", "cat", "deer",
        "dog", "frog", "horse", "ship", "truck",
    )  # fmt: skip
    dataset_cls: ClassVar[type] = _CIFAR10

    def required_files(self) -> list[Path]:
        c = self.dataset_cls
        names = [n for n, _ in c.train_list + c.test_list] + [c.meta["filename"]]
        return [self.root / c.base_folder / n for n in names]

    def make_dataset(self, train: bool, download: bool = False) -> Any:
        return self.dataset_cls(str(self.root), train=train, download=download)

    def dataset_arrays(self, ds: Any) -> tuple[Any, Any]:
        # stored (N, H, W, C) uint8; we want channels first
        return torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2), ds.targets


class CIFAR100DataModule(CIFAR10DataModule):
    """CIFAR-100 with its 100 fine labels, ``input_shape=(3, 32, 32)``."""

    name = "cifar100"
    title = "CIFAR-100"
    n_classes = 100
    class_names = (
        "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle",
        "bottle", "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle",
        "caterpillar", "cattle", "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch",
        "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant", "flatfish", "forest",
        "fox", "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn_mower",
        "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain",
        "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear",
        "pickup_truck", "pine_tree", "plain", "plate", "poppy", "porcupine", "possum",
        "rabbit", "raccoon", "ray", "road", "rocket", "rose", "sea", "seal", "shark", "shrew",
        "skunk", "skyscraper", "snail", "snake", "spider", "squirrel", "streetcar",
        "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger",
        "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree",
        "wolf", "woman", "worm",
    )  # fmt: skip
    dataset_cls = _CIFAR100


class SVHNDataModule(TorchvisionDataModule):
    """SVHN cropped digits (73,257 train / 26,032 test; ``extra`` unused),
    ``input_shape=(3, 32, 32)``; label 10 of the files is digit 0 (torchvision remaps it)."""

    name = "svhn"
    title = "SVHN"
    input_shape = (3, 32, 32)
    n_classes = 10
    class_names = DIGIT_NAMES

    @property
    def svhn_dir(self) -> Path:
        return self.root / "SVHN"

    def required_files(self) -> list[Path]:
        return [self.svhn_dir / _SVHN.split_list[s][1] for s in ("train", "test")]

    def make_dataset(self, train: bool, download: bool = False) -> Any:
        split = "train" if train else "test"
        return _SVHN(str(self.svhn_dir), split=split, download=download)

    def dataset_arrays(self, ds: Any) -> tuple[Any, Any]:
        return ds.data, ds.labels  # data already (N, C, H, W)
