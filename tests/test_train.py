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


# ---------------------------------------------------------------------- soundness (issue 16)

RESUMABLE = ("trainer.max_steps=45", "trainer.val_check_interval=1.0")


def test_metrics_json_is_strict_and_nan_round_trips_through_the_compact_records(tmp_path):
    """metrics.json never holds a bare NaN: a non-finite value is written as null and read back as
    NaN, by the run record and by the compact records copied from it."""
    from dropens.records import compact, read_records, write_records
    from dropens.results import DONE

    record = RunRecord(tmp_path / "study" / "run")
    record.begin(_config(tmp_path, "study=study"))
    record.write_metrics({"test/clean/mc4/ece": float("nan"), "test/clean/mc4/acc": 0.5})
    text = (record.path / "metrics.json").read_text()
    assert "NaN" not in text and "null" in text

    def refuse(name):
        raise AssertionError(f"bare {name} in metrics.json")

    json.loads(text, parse_constant=refuse)  # strict JSON
    record.write_json("run.json", {"wall_s": 1.0})
    (record.path / DONE).write_text("{}")
    metrics = record.metrics()
    assert np.isnan(metrics["test/clean/mc4/ece"]) and metrics["test/clean/mc4/acc"] == 0.5
    n = write_records(tmp_path / "records.jsonl", [compact(record)])
    (back,), problems = read_records(tmp_path / "records.jsonl")
    assert n == 1 and not problems
    assert (
        np.isnan(back.metrics()["test/clean/mc4/ece"])
        and back.metrics()["test/clean/mc4/acc"] == 0.5
    )


