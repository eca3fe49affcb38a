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
        "trainer=smoke",
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
