"""The ``slurm`` launcher: a study's pending runs as one SLURM job array, through submitit.

Every task calls :func:`dropens.study.run_one` on its config (the same code as the local launcher)
and writes its record under ``results_root``, which must be visible from every node. Settings come
from ``configs/launcher/slurm.yaml`` (``launcher.partition=gpu launcher.gpus_per_node=1`` ...).

Preemption and time limits: submitit submits with ``--signal=USR1@90`` and ``--requeue``; a task
(a :class:`RunTask`, checkpointable) that gets SIGUSR1 stops its run at the next batch boundary
(:mod:`dropens.signals`), keeping its last epoch-end checkpoint, and submitit requeues it; the
requeued task runs the same config again, which resumes from that checkpoint exactly. A task
stopped by SIGTERM (``scontrol requeue``, ``scancel``) also leaves its record resumable; a
requeued task stays in the queue, so :func:`_wait` waits for it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from submitit.helpers import Checkpointable

from dropens.errors import ConfigError
from dropens.failures import Stopped
from dropens.launchers.order import longest_first
from dropens.paths import check_dir
from dropens.study import Plan, committed_records, log_invocation, results_dir, run_one


class RunTask(Checkpointable):
    """The callable of every array task: :func:`run_one` of its config. Checkpointable, so that
    submitit requeues it on SIGUSR1 (preemption, or the time limit ahead): its ``checkpoint``
    resubmits the same config, and :func:`dropens.train.train` resumes the run from its last
    epoch-end checkpoint. A task stopped by a signal exits with ``128 + signal`` and one line in
    its log, leaving no result (a requeued task stays in the queue and delivers it later)."""

    def __call__(self, config: dict[str, Any]) -> str:
        try:
            return run_one(config)
        except Stopped as stop:
            print(stop, file=sys.stderr, flush=True)
            raise SystemExit(stop.exit_code) from None


def executor_parameters(launcher: dict[str, Any], name: str) -> dict[str, Any]:
    """submitit ``update_parameters`` arguments of a ``launcher`` config (unset ones left out)."""
    signal_name = str(launcher.get("requeue_signal") or "USR1").upper().removeprefix("SIG")
    delay = int(launcher.get("signal_delay_s", 90))
    params: dict[str, Any] = {
        "name": f"dropens-{name}",
        "timeout_min": int(launcher["timeout_min"]),
        "cpus_per_task": int(launcher["cpus_per_task"]),
        "slurm_array_parallelism": int(launcher["array_parallelism"]),
        # SLURM sends the signal `delay` s before the time limit; the task stops at a batch
        # boundary and submitit (told the same signal in the task's environment) requeues it
        "slurm_additional_parameters": {"signal": f"{signal_name}@{delay}", "requeue": True},
        "slurm_setup": [f"export SUBMITIT_PREEMPT_SIGNAL={signal_name}"],
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
    for root in sorted({str(c["results_root"]) for c in plan.runs}):
        check_dir(root, "results_root")
    if plan.launcher.get("folder"):
        check_dir(plan.launcher["folder"], "launcher.folder")
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
    pending, how = longest_first(pending, results_dir(plan), committed_records(plan))
    print(how, flush=True)  # an array throttled to fewer tasks than runs starts the longest first
    jobs = executor.map_array(RunTask(), pending)
    array = jobs[0].job_id.split("_")[0]
    print(f"submitted array {array} ({len(jobs)} tasks); logs in {folder}")
    if not plan.launcher.get("wait", True):
        return 0
    try:
        failed = _wait(jobs)
    except Stopped as stop:
        raise Stopped(
            stop.signum,
            f"stopped waiting for array {array}: its tasks keep running in SLURM (squeue; "
            f"`scancel {array}` stops them, and each keeps its last checkpoint)",
        ) from None
    log_invocation(plan, "slurm", len(jobs), len(jobs) - len(failed), time.time() - start, None)
    done = sum(r.done for r in plan.records())
    print(f"study {plan.name}: {done}/{total} runs complete")
    return 0 if done == total and not failed else 1


def _in_queue(job_id: str) -> bool | None:
    """Whether SLURM still lists the task (pending, requeued, running, completing); ``None`` when
    ``squeue`` itself did not answer (a busy controller): unknown, not gone."""
    try:
        out = subprocess.run(
            ["squeue", "-h", "-j", job_id], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return False if "invalid job id" in out.stderr.lower() else None
    return bool(out.stdout.strip())


def _wait(jobs: list, poll_s: float = 5.0, grace_polls: int = 3) -> list[str]:
    """Wait for every task; returns the ids of the failed ones.

    A task fails when it raises (submitit re-raises the run's exception) or when it leaves the
    queue without a result (killed for time or memory, node failure): without SLURM accounting
    submitit would wait for its result file forever, so the queue is watched here. A task is gone
    only after ``grace_polls`` polls in a row that do not list it (a requeued task is listed as
    pending; an unanswered ``squeue`` counts a tenth of a poll).
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
                continue
            listed = _in_queue(job_id)
            if listed:
                gone.pop(job_id, None)
            else:  # not listed, or squeue did not answer (counts for less)
                gone[job_id] = gone.get(job_id, 0) + (1.0 if listed is False else 0.1)
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
