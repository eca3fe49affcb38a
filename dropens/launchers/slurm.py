"""The ``slurm`` launcher: a study's pending runs as one SLURM job array, through submitit.

Every task calls :func:`dropens.study.run_one` on its config (the same code as the local launcher)
and writes its record under ``results_root``, which must be visible from every node. Settings come
from ``configs/launcher/slurm.yaml`` (``launcher.partition=gpu launcher.gpus_per_node=1`` ...).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from dropens.errors import ConfigError
from dropens.study import Plan, log_invocation, results_dir, run_one


def executor_parameters(launcher: dict[str, Any], name: str) -> dict[str, Any]:
    """submitit ``update_parameters`` arguments of a ``launcher`` config (unset ones left out)."""
    params: dict[str, Any] = {
        "name": f"dropens-{name}",
        "timeout_min": int(launcher["timeout_min"]),
        "cpus_per_task": int(launcher["cpus_per_task"]),
        "slurm_array_parallelism": int(launcher["array_parallelism"]),
    }
    if launcher.get("mem_gb"):
        params["mem_gb"] = launcher["mem_gb"]
    if launcher.get("gpus_per_node"):
        params["gpus_per_node"] = int(launcher["gpus_per_node"])
    for key in ("partition", "account", "qos", "constraint"):
        if launcher.get(key):
            params[f"slurm_{key}"] = launcher[key]
    return params


def launch_slurm(plan: Plan) -> int:
    """Submit the pending runs as one array; with ``wait`` (default) wait and report every task."""
    import submitit

    if shutil.which("sbatch") is None:
        raise ConfigError("launcher=slurm needs SLURM's sbatch on PATH; choose launcher=local here")
    pending = plan.pending()
    total = len(plan.runs)
    print(
        f"study {plan.name}: {total} runs, {total - len(pending)} complete, {len(pending)} to submit"
    )
    if not pending:
        return 0
    folder = Path(plan.launcher.get("folder") or results_dir(plan) / ".submitit")
    executor = submitit.AutoExecutor(folder=folder / "%j", cluster="slurm")
    executor.update_parameters(**executor_parameters(plan.launcher, plan.name))
    start = time.time()
    jobs = executor.map_array(run_one, pending)
    print(f"submitted array {jobs[0].job_id.split('_')[0]} ({len(jobs)} tasks); logs in {folder}")
    if not plan.launcher.get("wait", True):
        return 0
    failed = _wait(jobs)
    log_invocation(plan, "slurm", len(jobs), len(jobs) - len(failed), time.time() - start, None)
    done = sum(r.done for r in plan.records())
    print(f"study {plan.name}: {done}/{total} runs complete")
    return 0 if done == total and not failed else 1


def _in_queue(job_id: str) -> bool:
    """Whether SLURM still lists the task (pending, running, completing)."""
    out = subprocess.run(["squeue", "-h", "-j", job_id], capture_output=True, text=True, timeout=30)
    return out.returncode == 0 and bool(out.stdout.strip())


def _wait(jobs: list, poll_s: float = 5.0, grace_polls: int = 3) -> list[str]:
    """Wait for every task; returns the ids of the failed ones.

    A task fails when it raises (submitit re-raises the run's exception) or when it leaves the
    queue without a result (killed for time or memory, node failure): without SLURM accounting
    submitit would wait for its result file forever, so the queue is watched here.
    """
    pending, failed, gone = {j.job_id: j for j in jobs}, [], {}
    start = time.time()
    while pending:
        for job_id, job in list(pending.items()):
            if job.done():
                del pending[job_id]
                try:
                    print(f"  task {job_id} done: {Path(job.result()).name}", flush=True)
                except Exception as err:  # the run's own exception, or submitit's job failure
                    failed.append(job_id)
                    last = str(err).strip().splitlines()[-1] if str(err).strip() else ""
                    print(f"  task {job_id} FAILED ({type(err).__name__}): {last}", flush=True)
            elif not _in_queue(job_id):
                gone[job_id] = gone.get(job_id, 0) + 1
                if gone[job_id] >= grace_polls:  # left the queue and wrote no result
                    del pending[job_id]
                    failed.append(job_id)
                    print(
                        f"  task {job_id} FAILED: left the queue without a result; log: {job.paths.stderr}",
                        flush=True,
                    )
        if pending:
            time.sleep(poll_s)
    print(f"  array finished in {time.time() - start:.0f}s, {len(failed)} failed")
    return failed
