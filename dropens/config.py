"""Compose run configs from the Hydra tree in ``configs/`` (groups: data, model, method, dropout,
trainer, logger; optional ``recipe`` per (data, model) pair).

We use Hydra's compose API rather than ``@hydra.main``: one process can compose many runs (a study
runs its grid without re-importing anything), and bad choices are turned into one-line errors.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dropens.errors import ConfigError, bad_choice

GROUPS = ("data", "model", "method", "dropout", "trainer", "logger")


def config_dir() -> Path:
    """``configs/`` of the repository (editable install) or the copy shipped in the wheel."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "_configs", here.parent / "configs"):
        if (candidate / "train.yaml").exists():
            return candidate
    raise ConfigError(f"no configs/ directory found next to {here}; reinstall dropens")


def group_options(group: str) -> list[str]:
    """Names of the configs of a group, e.g. ``group_options("data") -> ["digits", "mnist1d", ...]``."""
    return sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))


def check_overrides(overrides: Sequence[str]) -> None:
    """One-line errors for malformed overrides and unknown group choices (before Hydra's own)."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep and key.startswith("~"):  # deletion: ~key (the schema says if it is required)
            continue
        if not sep:
            raise ConfigError(
                f"override {item!r} is not of the form key=value (e.g. dropout.p=0.1)"
            )
        key = key.lstrip("+~")
        if key in GROUPS and value not in group_options(key):
            raise bad_choice(key, value, group_options(key))


def compose(overrides: Sequence[str] = (), config_name: str = "train") -> DictConfig:
    """The resolved run config for ``overrides`` (Hydra override syntax, e.g. ``["dropout.p=0.3"]``)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    check_overrides(overrides)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(config_dir()), version_base="1.3"):
            cfg = hydra_compose(config_name=config_name, overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"bad override: {first}") from err
    return cfg


def to_container(cfg: DictConfig) -> dict[str, Any]:
    """Plain resolved dict of a config (what the run record stores)."""
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def plain_dict(cfg: Any) -> dict[str, Any]:
    """A resolved plain dict from a dict or an OmegaConf ``DictConfig`` (interpolations such as
    ``${oc.env:DROPENS_DATA,...}`` are resolved in both)."""
    node = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg))
    return OmegaConf.to_container(node, resolve=True)  # type: ignore[return-value]
