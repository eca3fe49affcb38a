"""Bad input is rejected before training with one line naming the field, the value and the choices,
and nothing is written.

``CASES``: every failure category of a run's input (issue 16) — optimizer, Trainer, precision,
accelerator, step/epoch budget, seeds, eval sizes against memory, typos added with ``+``, names
and paths — each refused by ``dropens train`` with exit status 2, one ``error:`` line naming the
problem, no traceback and nothing written (the ``assert_rejected`` fixture). The runtime cases
(non-finite loss, a held lock, ``overwrite`` with bad settings, damaged files, study names,
report paths) follow below the table.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch

# Lightning imported at collection: its log handler then writes to pytest's session stream, not
# to the capsys stream of the first test that trains (closed after that test)
import dropens.train  # noqa: F401
from dropens.cli import main

# an accelerator this machine does not have (a GPU machine has "gpu": then Apple's "mps")
MISSING_ACCELERATOR = "mps" if torch.cuda.is_available() else "gpu"
A_FILE = str(Path(__file__).resolve())  # a path that is a file, not a directory
UNWRITABLE = "/proc/dropens-cannot-write-here"  # even root cannot create anything in /proc

CASES = {
    "p_too_large": (["dropout.p=1.0"], ["dropout.p=1.0", "[0, 1)"]),
    "p_negative": (["dropout.p=-0.1"], ["dropout.p=-0.1", "[0, 1)"]),
    "unknown_dist": (
        ["dropout.dist=cauchy"],
        ["dropout.dist='cauchy'", "bernoulli", "gaussian", "uniform"],
    ),
    "unknown_structure": (
        ["dropout.structure=row"],
        ["dropout.structure='row'", "channel", "location", "block"],
    ),
    "unknown_scale": (["dropout.scale=half"], ["dropout.scale='half'", "inverted", "none"]),
    "channel_on_mlp": (
        ["model=mlp", "dropout.structure=channel"],
        ["dropout.structure='channel'", "element"],
    ),
    "location_on_mlp": (
        ["model=mlp", "dropout.structure=location"],
        ["dropout.structure='location'", "element"],
    ),
    "block_size_zero": (
        ["dropout.structure=block", "dropout.block_size=0"],
        ["dropout.block_size=0", ">= 1"],
    ),
    "block_too_large": (
        ["dropout.structure=block", "dropout.block_size=50"],
        ["dropout.block_size=50", "larger"],
    ),
    "mc_samples_zero": (["eval.mc_samples=0"], ["eval.mc_samples", ">= 1"]),
    "unknown_dataset": (["data=imagenet"], ["data='imagenet'", "mnist1d"]),
    "unknown_model": (["model=vit"], ["model='vit'", "cnn1d", "mlp"]),
    "unknown_method": (["method=bagging"], ["method='bagging'", "dropout", "plain"]),
    "unknown_objective": (
        ["method.objective=boost"],
        ["method.objective='boost'", "member", "ensemble"],
    ),
    "unknown_site": (
        ["model.dropout_sites=[attention]"],
        ["model.dropout_sites", "attention", "conv"],
    ),
    "unknown_eval_set": (["eval.sets=[clean,rotated]"], ["eval.sets=['rotated']", "all", "clean"]),
    "occlusion_unknown_field": (["+eval.occlusion={size:4}"], ["eval.occlusion.size", "patch"]),
    "occlusion_bad_value": (["+eval.occlusion={patch:0}"], ["eval.occlusion.patch=0", ">= 1"]),
    "faces_rho_above_one": (
        ["data=faces", "model=cnn2d", "data.rho=1.5"],
        ["data.rho=1.5", "[0, 1]"],
    ),
    "faces_size_too_small": (
        ["data=faces", "model=cnn2d", "data.size=8"],
        ["data.size=8", ">= 16"],
    ),
    "temperature_scaling_without_val": (
        ["+eval.temperature_scaling=true"],
        ["eval.temperature_scaling=true", "+data.eval_val=true"],
    ),
    "missing_fashion_files": (
        [
            "data=fashion_mnist",
            "model=cnn2d",
            "data.debian_dir=/nonexistent",
            "data.root=/nonexistent/x",
        ],
        ["fashion", "apt-get install dataset-fashion-mnist"],
    ),
    # ---- optimizer (was: checked only when Lightning called configure_optimizers)
    "lr_not_a_number": (["optim.lr=fast"], ["optim.lr='fast'", "finite number > 0"]),
    "lr_infinite": (["optim.lr=inf"], ["optim.lr=inf", "finite"]),
    "weight_decay_negative": (["optim.weight_decay=-1"], ["optim.weight_decay=-1", ">= 0"]),
    "unknown_optimizer": (["optim.name=adam"], ["optim.name='adam'", "adamw", "sgd"]),
    "unknown_schedule": (["optim.schedule=linear"], ["optim.schedule='linear'", "cosine"]),
    # ---- Trainer settings, precision, accelerator availability
    "max_steps_negative": (["trainer.max_steps=-3"], ["trainer.max_steps=-3", ">= 1 or -1"]),
    "precision_bogus": (["trainer.precision=bogus"], ["trainer.precision='bogus'", "32-true"]),
    "accelerator_missing": (
        [f"trainer.accelerator={MISSING_ACCELERATOR}"],
        [f"trainer.accelerator='{MISSING_ACCELERATOR}'", "this machine"],
    ),
    "val_interval_beyond_epoch": (
        ["trainer.val_check_interval=100"],
        ["trainer.val_check_interval=100", "check_val_every_n_epoch=null"],
    ),
    "unknown_trainer_argument": (
        ["+trainer.max_step=8"],
        ["trainer.max_step", "did you mean trainer.max_steps?"],
    ),
    # ---- the step/epoch budget: finite and at least one step
    "zero_epochs": (
        ["trainer.max_epochs=0", "trainer.max_steps=-1"],
        ["trainer.max_epochs=0", "trains nothing"],
    ),
    "no_budget_trains_forever": (
        ["trainer.max_steps=-1"],
        ["trainer.max_steps=-1", "trains forever"],
    ),
    "clock_budget": (["+trainer.max_time=00:00:01:00"], ["trainer.max_time", "steps"]),
    # ---- evaluation sizes: validation masks, the MC predictions against this machine's memory
    "val_mc_samples_zero": (["eval.val_mc_samples=0"], ["eval.val_mc_samples=0", ">= 1"]),
    "n_bins_zero": (["eval.n_bins=0"], ["eval.n_bins=0", ">= 1"]),
    "mc_samples_beyond_memory": (
        ["eval.mc_samples=1000000000"],
        ["eval.mc_samples=1000000000", "GiB", "lower eval.mc_samples"],
    ),
    # ---- seeds
    "seed_not_an_integer": (["seed=abc"], ["seed='abc'", "integer"]),
    "seed_negative": (["seed=-1"], ["seed=-1", "[0, 4294967295]"]),
    "seed_fractional": (["seed=1.5"], ["seed=1.5", "integer"]),
    # ---- typos added with + (Hydra accepts any new key): refused, naming the nearest valid key
    "typo_optim_key": (["+optim.lrr=0.1"], ["optim.lrr", "did you mean optim.lr?"]),
    "typo_method_key": (["+method.kk=3"], ["method.kk", "method dropout", "objective"]),
    "typo_eval_key": (
        ["+eval.temprature_scaling=true"],
        ["eval.temprature_scaling", "did you mean eval.temperature_scaling?"],
    ),
    "typo_top_level_key": (["+sede=1"], ["sede", "did you mean seed?"]),
    "typo_model_key": (["+model.chanels=8"], ["model.chanels", "did you mean", "channels"]),
    "typo_data_key": (["+data.eval_limt=10"], ["data.eval_limt", "did you mean data.eval_limit?"]),
    "removed_required_key": (["~optim.lr"], ["optim.lr is missing"]),
    # ---- names and paths: nothing outside results_root, every given path checked
    "study_escapes_results_root": (["study=../escaped"], ["study='../escaped'", "plain name"]),
    "study_absolute_path": (["study=/tmp/x"], ["study='/tmp/x'", "plain name"]),
    "study_hidden": (["study=.hidden"], ["study='.hidden'", "plain name"]),
    "run_id_escapes": (["run_id=../../x"], ["run_id='../../x'", "plain name"]),
    "results_root_is_a_file": ([f"results_root={A_FILE}"], ["results_root=", "is a file"]),
    "results_root_not_writable": (
        [f"results_root={UNWRITABLE}"],
        ["results_root=", "cannot be created"],
    ),
    "data_root_is_a_file": ([f"data.root={A_FILE}"], ["data.root=", "is a file"]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_one_line_error_and_nothing_written(name, assert_rejected):
    overrides, must_contain = CASES[name]
    assert_rejected(overrides, must_contain)


# ---------------------------------------------------------------- runtime failures (issue 16)

SMOKE = ["trainer=smoke", "logger=none", "eval.mc_curve=[1,4]", "eval.mc_samples=4"]


def _one(err: str, prefix: str = "error: ") -> str:
    """The single line of ``err`` starting with ``prefix`` (Lightning may add info lines), and no
    traceback."""
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith(prefix)]
    assert len(lines) == 1, err
    return lines[0]


def test_nan_loss_stops_the_run_without_done(tmp_path, capsys):
    """optim.lr=1e10: the loss is not finite after a step; the run stops at once (one line naming
    the step and the loss), exits 1 and leaves no DONE, so no report takes it for complete."""
    code = main(["train", *SMOKE, f"results_root={tmp_path}", "optim.lr=1e10"])
    line = _one(capsys.readouterr().err)
    assert code == 1
    for fragment in ("training loss", "is nan at step", "optim.lr"):
        assert fragment in line, line
    assert list(tmp_path.rglob("config.yaml")) and not list(tmp_path.rglob("DONE"))


def test_second_identical_run_refused_while_the_lock_is_held_and_stale_lock_taken_over(
    tmp_path, capsys
):
    from dropens.config import compose, to_container
    from dropens.locks import RunLock, lock_path
    from dropens.results import RunRecord

    args = ["train", *SMOKE, f"results_root={tmp_path}", "study=lock"]
    record = RunRecord.for_config(to_container(compose(args[1:])))
    with RunLock(record.path):  # the first run (here: this process) holds the lock
        code = main(args)
    line = _one(capsys.readouterr().err)
    assert code == 1 and f"PID {os.getpid()} on host {socket.gethostname()}" in line, line
    assert not record.path.exists()  # the refused run wrote nothing
    # a lock file left by a dead process (no lock held on it) is taken over
    lock_path(record.path).write_text("999999 gone-host\n")
    assert main(args) == 0
    assert record.done and not lock_path(record.path).exists()


@pytest.mark.parametrize(
    ("content", "fragments"),
    [
        (b"claim: caf\xe9\n", ["not UTF-8 text", "save it as UTF-8"]),
        (b"claim: [unclosed\nseeds: [0]\n", ["not valid YAML", "line", "fix the file"]),
        (b"just a sentence\n", ["not a mapping", "fix the file"]),
        (b"seeds: [0, one]\ngrid: [{method: plain}]\n", ["seeds=", "list of integers"]),
        (b"seeds: [0]\ngrid: [{method: plain}]\noverrides: {a: 1}\n", ["overrides", "list"]),
    ],
    ids=["non_utf8", "yaml_syntax", "bare_scalar", "non_integer_seeds", "overrides_mapping"],
)
def test_damaged_experiments_file_is_one_line_naming_it(
    tmp_path, capsys, monkeypatch, content, fragments
):
    (tmp_path / "bad.yaml").write_bytes(content)
    monkeypatch.setattr("dropens.study.experiments_dir", lambda: tmp_path)
    results = tmp_path / "results"
    code = main(["study", "bad", f"results_root={results}"])
    line = _one(capsys.readouterr().err)
    assert code == 2 and str(tmp_path / "bad.yaml") in line, line
    for fragment in fragments:
        assert fragment in line, line
    assert not results.exists()


@pytest.mark.parametrize(
    "args",
    [
        ["study", "../../escaped"],
        ["study", "/tmp/escaped"],
        ["study", "reference", "study=../escaped"],
        ["study", "reference", "run_id=../../x"],
        ["report", "../escaped"],
    ],
)
def test_no_study_or_run_name_reaches_outside_results_root(tmp_path, capsys, args):
    results = tmp_path / "root" / "results"
    results.mkdir(parents=True)
    code = main([*args, f"results_root={results}"])
    line = _one(capsys.readouterr().err)
    assert code == 2 and "plain name" in line, line
    assert [p for p in tmp_path.rglob("*") if p != results and p != results.parent] == []


@pytest.mark.parametrize(
    ("out", "fragment"), [(A_FILE, "is a file"), (UNWRITABLE, "cannot be created")]
)
def test_report_out_must_be_a_writable_directory(tmp_path, capsys, out, fragment):
    code = main(["report", "reference", "--out", out, f"results_root={tmp_path}"])
    line = _one(capsys.readouterr().err)
    assert code == 2 and "--out=" in line and fragment in line, line


def test_study_results_root_and_launcher_values_checked_before_training(tmp_path, capsys):
    assert main(["study", "reference", f"results_root={A_FILE}"]) == 2
    assert "is a file" in _one(capsys.readouterr().err)
    assert main(["study", "reference", "launcher.workers=two", f"results_root={tmp_path}"]) == 2
    assert "launcher.workers='two'" in _one(capsys.readouterr().err)
    assert main(["study", "reference", "seeds=[0.5]", f"results_root={tmp_path}"]) == 2
    assert "seeds=" in _one(capsys.readouterr().err)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "missing_array"])
def test_damaged_data_cache_is_moved_aside_and_rebuilt(tmp_path, capsys, damage):
    import numpy as np

    from dropens.data.base import atomic_save_npz, cached_arrays

    path = tmp_path / "cache.npz"
    good = {"x": np.arange(1000.0), "y": np.arange(1000)}
    atomic_save_npz(path, **good)
    data = path.read_bytes()
    if damage == "missing_array":
        atomic_save_npz(path, x=good["x"])
    else:
        path.write_bytes(
            {"truncated": data[: len(data) // 2], "garbage": b"#!junk", "empty": b""}[damage]
        )
    arrays = cached_arrays(path, lambda: good, required=("x", "y"))
    assert all(np.array_equal(arrays[k], good[k]) for k in good)
    line = _one(capsys.readouterr().err, "warning: ")
    assert f"data cache {path} is damaged" in line and "rebuilding" in line, line
    assert len(list(tmp_path.glob("cache.npz.damaged-*"))) == 1


def test_damaged_data_cache_that_cannot_be_moved_names_the_file_and_the_fix(tmp_path, monkeypatch):
    from dropens.data.base import cached_arrays
    from dropens.errors import ConfigError

    path = tmp_path / "cache.npz"
    path.write_bytes(b"garbage")

    def refuse(self, target):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "rename", refuse)
    with pytest.raises(ConfigError, match=r"cache.npz is damaged .* delete it, or point data.root"):
        cached_arrays(path, dict)


def test_train_with_a_garbage_mnist1d_cache_rebuilds_it(tmp_path, capsys):
    from dropens.data.mnist1d import MNIST1DDataModule

    cache = MNIST1DDataModule(root=tmp_path / "data").cache_path
    cache.parent.mkdir(parents=True)
    cache.write_bytes(b"\x00garbage")
    code = main(
        ["train", *SMOKE, f"results_root={tmp_path / 'r'}", f"data.root={tmp_path / 'data'}"]
    )
    line = _one(capsys.readouterr().err, "warning: ")
    assert code == 0 and str(cache) in line, line
    assert list((tmp_path / "r").rglob("DONE"))


def test_read_write_of_a_damaged_record_names_the_file(tmp_path):
    from dropens.failures import DamagedFile
    from dropens.results import RunRecord

    record = RunRecord(tmp_path / "run")
    record.path.mkdir()
    (record.path / "metrics.json").write_text('{"test/clean/deterministic/acc": 0.9')
    with pytest.raises(DamagedFile, match=r"metrics.json is damaged .*overwrite=true"):
        record.metrics()
    (record.path / "config.yaml").write_text("a: [unclosed\n")
    with pytest.raises(DamagedFile, match=r"config.yaml is damaged"):
        record.config()
    (record.path / "DONE").write_text("{}")
    assert record.marked_done and not record.done and "is damaged" in record.damage()
    json.dumps(record.damage())  # one plain line
