"""End to end: `dropens train` composes the real configs, trains with a real Lightning Trainer,
and leaves a complete run record (or a visibly incomplete one)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dropens.cli import main
from dropens.config import compose, to_container
from dropens.results import RunRecord, load_study
from dropens.train import prepare, train

SMOKE = ["trainer=smoke", "logger=csv", "eval.mc_curve=[1,4]", "eval.mc_samples=4"]


def _config(tmp_path: Path, *overrides: str) -> dict:
    return to_container(compose([*SMOKE, f"results_root={tmp_path}", *overrides]))


def test_train_writes_complete_record(tmp_path):
    record = train(_config(tmp_path, "study=t"))
    assert record.done
    for name in (
        "config.yaml",
        "metrics.json",
        "predictions.npz",
        "magnitudes.json",
        "run.json",
        "checkpoints/last.ckpt",
    ):
        assert (record.path / name).exists(), name
    metrics = record.metrics()
    for strategy in ("deterministic", "mc1", "mc4", "ws_off", "ws_on"):
        for metric in ("acc", "nll", "ece", "brier"):
            value = metrics[f"test/clean/{strategy}/{metric}"]
            assert np.isfinite(value), (strategy, metric)
    assert 0.0 <= metrics["test/clean/mc4/acc"] <= 1.0
    # scale=inverted: ws_off is the deterministic pass; cnn1d has no BatchNorm: nothing recomputed
    for metric in ("acc", "nll", "ece"):
        assert (
            metrics[f"test/clean/ws_off/{metric}"] == metrics[f"test/clean/deterministic/{metric}"]
        )
    assert not any("/bn_recomputed/" in k for k in metrics)
    mags = record.magnitudes()
    assert mags.attrs["eval_set"] == "clean" and mags.attrs["n_examples"] == 512
    dropout_out = mags[(mags["kind"] == "dropout") & (mags["where"] == "output")]
    assert len(dropout_out) == 3  # the three conv sites of cnn1d
    assert np.isfinite(dropout_out[["var_ratio", "var_ratio_predicted"]].to_numpy()).all()
    preds = record.predictions()
    n_test = len(preds["labels/clean"])
    assert preds["clean/deterministic"].shape == (1, n_test, 10)
    assert preds["clean/mc"].shape == (4, n_test, 10)
    assert preds["clean/mc"].dtype == np.float16
    np.testing.assert_allclose(preds["clean/mc"].astype(np.float64).sum(-1), 1.0, atol=1e-2)
    # validation-time metrics (calibration + MC diversity) logged at every validation
    header = (record.path / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    for key in ("val/clean/deterministic/ece", "val/clean/mc8/mi", "val/clean/mc8/disagreement"):
        assert key in header, key
    # the config stored is enough to rerun: it composes the same run id
    assert RunRecord.for_config(record.config()).path == record.path


def test_same_seed_same_config_identical_metrics(tmp_path):
    a = train(_config(tmp_path / "a", "study=det"))
    b = train(_config(tmp_path / "b", "study=det"))
    assert (a.path / "metrics.json").read_bytes() == (b.path / "metrics.json").read_bytes()
    assert (a.path / "magnitudes.json").read_bytes() == (b.path / "magnitudes.json").read_bytes()
    c = train(_config(tmp_path / "c", "study=det", "seed=1"))
    assert c.metrics() != a.metrics()


def test_bn_mlp_records_recomputed_statistics(tmp_path):
    """An MLP with BatchNorm after hidden dropout: bn_recomputed rows, BN rows in magnitudes."""
    record = train(
        _config(tmp_path, "study=bn", "model=mlp", "model.batchnorm=true", "eval.mc_curve=[]")
    )
    metrics = record.metrics()
    for strategy in ("deterministic", "ws_off", "ws_on", "bn_recomputed"):
        assert np.isfinite(metrics[f"test/clean/{strategy}/nll"]), strategy
    assert record.predictions()["clean/bn_recomputed"].shape[0] == 1
    bn_in = record.magnitudes().query("kind == 'batchnorm' and where == 'input'")
    assert len(bn_in) == 2 and np.isfinite(bn_in["bn_var_ratio"]).all()


def test_complete_run_is_skipped_and_overwrite_retrains(tmp_path, capsys):
    cfg = _config(tmp_path, "study=skip")
    record = train(cfg)
    mtime = (record.path / "metrics.json").stat().st_mtime_ns
    train(cfg)
    assert "complete, skipped" in capsys.readouterr().out
    assert (record.path / "metrics.json").stat().st_mtime_ns == mtime
    train({**cfg, "overwrite": True})
    assert (record.path / "metrics.json").stat().st_mtime_ns != mtime
    assert record.done


def test_crash_leaves_no_done(tmp_path, monkeypatch):
    import dropens.train as train_mod

    def boom(*args, **kwargs):
        raise RuntimeError("simulated crash during evaluation")

    monkeypatch.setattr(train_mod, "evaluate", boom)
    cfg = _config(tmp_path, "study=crash")
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg)
    record = RunRecord.for_config(cfg)
    assert (record.path / "config.yaml").exists()
    assert not record.done
    assert load_study(tmp_path, "crash").empty  # incomplete runs are not taken for results
    assert len(load_study(tmp_path, "crash", include_incomplete=True)) == 1


def test_plain_uses_same_backbone_and_no_mc(tmp_path):
    cfg_plain = _config(tmp_path, "study=pl", "method=plain")
    cfg_drop = _config(tmp_path, "study=pl", "method=dropout")
    n_plain = sum(p.numel() for p in prepare(cfg_plain).method.parameters())
    n_drop = sum(p.numel() for p in prepare(cfg_drop).method.parameters())
    assert n_plain == n_drop
    metrics = train(cfg_plain).metrics()
    assert "test/clean/deterministic/acc" in metrics
    assert not any(re.search(r"/mc\d+/", k) for k in metrics)


def test_cli_train_prints_summary(tmp_path, capsys):
    code = main(["train", *SMOKE, f"results_root={tmp_path}", "study=cli"])
    assert code == 0
    out = capsys.readouterr().out
    assert "test/clean/mc4" in out and "record:" in out


def test_console_script_installed():
    exe = Path(sys.executable).parent / "dropens"
    out = subprocess.run([str(exe), "train", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "overrides" in out.stdout


def test_wandb_offline_run_read_back_with_wandb_reader(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    record = train(_config(tmp_path, "study=wb", "logger=wandb"))
    assert record.done
    runs = list((record.path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    wandb_exe = Path(sys.executable).parent / "wandb"
    out = subprocess.run(
        [str(wandb_exe), "leet", "inspect", "--summary", "--json", str(runs[0])],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    text = json.dumps(summary)
    # config: the resolved run config; summary: the final test metrics of the record
    assert '"study"' in text and '"wb"' in text
    final = record.metrics()["test/clean/mc4/acc"]
    flat = _find_key(summary, "test/clean/mc4/acc")
    assert flat is not None and abs(float(flat) - final) < 1e-6
    # per-run figures and the predictions table (tracking.log_run_figures)
    for key in ("figures/reliability", "figures/mc_curve", "predictions"):
        item = _find_key(summary, key)
        assert item is not None, key
    assert _find_key(summary, "figures/reliability")["_type"] == "image-file"
    assert _find_key(summary, "predictions")["_type"] == "table-file"


def _find_key(node, key):
    if isinstance(node, dict):
        if key in node:
            return node[key]
        for v in node.values():
            found = _find_key(v, key)
            if found is not None:
                return found
    elif isinstance(node, list):
        for v in node:
            found = _find_key(v, key)
            if found is not None:
                return found
    return None


def test_wandb_failure_falls_back_to_csv(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    with pytest.warns(UserWarning, match="W&B logger failed"):
        record = train(_config(tmp_path, "study=wbfail", "logger=wandb", "logger.mode=bogus"))
    assert record.done
    assert (record.path / "csv" / "metrics.csv").exists()


def test_interrupted_run_resumes_from_its_last_checkpoint(tmp_path, monkeypatch):
    """A crash mid-training leaves the epoch-end checkpoint and no DONE; the rerun resumes from it
    and ends with exactly the metrics of the same run trained without interruption (the checkpoint
    carries the global RNG states, so the resumed run draws the same dropout masks)."""
    import torch

    from dropens.methods.dropout import DropoutMethod

    overrides = ("study=resume", "trainer.max_steps=45", "trainer.val_check_interval=1.0")
    cfg = _config(tmp_path / "resumed", *overrides)
    straight = train(_config(tmp_path / "straight", *overrides))
    original = DropoutMethod.training_step

    def crash_at_40(self, batch, batch_idx):
        if self.global_step == 40:  # MNIST-1D: 37 steps per epoch (3601 examples, batch 100)
            raise RuntimeError("simulated kill")
        return original(self, batch, batch_idx)

    monkeypatch.setattr(DropoutMethod, "training_step", crash_at_40)
    with pytest.raises(RuntimeError, match="simulated kill"):
        train(cfg)
    record = RunRecord.for_config(cfg)
    assert not record.done
    ckpt = torch.load(record.path / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 37  # the end of epoch 1
    # killed again after resuming: the checkpoint the resumed run re-saved at step 37 must still
    # carry the interrupted run's RNG stream
    with pytest.raises(RuntimeError, match="simulated kill"):
        train(cfg)
    monkeypatch.setattr(DropoutMethod, "training_step", original)
    train(cfg)
    assert record.done
    assert json.loads((record.path / "run.json").read_text())["steps"] == 45
    resumed_metrics = json.loads((record.path / "metrics.json").read_text())
    assert resumed_metrics == json.loads((straight.path / "metrics.json").read_text())


def test_summary_lists_only_rows_with_headline_metrics(tmp_path):
    """`dropens train` prints acc/nll/ece rows; OOD AUROCs and teeth-pair rows (none of those keys)
    are not printed as rows of NaN."""
    from dropens.train import summarize

    (tmp_path / "metrics.json").write_text(
        json.dumps(
            {
                "test/clean/deterministic/acc": 0.9,
                "test/clean/deterministic/nll": 0.3,
                "test/ood/deterministic/auroc_maxprob": 0.8,
                "test/teeth/deterministic/flip_rate": 0.1,
            }
        )
    )
    lines = summarize(RunRecord(tmp_path)).splitlines()
    assert [ln.split()[0] for ln in lines[1:-2]] == ["test/clean/deterministic"]
    assert lines[1].split()[1:3] == ["0.9000", "0.3000"] and lines[1].split()[3] == "nan"
