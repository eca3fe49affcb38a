"""Compose run configs from the Hydra tree in ``configs/`` (groups: data, model, method, dropout,
trainer, logger; optional ``recipe`` per (data, model) pair).

We use Hydra's compose API rather than ``@hydra.main``: one process can compose many runs (a study
runs its grid without re-importing anything), and bad choices are turned into one-line errors.

**User directories.** A project that uses dropens keeps its own configs and studies: the
directories of :func:`user_config_dirs` -- ``--config-dir DIR`` (the CLI puts it first in
``$DROPENS_CONFIG_PATH``), then every directory of ``$DROPENS_CONFIG_PATH`` (``os.pathsep``
separated), then ``./configs`` of the current directory -- come before the shipped ``configs/`` on
Hydra's config search path, so a user file *extends* a group (``configs/model/mynet.yaml`` is
``model=mynet``) or *overrides* a shipped one of the same name. Each such directory's sibling
``experiments/`` holds the user's studies (:func:`dropens.study.experiments_dirs`). Shipped runs
are unaffected: the shipped directories themselves are never counted as user directories, and
a run id hashes the resolved config, not where it came from.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dropens.errors import ConfigError, bad_choice

GROUPS = ("data", "model", "method", "dropout", "trainer", "logger")
CONFIG_PATH_ENV = "DROPENS_CONFIG_PATH"  # user configs directories, os.pathsep separated


def config_dir() -> Path:
    """``configs/`` of the repository (editable install) or the copy shipped in the wheel."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "_configs", here.parent / "configs"):
        if (candidate / "train.yaml").exists():
            return candidate
    raise ConfigError(f"no configs/ directory found next to {here}; reinstall dropens")


def _shipped(name: str) -> Path | None:
    """The directory ``name`` (``configs`` | ``experiments``) shipped with the package, found
    without the patchable lookups (so a test that moves them does not turn the repository's own
    directories into user directories)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / f"_{name}", here.parent / name):
        if candidate.is_dir():
            return candidate.resolve()
    return None


def user_config_dirs() -> list[Path]:
    """The user's configs directories, first wins (module docstring): the entries of
    ``$DROPENS_CONFIG_PATH``, then ``./configs``; only existing directories, never the shipped
    one, each once.

    Raises:
        ConfigError: an entry of ``$DROPENS_CONFIG_PATH`` that is not a directory (one line).
    """
    shipped = _shipped("configs")
    dirs: list[Path] = []
    for entry in os.environ.get(CONFIG_PATH_ENV, "").split(os.pathsep):
        if not entry.strip():
            continue
        path = Path(os.path.expandvars(os.path.expanduser(entry))).resolve()
        if not path.is_dir():
            raise ConfigError(
                f"{CONFIG_PATH_ENV} entry {entry!r} is not a directory; give configs directories "
                f"separated by {os.pathsep!r} (or --config-dir DIR)"
            )
        dirs.append(path)
    local = Path.cwd() / "configs"
    if local.is_dir():
        dirs.append(local.resolve())
    out: list[Path] = []
    for path in dirs:
        if path != shipped and path not in out:
            out.append(path)
    return out


def config_dirs() -> list[Path]:
    """Every configs directory Hydra searches, first wins: :func:`user_config_dirs`, then the
    shipped :func:`config_dir`."""
    shipped = config_dir()
    return [*(d for d in user_config_dirs() if d != shipped.resolve()), shipped]


def config_file(relative: str | Path) -> Path | None:
    """The file ``relative`` (e.g. ``model/cnn1d.yaml``) as Hydra finds it: in the first
    configs directory that has it (``None``: in none)."""
    for base in config_dirs():
        if (base / relative).is_file():
            return base / relative
    return None


def group_options(group: str) -> list[str]:
    """Names of the configs of a group in every configs directory (:func:`config_dirs`), e.g.
    ``group_options("data") -> ["digits", "mnist1d", ...]``."""
    return sorted({p.stem for base in config_dirs() for p in (base / group).glob("*.yaml")})


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


# nodes whose keys are the user's own (a factory's keyword arguments): `model.kwargs.x=1` adds
# or replaces the key, as `++model.kwargs.x=1` would, instead of asking for a `+`
FREE_NODES = ("model.kwargs.",)


def _free_key(item: str) -> str:
    return f"++{item}" if item.startswith(FREE_NODES) else item


def compose(overrides: Sequence[str] = (), config_name: str = "train") -> DictConfig:
    """The resolved run config for ``overrides`` (Hydra override syntax, e.g. ``["dropout.p=0.3"]``)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    check_overrides(overrides)
    overrides = [_free_key(o) for o in overrides]
    GlobalHydra.instance().clear()
    users = user_config_dirs()
    try:
        if not users:
            with initialize_config_dir(str(config_dir()), version_base="1.3"):
                return hydra_compose(config_name=config_name, overrides=list(overrides))
        return _compose_with_user_dirs(users, config_name, overrides)
    except (HydraException, OmegaConfBaseException) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"bad override: {first}") from err
    finally:
        GlobalHydra.instance().clear()


def _compose_with_user_dirs(
    users: Sequence[Path], config_name: str, overrides: Sequence[str]
) -> DictConfig:
    """Hydra's compose with ``users`` before the shipped configs on the search path (a
    ``hydra.searchpath`` override would put them after, and cannot hold the primary config)."""
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path
    from hydra.core.config_search_path import SearchPathQuery
    from hydra.types import RunMode
    from omegaconf import open_dict

    search_path = create_config_search_path(str(config_dir()))
    for path in users:  # each before the shipped ("main") entry, in order: first wins
        search_path.prepend(
            "dropens-user", f"file://{path}", anchor=SearchPathQuery(provider="main")
        )
    hydra = Hydra.create_main_hydra2(task_name="dropens", config_search_path=search_path)
    cfg = hydra.compose_config(
        config_name=config_name,
        overrides=list(overrides),
        run_mode=RunMode.RUN,
        with_log_configuration=False,
    )
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def to_container(cfg: DictConfig) -> dict[str, Any]:
    """Plain resolved dict of a config (what the run record stores)."""
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def plain_dict(cfg: Any) -> dict[str, Any]:
    """A resolved plain dict from a dict or an OmegaConf ``DictConfig`` (interpolations such as
    ``${oc.env:DROPENS_DATA,...}`` are resolved in both)."""
    node = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg))
    return OmegaConf.to_container(node, resolve=True)  # type: ignore[return-value]