def test_non_finite_evaluation_leaves_no_done(tmp_path, monkeypatch, capsys):
    """A run whose evaluation gives a non-finite NLL is not complete (exit 1, one line, no DONE)."""
    import dropens.train as train_mod

    real = train_mod.evaluate

    def nan_nll(*args, **kwargs):
        metrics, arrays = real(*args, **kwargs)
        metrics["test/clean/deterministic/nll"] = float("nan")
        return metrics, arrays

    monkeypatch.setattr(train_mod, "evaluate", nan_nll)
    code = main(["train", *SMOKE, f"results_root={tmp_path}", "study=nanrun"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "test/clean/deterministic/nll=nan" in lines[0], err
    assert not list(tmp_path.rglob("DONE"))


def test_sigint_stops_the_run_at_a_batch_and_the_rerun_gives_the_uninterrupted_metrics(
    tmp_path, monkeypatch, capsys
):
    """A real SIGINT in the middle of training: one line, exit 130, no DONE, the epoch-end
    checkpoint kept; the same command resumes and ends with the uninterrupted metrics."""
    import os
    import signal

    import torch

    from dropens.methods.dropout import DropoutMethod

    straight = train(_config(tmp_path / "straight", "study=sig", *RESUMABLE))
    args = ["train", *SMOKE, f"results_root={tmp_path / 'stopped'}", "study=sig", *RESUMABLE]
    original = DropoutMethod.training_step

    def interrupt_at_40(self, batch, batch_idx):
        if self.global_step == 40:
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, batch, batch_idx)

    monkeypatch.setattr(DropoutMethod, "training_step", interrupt_at_40)
    assert main(args) == 130
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("interrupted")]
    assert len(lines) == 1 and "SIGINT" in lines[0] and "resumes" in lines[0], err
    assert "Traceback" not in err
    record = RunRecord.for_config(_config(tmp_path / "stopped", "study=sig", *RESUMABLE))
    assert not record.done
    ckpt = torch.load(record.path / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 37  # the epoch-end checkpoint, not a mid-epoch one
    monkeypatch.setattr(DropoutMethod, "training_step", original)
    assert main(args) == 0
    assert record.metrics() == straight.metrics()


def test_damaged_last_checkpoint_is_moved_aside_and_the_run_restarts(tmp_path, capsys):
    """A truncated checkpoints/last.ckpt (a kill while it was copied, a full disk) no longer leaves
    the run stuck: it is moved aside with a warning and the run trains from the beginning, to the
    metrics of a run never interrupted."""
    straight = train(_config(tmp_path / "straight", "study=ck"))
    cfg = _config(tmp_path / "damaged", "study=ck")
    record = RunRecord.for_config(cfg)
    good = (straight.path / "checkpoints" / "last.ckpt").read_bytes()
    record.checkpoint_dir.mkdir(parents=True)
    (record.checkpoint_dir / "last.ckpt").write_bytes(good[: len(good) // 2])
    capsys.readouterr()
    assert main(["train", *SMOKE, f"results_root={tmp_path / 'damaged'}", "study=ck"]) == 0
    err = capsys.readouterr().err
    warning = [ln for ln in err.splitlines() if ln.startswith("warning: checkpoint")]
    assert len(warning) == 1 and "last.ckpt is damaged" in warning[0], err
    assert "restarts from the beginning" in warning[0]
    assert [p.name.split("-")[0] for p in record.path.glob("checkpoints.damaged-*")] == [
        "checkpoints.damaged"
    ]
    assert record.done and record.metrics() == straight.metrics()


@pytest.mark.parametrize("content", [b"", b"not a checkpoint", b"PK\x03\x04 truncated zip"])
def test_garbage_or_empty_checkpoint_is_not_used(tmp_path, capsys, content):
    from dropens.train import usable_checkpoint

    prep = prepare(_config(tmp_path, "study=ck"))
    record = RunRecord(tmp_path / "run")
    record.checkpoint_dir.mkdir(parents=True)
    (record.checkpoint_dir / "last.ckpt").write_bytes(content)
    assert usable_checkpoint(record, prep.method) is None
    assert not record.checkpoint_dir.exists() and list(record.path.glob("checkpoints.damaged-*"))
    err = capsys.readouterr().err.strip()
    assert err.startswith("warning: checkpoint ") and "\n" not in err, err


def test_done_record_with_damaged_metrics_is_trained_again(tmp_path, capsys):
    """DONE but a truncated metrics.json: not complete (not "complete, skipped" and then a crash);
    `dropens train` resumes it from its final checkpoint and writes the same metrics again."""
    args = ["train", *SMOKE, f"results_root={tmp_path}", "study=dm"]
    assert main(args) == 0
    record = RunRecord.for_config(_config(tmp_path, "study=dm"))
    before = record.metrics()
    text = (record.path / "metrics.json").read_text()
    (record.path / "metrics.json").write_text(text[: len(text) // 2])
    assert record.marked_done and not record.done and "metrics.json" in record.damage()
    capsys.readouterr()
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert "complete, skipped" not in out
    assert "metrics.json is damaged" in err and "Traceback" not in err
    assert record.done and record.metrics() == before


def test_overwrite_moves_the_old_record_aside_only_when_the_new_run_starts(tmp_path, capsys):
    import torch

    missing = "mps" if torch.cuda.is_available() else "gpu"
    args = ["train", *SMOKE, f"results_root={tmp_path}", "study=ow"]
    assert main(args) == 0
    record = RunRecord.for_config(_config(tmp_path, "study=ow"))
    files = {p: p.stat().st_mtime_ns for p in (tmp_path / "ow").rglob("*")}
    capsys.readouterr()
    # validated first: a bad setting refuses before anything of the complete record is touched
    assert main([*args, "overwrite=true", f"trainer.accelerator={missing}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: trainer.accelerator=") and "\n" not in err, err
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "ow").rglob("*")} == files
    assert main([*args, "overwrite=true"]) == 0
    (old,) = (tmp_path / "ow").glob(f".{record.path.name}.replaced-*")
    assert (old / "DONE").exists() and (old / "checkpoints" / "last.ckpt").exists()
    assert record.done and list(load_study(tmp_path, "ow")["run_id"]) == [record.path.name]
