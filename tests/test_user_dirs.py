"""A user's own project outside the repository: ``./configs`` and ``./experiments`` (or
``--config-dir`` / ``$DROPENS_CONFIG_PATH``) extend and override the shipped ones
(dropens/config.py, dropens/study.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dropens.cli import main
from dropens.config import CONFIG_PATH_ENV, compose
from dropens.study import expand

MYNET = """\
# my own network, built from torch modules by Hydra's instantiate (nested _target_ nodes):
# Flatten, then torchvision's MLP (40-64-10) whose nn.Dropout becomes a dropens site
name: custom
target: torch.nn:Sequential
kwargs:
  _args_:
    - {_target_: torch.nn.Flatten}
    - {_target_: torchvision.ops.MLP, in_channels: 40, hidden_channels: [64, 10], dropout: 0.1}
dropout_after: []
"""
MYSTUDY = """\
claim: >-
  On my MLP, MC dropout beats the deterministic pass once T is large enough.
setup: >-
  MNIST-1D, my network (configs/model/mynet.yaml), dropout p 0.2, one seed.
report: mc_samples
overrides: [data=mnist1d, model=mynet, method=dropout]
seeds: [0]
grid:
  - {dropout.p: 0.2}
smoke: [trainer=smoke, "eval.mc_curve=[1,2,4]", eval.mc_samples=4, "+data.eval_limit=256",
        data.eval_batch_size=100]
figures: [error_vs_T]
"""


def _project(root: Path) -> Path:
    (root / "configs" / "model").mkdir(parents=True)
    (root / "experiments").mkdir()
    (root / "configs" / "model" / "mynet.yaml").write_text(MYNET)
    (root / "experiments" / "mystudy.yaml").write_text(MYSTUDY)
    return root


@pytest.fixture
def user_dir(tmp_path, monkeypatch):
    """``tmp_path/project`` with its own model config and study, as the current directory."""
    root = _project(tmp_path / "project")
    monkeypatch.chdir(root)
    monkeypatch.setenv(CONFIG_PATH_ENV, "")  # restored after the test (--config-dir writes it)
    return root


def test_user_study_runs_and_reports(user_dir, capsys):
    """Acceptance 3: `dropens study mystudy` (smoke) and `dropens report mystudy` from the user's
    directory, reading its configs/model/mynet.yaml and experiments/mystudy.yaml."""
    common = ["smoke=true", f"results_root={user_dir / 'results'}"]
    assert main(["study", "mystudy", *common, "logger=csv"]) == 0
    plan = expand("mystudy", common)
    assert len(plan.runs) == 1 and all(r.done for r in plan.records())
    assert plan.runs[0]["model"]["target"] == "torch.nn:Sequential"
    assert main(["report", "mystudy", *common]) == 0  # --out: ./reports of the user's project
    out = user_dir / "reports" / "mystudy"
    assert (out / "error_vs_T.png").stat().st_size > 10_000
    assert (out / "runs.csv").exists()
    text = (user_dir / "reports" / "REPORT.md").read_text()
    assert "<!-- BEGIN study:mystudy -->" in text and "On my MLP" in text
    assert "report mystudy: 1 of 1 runs complete" in capsys.readouterr().out


def test_list_and_cfg_print_the_directories_read(user_dir, capsys):
    shipped = Path(__file__).resolve().parents[1]
    assert main(["list", f"results_root={user_dir / 'results'}"]) == 0
    out = capsys.readouterr().out
    assert f"configs: {user_dir / 'configs'}, {shipped / 'configs'}" in out
    assert f"experiments: {user_dir / 'experiments'}, {shipped / 'experiments'}" in out
    assert "mystudy" in out and "quickstart" in out
    assert main(["train", "--cfg", "model=mynet"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"# configs: {user_dir / 'configs'}, ")
    assert "target: torch.nn:Sequential" in out


def test_config_dir_option_from_elsewhere(tmp_path, monkeypatch, capsys):
    project = _project(tmp_path / "elsewhere")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(CONFIG_PATH_ENV, "")
    assert main(["study", "mystudy", "--list", "--config-dir", str(project / "configs")]) == 0
    assert "dropout-custom-mnist1d-p0.2-s0-" in capsys.readouterr().out


def test_user_file_overrides_a_shipped_one(user_dir):
    (user_dir / "configs" / "trainer").mkdir()
    (user_dir / "configs" / "trainer" / "smoke.yaml").write_text(
        "defaults:\n  - default\n  - _self_\nmax_steps: 3\n"
    )
    assert compose(["trainer=smoke"]).trainer.max_steps == 3


def test_shipped_run_ids_do_not_depend_on_user_dirs(user_dir, tmp_path, monkeypatch):
    with_user = [r["run_id"] for r in expand("mc_samples", ["smoke=true"]).runs]
    monkeypatch.chdir(tmp_path)
    without = [r["run_id"] for r in expand("mc_samples", ["smoke=true"]).runs]
    assert with_user == without and len(without) > 1


def test_bad_config_path_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(CONFIG_PATH_ENV, str(tmp_path / "nope"))
    assert main(["list"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and CONFIG_PATH_ENV in err and "is not a directory" in err
    monkeypatch.setenv(CONFIG_PATH_ENV, "")
    with pytest.raises(SystemExit) as stop:
        main(["list", "--config-dir", str(tmp_path / "nope")])
    assert stop.value.code == 2
    assert "--config-dir" in capsys.readouterr().err
