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
from dropens.study import Study, expand, load_study_file, study_names

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


def test_quickstart_grid_is_conditional_and_overrides_win(tmp_path):
    plan = expand("quickstart", [f"results_root={tmp_path}", "steps=7", "seeds=[3]"])
    methods = sorted(c["method"]["name"] for c in plan.runs)
    assert methods == ["dropout", "ensemble", "plain", "subnets"]
    by = {c["method"]["name"]: c for c in plan.runs}
    assert by["subnets"]["method"]["k"] == 4 and by["ensemble"]["method"]["k"] == 4
    assert "k" not in by["dropout"]["method"]
    assert all(c["trainer"]["max_steps"] == 7 and c["seed"] == 3 for c in plan.runs)
    smoke = expand("quickstart", [f"results_root={tmp_path}", "smoke=true"])
    assert all(c["trainer"]["max_steps"] == 8 for c in smoke.runs)  # trainer=smoke


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
    args = [_dropens(), "study", "quickstart", *TINY, "seeds=[0]", f"results_root={tmp_path}"]
    plan = expand("quickstart", [*TINY, "seeds=[0]", f"results_root={tmp_path}"])
    records = plan.records()
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = time.time() + 240
    while time.time() < deadline and not any(r.done for r in records):
        time.sleep(0.2)
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


def test_local_launcher_workers_train_every_run(tmp_path):
    overrides = [*TINY, "seeds=[0]", f"results_root={tmp_path}", "launcher.workers=2"]
    assert main(["study", "quickstart", *overrides]) == 0
    plan = expand("quickstart", overrides)
    assert all(r.done for r in plan.records())
    # same run ids as a sequential launch: the worker count is placement, not identity
    assert [r.path for r in plan.records()] == [
        r.path
        for r in expand("quickstart", [*TINY, "seeds=[0]", f"results_root={tmp_path}"]).records()
    ]
    assert RunRecord(plan.records()[0].path).metrics()


def test_seed_copies_equal_a_fresh_composition(tmp_path):
    from dropens.config import compose, to_container

    plan = expand("quickstart", [f"results_root={tmp_path}", "seeds=[0,5]"])
    config = next(c for c in plan.runs if c["method"]["name"] == "subnets" and c["seed"] == 5)
    fresh = to_container(
        compose(
            [
                *load_study_file("quickstart").overrides,
                "method=subnets",
                "method.k=4",
                "seed=5",
                "study=quickstart",
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
    args = [_dropens(), "study", "quickstart", *TINY, "seeds=[0]", f"results_root={tmp_path}"]
    proc = subprocess.Popen(
        [*args, "launcher.workers=2"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 240
    while time.time() < deadline and not list(tmp_path.glob("quickstart/*/config.yaml")):
        time.sleep(0.2)  # a worker has started a run
    workers = _live_children(proc.pid)
    assert len(workers) >= 2, workers  # the two workers (+ multiprocessing's resource tracker)
    proc.kill()  # the study process only, not its process group
    proc.wait()
    deadline = time.time() + 30
    while time.time() < deadline and any(_alive(w) for w in workers):
        time.sleep(0.2)
    assert not [w for w in workers if _alive(w)]
