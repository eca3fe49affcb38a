"""On the real local SLURM cluster (``slurm_cluster`` fixture): submitit job arrays run with this
venv's interpreter, and ``dropens study ... launcher=slurm`` trains every run of a study.

Run with ``make test-cluster`` (as root: the fixture starts the cluster)."""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.cluster

# No accounting database on the local cluster: `sacct` fails, so submitit only learns that a task
# ended from its result file; a task killed before writing one would leave result() waiting forever.
JOB_TIMEOUT_S = 180
STUDY_TIMEOUT_S = 900
REPO = Path(__file__).resolve().parents[2]
DROPENS = Path(sys.executable).parent / "dropens"  # .venv/bin/dropens


def wait_all(jobs, timeout_s: float = JOB_TIMEOUT_S):
    """The results of submitit ``jobs``, failing (and cancelling them) after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not all(job.done() for job in jobs):
        if time.monotonic() > deadline:
            for job in jobs:
                job.cancel(check=False)
            pytest.fail(
                f"submitit jobs not done after {timeout_s}s: "
                f"{subprocess.run(['squeue'], capture_output=True, text=True).stdout}"
            )
        time.sleep(0.5)
    return [job.result() for job in jobs]


def executor(folder: Path, partition: str):
    import submitit

    ex = submitit.AutoExecutor(folder=folder, cluster="slurm")
    ex.update_parameters(
        slurm_partition=partition, timeout_min=5, cpus_per_task=1, slurm_array_parallelism=2
    )
    return ex


def test_submitit_job_array(slurm_cluster, tmp_path):
    jobs = executor(tmp_path, slurm_cluster.partition).map_array(abs, [-1, -2, -3])
    assert len({job.job_id.split("_")[0] for job in jobs}) == 1, "one array, three tasks"
    assert wait_all(jobs) == [1, 2, 3]


def test_jobs_run_this_venv(slurm_cluster, tmp_path):
    """A task's interpreter is this one (submitit runs sys.executable) and sees the venv's packages."""
    job = executor(tmp_path, slurm_cluster.partition).submit(sysconfig.get_path, "purelib")
    assert wait_all([job]) == [sysconfig.get_path("purelib")]


def _study_cli_available() -> bool:
    try:
        done = subprocess.run([str(DROPENS), "study", "--help"], capture_output=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def grid_size(study: str, n_seeds: int) -> int:
    """Runs of ``experiments/<study>.yaml`` with ``n_seeds`` seeds, from the file itself: the sum over
    grid blocks of the product of the numbers of values (a scalar is one value)."""
    spec = yaml.safe_load((REPO / "experiments" / f"{study}.yaml").read_text())
    sizes = [
        len(list(itertools.product(*[v if isinstance(v, list) else [v] for v in block.values()])))
        for block in spec.get("grid") or [{}]
    ]
    return sum(sizes) * n_seeds


def test_quickstart_study_on_slurm(slurm_cluster, tmp_path):
    if not _study_cli_available():  # checked here, not at collection: `make test` stays fast
        pytest.xfail("dropens study not yet available")
    overrides = [
        "launcher=slurm",
        "study=cluster_smoke",
        "smoke=true",  # the study's own tiny form (its validation schedule fits the 8 steps)
        "seeds=[0]",
        f"results_root={tmp_path}",
        "logger=csv",
        f"launcher.partition={slurm_cluster.partition}",
        "launcher.cpus_per_task=1",  # two runs at once on a 2-core machine
    ]
    done = subprocess.run(
        [str(DROPENS), "study", "quickstart", *overrides],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=STUDY_TIMEOUT_S,
    )
    log = f"exit {done.returncode}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr[-5000:]}"
    assert done.returncode == 0, log
    printed = re.search(r"study cluster_smoke: (\d+) runs", done.stdout)
    assert printed, f"the study does not print 'study cluster_smoke: N runs':\n{log}"
    n_runs = int(printed.group(1))
    assert n_runs == grid_size("quickstart", n_seeds=1), log

    study_dir = tmp_path / "cluster_smoke"
    run_dirs = sorted(p for p in study_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert len(run_dirs) == n_runs, ([p.name for p in run_dirs], log)
    incomplete = [p.name for p in run_dirs if not (p / "DONE").is_file()]
    assert not incomplete, (incomplete, log)
    # the study log records the array's measured wall time, which REPORT.md quotes
    entries = [
        json.loads(line) for line in (study_dir / "study_log.jsonl").read_text().splitlines()
    ]
    assert len(entries) == 1 and entries[0]["launcher"] == "slurm", entries
    assert entries[0]["trained"] == n_runs and entries[0]["elapsed_s"] > 0, entries


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", ["mask_distributions", "structured", "shortcut", "shift", "mc_samples"]
)
def test_study_tiny_form_on_slurm(slurm_cluster, tmp_path, name):
    """Each study of issue 6 runs as a SLURM job array in its tiny form (one seed, the study's smoke
    overrides) and reports from the records the tasks wrote (slow: `make test-cluster-slow`)."""
    overrides = [
        "launcher=slurm",
        "smoke=true",
        "seeds=[0]",
        f"results_root={tmp_path / 'results'}",
        "logger=csv",
        f"launcher.partition={slurm_cluster.partition}",
        "launcher.cpus_per_task=1",
    ]
    done = subprocess.run(
        [str(DROPENS), "study", name, *overrides],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=STUDY_TIMEOUT_S * 3,
    )
    log = f"exit {done.returncode}\n--- stdout\n{done.stdout[-5000:]}\n--- stderr\n{done.stderr[-5000:]}"
    assert done.returncode == 0, log
    n_runs = grid_size(name, n_seeds=1)
    assert f"study {name}: {n_runs}/{n_runs} runs complete" in done.stdout, log
    report = subprocess.run(
        [str(DROPENS), "report", name, *overrides, "--out", str(tmp_path / "reports")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert report.returncode == 0, report.stderr[-3000:]
    assert f"{n_runs} of {n_runs} runs complete" in report.stdout, report.stdout
    assert (tmp_path / "reports" / name / "runs.csv").is_file()


def _squeue_state(job_id: str) -> str:
    out = subprocess.run(
        ["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, timeout=30
    )
    return out.stdout.strip()


def test_requeued_task_resumes_to_the_uninterrupted_metrics(slurm_cluster, tmp_path):
    """Acceptance (issue 16): a task of `dropens study ... launcher=slurm` that gets SIGUSR1 (what
    SLURM sends ahead of the time limit, `--signal=USR1@90`) stops at a batch boundary and is
    requeued by submitit; requeued again by `scontrol requeue` (SIGTERM, then back to the queue),
    it finishes in a third attempt with exactly the metrics of an uninterrupted run. (SLURM holds
    a requeued job for AuthInfo=cred_expire seconds: 20 on the test cluster.)"""
    import torch

    from dropens.results import RunRecord
    from dropens.study import expand
    from dropens.train import train

    root = tmp_path / "results"
    run = ["logger=none", "trainer.max_steps=740", "trainer.val_check_interval=1.0"]
    args = ["reference", "smoke=true", "seeds=[0]", *run, f"results_root={root}"]
    slurm = [
        "launcher=slurm",
        f"launcher.partition={slurm_cluster.partition}",
        "launcher.cpus_per_task=1",
        "launcher.timeout_min=10",
    ]
    match = "dropout-mlp-mnist1d"
    (config,) = expand("reference", args[1:]).select(match).runs
    record = RunRecord.for_config(config)
    ckpt = record.checkpoint_dir / "last.ckpt"
    proc = subprocess.Popen(
        [str(DROPENS), "study", *args, *slurm, "--match", match],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    for line in proc.stdout:  # until the array is submitted
        lines.append(line)
        found = re.search(r"submitted array (\d+)", line)
        if found:
            job = found.group(1)  # one task: submitit submits it as a plain job
            break
    else:
        pytest.fail("".join(lines))
    deadline = time.monotonic() + STUDY_TIMEOUT_S

    def wait_for(condition, what: str) -> None:
        while not condition():
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                rest = proc.stdout.read() if proc.stdout else ""
                pytest.fail(f"{what}: not reached\n{''.join(lines)}{rest}")
            time.sleep(0.05)

    def step() -> int:
        return int(torch.load(ckpt, weights_only=False)["global_step"])

    seen = {"mtime": 0}

    def saved_beyond(previous: int):
        def check() -> bool:
            if not ckpt.exists():
                return False
            mtime = ckpt.stat().st_mtime_ns
            if mtime == seen["mtime"]:
                return False
            seen["mtime"] = mtime
            return step() > previous

        return check

    # attempt 1: SIGUSR1 after the first epoch-end checkpoint -> stop, submitit requeues
    wait_for(saved_beyond(0), "first checkpoint")
    first = step()
    subprocess.run(["scancel", "--signal=USR1", job], check=True, timeout=30)
    # attempt 2 resumes from it and saves a later checkpoint -> `scontrol requeue`
    wait_for(saved_beyond(first), "a checkpoint of the requeued task")
    second = step()
    assert not record.done and first < second < 740
    subprocess.run(["scontrol", "requeue", job], check=True, timeout=30)
    # attempt 3 resumes and finishes; the study reports the task done
    out, _ = proc.communicate(timeout=STUDY_TIMEOUT_S)
    log = "".join(lines) + out
    assert proc.returncode == 0, log
    assert "study reference: 1/1 runs complete" in log, log
    assert not _squeue_state(job)
    task_logs = "".join(p.read_text() for p in (root / "reference" / ".submitit").rglob("*.err"))
    assert "interrupted by SIGUSR1" in task_logs and "interrupted by SIGTERM" in task_logs, (
        task_logs
    )
    straight = train({**config, "results_root": str(tmp_path / "straight")})
    assert record.done and record.metrics() == straight.metrics()
    assert json.loads((record.path / "run.json").read_text())["steps"] == 740
