"""build_datamodule: registry, configs/data/*.yaml, one-line errors, data root."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from data_fakes import assert_one_line_config_error
from omegaconf import OmegaConf

from dropens.data import DATAMODULES, build_datamodule
from dropens.data.base import OPTIONAL_FIELDS, config_fields, resolve_root
from dropens.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "data"
COMMON = {"name", "root", "batch_size", "eval_batch_size", "val_fraction", "split_seed", "augment"}


def test_every_registered_dataset_has_a_config_and_vice_versa():
    assert {p.stem for p in CONFIGS.glob("*.yaml")} == set(DATAMODULES)


# the user's own data (data=folder: data.root=PATH, data=tensors: data.path=FILE) have no shipped
# files to build from; tests/test_custom.py builds and trains them from files a test writes
USER_DATA = {"folder", "tensors"}


@pytest.mark.parametrize("name", sorted(USER_DATA))
def test_user_data_configs_list_every_field_of_their_module(name):
    cfg = OmegaConf.load(CONFIGS / f"{name}.yaml")
    assert cfg.name == name
    # data=tensors reads data.path; the inherited download/cache directory `root` is unused
    unused = {"root"} if name == "tensors" else set()
    fields = set(config_fields(DATAMODULES[name])) - {"seed", *OPTIONAL_FIELDS, *unused}
    assert set(cfg) - {"name"} == fields


@pytest.mark.parametrize("name", sorted(set(DATAMODULES) - USER_DATA))
def test_config_builds_its_module(name, tmp_path):
    cfg = OmegaConf.load(CONFIGS / f"{name}.yaml")
    assert cfg.name == name
    assert set(cfg) >= COMMON
    # every field is in the config, except the optional eval-set fields (studies and smoke forms add
    # them, e.g. +data.eval_limit=N, so that ordinary run ids do not change)
    assert set(cfg) - {"name"} == set(config_fields(DATAMODULES[name])) - {"seed", *OPTIONAL_FIELDS}
    cfg.root = str(tmp_path)
    dm = build_datamodule(cfg, seed=5)  # a DictConfig, as Hydra passes it
    assert type(dm) is DATAMODULES[name] and dm.name == name
    assert dm.seed == 5 and dm.split_seed == 0 and dm.root == tmp_path
    assert dm.batch_size == (100 if name == "mnist1d" else 128)
    assert len(dm.input_shape) in (2, 3) and dm.n_classes == len(dm.class_names)
    if name not in ("mnist1d", "digits", "mnist5k", "faces"):  # generated or packaged: no download
        assert dm.download is False


def test_unknown_name_lists_the_choices():
    with pytest.raises(ConfigError) as excinfo:
        build_datamodule({"name": "imagenet"})
    assert_one_line_config_error(excinfo, "data.name", "'imagenet'", *DATAMODULES)
    with pytest.raises(ConfigError, match=r"data\.name"):
        build_datamodule({})


def test_unknown_field_lists_the_valid_fields():
    with pytest.raises(ConfigError) as excinfo:
        build_datamodule({"name": "digits", "batchsize": 32})
    assert_one_line_config_error(excinfo, "data.batchsize", "batch_size", "test_fraction")
    with pytest.raises(ConfigError, match=r"data\.seed"):  # the training seed is not a data field
        build_datamodule({"name": "digits", "seed": 1})


def test_augment_needs_images():
    with pytest.raises(ConfigError) as excinfo:
        build_datamodule({"name": "mnist1d", "augment": "crop_flip"})
    assert_one_line_config_error(excinfo, "data.augment", "mnist1d")
    assert build_datamodule({"name": "cifar10", "augment": "crop_flip"}).augment == "crop_flip"


def test_root_from_env_and_home(monkeypatch, tmp_path):
    cfg = OmegaConf.load(CONFIGS / "digits.yaml")
    monkeypatch.setenv("DROPENS_DATA", str(tmp_path / "env"))
    assert build_datamodule(cfg).root == tmp_path / "env"
    monkeypatch.delenv("DROPENS_DATA")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert build_datamodule(cfg).root == tmp_path / "home" / ".cache" / "dropens" / "data"
    assert resolve_root(None) == tmp_path / "home" / ".cache" / "dropens" / "data"
    assert resolve_root("~/d") == tmp_path / "home" / "d"
    # a plain dict holding the interpolation string is resolved too
    plain = OmegaConf.to_container(cfg)
    assert build_datamodule(plain).root == tmp_path / "home" / ".cache" / "dropens" / "data"


def test_training_seed_drives_order_not_split(tmp_path):
    a = build_datamodule({"name": "digits", "root": str(tmp_path)}, seed=0)
    b = build_datamodule({"name": "digits", "root": str(tmp_path)}, seed=1)
    a.setup()
    b.setup()
    assert torch.equal(a.x_val, b.x_val) and torch.equal(a.x_train, b.x_train)
    ya = next(iter(a.train_dataloader()))[1]
    yb = next(iter(b.train_dataloader()))[1]
    assert not torch.equal(ya, yb)


@pytest.mark.parametrize("name", ["digits", "fashion_mnist"])
def test_hydra_composes_the_data_group(tmp_path, name):
    from hydra import compose, initialize_config_dir

    (tmp_path / "primary.yaml").write_text(
        f"defaults:\n  - data: digits\n  - _self_\nhydra:\n  searchpath: [file://{CONFIGS.parent}]\n"
    )
    with initialize_config_dir(config_dir=str(tmp_path), version_base=None):
        cfg = compose(config_name="primary", overrides=[f"data={name}", f"data.root={tmp_path}"])
    assert cfg.data.name == name
    dm = build_datamodule(cfg.data)
    assert type(dm) is DATAMODULES[name] and dm.root == tmp_path
