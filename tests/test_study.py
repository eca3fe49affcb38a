"""Studies: grid expansion, validation before training, the local launcher resuming after a kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dropens.cli import main
from dropens.errors import ConfigError
from dropens.results import RunRecord
from dropens.study import Study, expand, load_study_file, run_one, study_names

TINY = ["smoke=true", "logger=csv"]


def test_every_study_file_expands_to_valid_unique_runs(tmp_path, selection):
    assert {"quickstart", "magnitude", "ensemble_view"} <= set(study_names())
    results = tmp_path / "results"
    for name in study_names():
        plan = expand(name, [f"results_root={results}"])
        paths = [r.path for r in plan.records()]
        assert len(paths) == len(set(paths)) > 0, name
        assert all(c["study"] == name for c in plan.runs)
        assert sorted({c["seed"] for c in plan.runs}) == load_study_file(name).seeds
    assert not results.exists(), "expanding a study must not write anything"


def test_a_grid_value_selected_by_another_study_is_read_from_its_selection(tmp_path, selection):
    """readings evaluates each method at the value readings_tune selected on validation data."""
    plan = expand("readings", [f"results_root={tmp_path}"])
    assert len(plan.runs) == 3 * 4 * 10  # arms x (plain, dropout, explicit, ensemble) x seeds
    by_method = {c["method"]["name"]: c for c in plan.runs if c["model"]["name"] == "cnn1d"}
    assert by_method["plain"]["optim"]["weight_decay"] == 0.01
    assert by_method["ensemble"]["optim"]["weight_decay"] == 0.01  # the plain's selection
    assert by_method["dropout"]["dropout"]["p"] == 0.1
    assert by_method["explicit"]["dropout"]["p"] == 0.2
    (selection / "readings_tune" / "selected.yaml").unlink()
    with pytest.raises(ConfigError, match=r"no selection in .*run `dropens study readings_tune`"):
        expand("readings", [f"results_root={tmp_path}"])


def test_quickstart_grid_is_conditional_and_overrides_win(tmp_path, selection):
    plan = expand("quickstart", [f"results_root={tmp_path}", "steps=320", "seeds=[3]"])
    methods = sorted(c["method"]["name"] for c in plan.runs)
    assert methods == ["dropout", "ensemble", "explicit", "plain"]
    by = {c["method"]["name"]: c for c in plan.runs}
    assert by["ensemble"]["method"]["k"] == 4 and "k" not in by["dropout"]["method"]
    # the values the tuning stage selected (here the `selection` fixture's)
    assert by["dropout"]["dropout"]["p"] == 0.1 and by["explicit"]["dropout"]["p"] == 0.2
    assert by["plain"]["optim"]["weight_decay"] == 0.01
    assert all(c["trainer"]["max_steps"] == 320 and c["seed"] == 3 for c in plan.runs)
    smoke = expand("quickstart", [f"results_root={tmp_path}", "smoke=true"])
    assert all(c["trainer"]["max_steps"] == 8 for c in smoke.runs)  # trainer=smoke


def test_a_validation_schedule_beyond_the_step_budget_is_refused_before_any_run(
    tmp_path, selection
):
    """quickstart validates every 160 steps for early stopping: the smoke trainer's 8 steps alone
    (without the study's own smoke form) cannot select anything, and the study says so when it is
    planned -- before a SLURM array is submitted, not in every task of it."""
    with pytest.raises(ConfigError, match=r"first validation comes after 160 steps.*8-step budget"):
        expand("quickstart", [f"results_root={tmp_path}", "trainer=smoke", "seeds=[0]"])
    assert not tmp_path.joinpath("quickstart").exists()


def test_grid_blocks_are_products_and_deduplicated():
    study = Study(
        "x",
        "",
        "",
        "x",
        [],
        [0],
        [{"method": "plain"}, {"dropout.p": [0.1, 0.2], "dropout.scale": ["inverted", "none"]}],
    )
    points = study.blocks()
    assert points[0] == ["method=plain"]
    assert len(points) == 1 + 4 and ["dropout.p=0.2", "dropout.scale=none"] in points


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["nosuch"], ["study='nosuch'", "quickstart"]),
        (["quickstart", "dropout.p=1.5"], ["dropout.p"]),
        (["quickstart", "launcher=pbs"], ["launcher='pbs'", "local", "slurm"]),
        (["quickstart", "launcher.nosuch=1"], ["launcher.nosuch", "launcher.workers"]),
        (["quickstart", "seeds=[a]"], ["seeds="]),
        (["quickstart", "smoke=maybe"], ["smoke=", "true", "false"]),
        (["quickstart", "seed=3"], ["seeds=[3]"]),
    ],
)
def test_bad_study_input_is_one_line_and_writes_nothing(tmp_path, capsys, args, fragments):
    code = main(["study", *args, f"results_root={tmp_path}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and "\n" not in err, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    assert not any(tmp_path.iterdir())


def test_load_study_file_rejects_unknown_keys(tmp_path, monkeypatch):
    (tmp_path / "bad.yaml").write_text("claim: x\ngrids: []\n")
    monkeypatch.setattr("dropens.study.experiments_dir", lambda: tmp_path)
    with pytest.raises(ConfigError, match="unknown keys"):
        load_study_file("bad")


def _dropens() -> str:
    return str(Path(sys.executable).with_name("dropens"))


def test_killed_study_resumes_training_only_missing_runs(tmp_path):
    """Acceptance: kill `dropens study quickstart` midway; the rerun trains only what is missing."""
    # Three seeds (12 runs): a smoke run can finish in ~0.2 s on a fast machine, so four runs
    # left too short a window between the first DONE and the last (CI once saw all four done).
    overrides = [*TINY, "seeds=[0,1,2]", f"results_root={tmp_path}"]
    args = [_dropens(), "study", "quickstart", *overrides]
    records = expand("quickstart", overrides).records()
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = time.time() + 240
    while time.time() < deadline and not any(r.done for r in records):
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = {r.path.name: (r.path / "DONE").stat().st_mtime_ns for r in records if r.done}
    assert 1 <= len(done_before) < len(records), (
        "kill the study after its first run and before its last"
    )
    out = subprocess.run(args, capture_output=True, text=True, timeout=600, check=True).stdout
    assert f"{len(done_before)} complete, {len(records) - len(done_before)} to train" in out, out
    assert all(r.done for r in records)
    for name, mtime in done_before.items():  # complete runs were not retrained
        assert (tmp_path / "quickstart" / name / "DONE").stat().st_mtime_ns == mtime
    trained = [line for line in out.splitlines() if "] done in" in line]
    assert len(trained) == len(records) - len(done_before)


def test_local_launcher_workers_train_every_run(tmp_path, capsys):
    overrides = [*TINY, "seeds=[0]", f"results_root={tmp_path}", "launcher.workers=2"]
    assert main(["study", "quickstart", *overrides]) == 0
    assert "order: plan order (no earlier wall time" in capsys.readouterr().out
    plan = expand("quickstart", overrides)
    assert all(r.done for r in plan.records())
    # same run ids as a sequential launch: the worker count is placement, not identity
    assert [r.path for r in plan.records()] == [
        r.path
        for r in expand("quickstart", [*TINY, "seeds=[0]", f"results_root={tmp_path}"]).records()
    ]
    assert RunRecord(plan.records()[0].path).metrics()
    # a second seed: each new run is estimated by its seed-0 sibling's measured wall time
    more = [*TINY, "seeds=[0,1]", f"results_root={tmp_path}", "launcher.workers=2"]
    assert main(["study", "quickstart", *more]) == 0
    n = len(plan.runs)
    assert f"order: longest first, by the measured wall time of earlier runs ({n}/{n} runs" in (
        capsys.readouterr().out
    )
    assert all(r.done for r in expand("quickstart", more).records())


def test_seed_copies_equal_a_fresh_composition(tmp_path):
    from dropens.config import compose, to_container

    plan = expand("magnitude", [f"results_root={tmp_path}", "seeds=[0,5]"])
    config = next(
        c
        for c in plan.runs
        if c["seed"] == 5 and c["dropout"]["p"] == 0.3 and c["dropout"]["scale"] == "none"
    )
    fresh = to_container(
        compose(
            [
                *load_study_file("magnitude").overrides,
                "dropout.p=0.3",
                "dropout.scale=none",
                "seed=5",
                "study=magnitude",
                f"results_root={tmp_path}",
            ]
        )
    )
    assert config == fresh


def _live_children(pid: int) -> list[int]:
    """Pids of the live (not zombie) processes whose parent is ``pid`` (Linux ``/proc``)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            state, ppid = (d / "stat").read_text().rsplit(")", 1)[1].split()[:2]
        except (OSError, ValueError):
            continue
        if int(ppid) == pid and state != "Z":
            out.append(int(d.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_killing_the_study_process_kills_its_workers(tmp_path):
    """A worker must not outlive `dropens study`: an orphan would keep training a run that the next
    `dropens study` starts again beside it, two processes writing one record."""
    # 200 steps a run (not the smoke 8, ~0.2 s): the study must still be running when it is killed
    args = [_dropens(), "study", "quickstart", *TINY, "seeds=[0]", "trainer.max_steps=200"]
    proc = subprocess.Popen(
        [*args, f"results_root={tmp_path}", "launcher.workers=2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    while time.time() < deadline and not list(tmp_path.glob("quickstart/*/config.yaml")):
        time.sleep(0.02)  # a worker has started a run
    workers = _live_children(proc.pid)
    assert len(workers) >= 2, workers  # the two workers (+ multiprocessing's resource tracker)
    proc.kill()  # the study process only, not its process group
    proc.wait()
    deadline = time.time() + 30
    while time.time() < deadline and any(_alive(w) for w in workers):
        time.sleep(0.2)
    assert not [w for w in workers if _alive(w)]


def _wait_for(condition, proc: subprocess.Popen, timeout_s: float = 300.0) -> None:
    deadline = time.time() + timeout_s
    while not condition():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(
                f"exited {proc.returncode} before the condition held:\n{out}\n{err[-3000:]}"
            )
        if time.time() > deadline:
            proc.kill()
            pytest.fail("timed out waiting")
        time.sleep(0.02)


def _stop_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("interrupted by SIGTERM")]
    assert len(lines) == 1, err
    return lines[0]


def test_kill_term_of_study_and_of_train_then_the_rerun_gives_the_uninterrupted_metrics(tmp_path):
    """Acceptance (issue 16): `kill -TERM` of `dropens study`, then of `dropens train` on the same
    run, each exit 143 with one line and keep the run resumable; the rerun ends with exactly the
    metrics of the run trained without interruption."""
    import torch

    from dropens.config import compose, to_container
    from dropens.train import train

    root = tmp_path / "stopped"
    run = ["logger=none", "trainer.max_steps=370", "trainer.val_check_interval=1.0"]
    study_args = ["reference", "smoke=true", "seeds=[0]", *run, f"results_root={root}"]
    match = ["--match", "dropout-mlp-mnist1d"]
    (config,) = expand("reference", study_args[1:]).select(match[1]).runs
    record = RunRecord.for_config(config)
    ckpt = record.checkpoint_dir / "last.ckpt"

    def saved_step() -> int:
        return int(torch.load(ckpt, weights_only=False)["global_step"])

    # 1. the study, stopped after its run's first epoch-end checkpoint
    proc = subprocess.Popen(
        [_dropens(), "study", *study_args, *match],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for(ckpt.exists, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    line = _stop_line(err)
    assert "study reference stopped" in line and "rerun the same command" in line, line
    assert not record.done
    first = saved_step()
    assert 0 < first < 370 and first % 37 == 0  # an epoch-end checkpoint (37 batches an epoch)

    # 2. `dropens train` of the same run (same config, same record), stopped after it resumed and
    # saved a later checkpoint
    study = load_study_file("reference")
    point = ["data=mnist1d", "model=mlp", "method=dropout"]
    overrides = [*study.overrides, *study.smoke, *point, "study=reference", *run, "seed=0"]
    overrides.append(f"results_root={root}")
    assert to_container(compose(overrides)) == config
    seen = {"mtime": ckpt.stat().st_mtime_ns}

    def resumed_and_saved() -> bool:  # the resumed run first re-saves the restored checkpoint
        mtime = ckpt.stat().st_mtime_ns
        if mtime == seen["mtime"]:
            return False
        seen["mtime"] = mtime
        return saved_step() > first

    proc = subprocess.Popen(
        [_dropens(), "train", *overrides], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    _wait_for(resumed_and_saved, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    line = _stop_line(err)
    assert record.path.name in line and "resumes it from its last epoch-end checkpoint" in line
    assert not record.done and first < saved_step() < 370

    # 3. the rerun of the study finishes the run: the metrics of an uninterrupted run
    assert main(["study", *study_args, *match]) == 0
    straight = train({**config, "results_root": str(tmp_path / "straight")})
    assert record.done and record.metrics() == straight.metrics()


def test_a_worker_stopped_by_a_signal_starts_no_queued_run(tmp_path, monkeypatch):
    """A group SIGTERM reaches every pool worker; a worker whose run it stopped must not take the
    next run the pool had queued for it (it would start training while the study shuts down)."""
    from dropens.failures import Stopped
    from dropens.launchers import local

    (config,) = (
        expand("reference", ["smoke=true", "seeds=[0]", f"results_root={tmp_path}"])
        .select("plain-mlp-mnist1d")
        .runs
    )
    calls = []

    def stopped_run(cfg):
        calls.append(cfg)
        raise Stopped(signal.SIGTERM)

    monkeypatch.setattr(local, "_worker_stopped", False)
    monkeypatch.setattr(local, "run_one", stopped_run)
    with pytest.raises(Stopped):
        local.run_in_worker(config)  # the signal stops the run this worker is training
    monkeypatch.setattr(local, "run_one", run_one)  # the real one: it would train the run
    with pytest.raises(Stopped, match="not started"):
        local.run_in_worker(config)  # the next queued run is not started ...
    assert len(calls) == 1
    assert not RunRecord.for_config(config).path.exists()  # ... and nothing of it is written


def test_the_tiny_form_wins_over_the_grid(tmp_path, selection):
    """family's blocks set each arm's validation interval (160, 200 steps) and evaluation size
    (1000 images); its tiny form validates every 4 steps on 128 images, so early stopping selects
    within the smoke trainer's 8 steps on both arms."""
    plan = expand("family", [f"results_root={tmp_path}", "smoke=true", "seeds=[0]"])
    assert {c["data"]["name"] for c in plan.runs} == {"mnist1d", "fashion_mnist"}
    assert all(c["trainer"]["val_check_interval"] == 4 for c in plan.runs)
    assert all(c["data"]["eval_limit"] == 128 and c["trainer"]["max_steps"] == 8 for c in plan.runs)
    full = expand("family", [f"results_root={tmp_path}", "seeds=[0]"])
    intervals = {c["data"]["name"]: c["trainer"]["val_check_interval"] for c in full.runs}
    assert intervals == {"mnist1d": 160, "fashion_mnist": 200}
