"""The ``local`` launcher: every pending run of a study, one after another, in this process (or on
``launcher.workers`` worker processes, longest run first: :mod:`dropens.launchers.order`).

A run that fails soundly (:class:`~dropens.failures.RunFailed`: a non-finite loss, another process
training it) is reported in one line and the others still train; bad input stops the study. A
stop signal (SIGTERM, SIGINT) stops the running run at a batch boundary, stops the workers the
same way, and ends the study with one line (:class:`~dropens.failures.Stopped`): the same command
resumes, training only what is not complete.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import traceback

from dropens.data import build_datamodule
from dropens.data.base import resolve_root
from dropens.errors import ConfigError
from dropens.failures import RunFailed, Stopped
from dropens.launchers.order import longest_first
from dropens.paths import check_dir
from dropens.results import RunRecord
from dropens.study import (
    Plan,
    committed_records,
    log_invocation,
    results_dir,
    run_one,
    summary_line,
)


def check_results_root(plan: Plan) -> None:
    """Every results root of the plan is a writable directory (one line otherwise)."""
    for root in sorted({str(c["results_root"]) for c in plan.runs}):
        check_dir(root, "results_root")


def check_data(plan: Plan) -> None:
    """Every data set the pending runs need is present (one-line error otherwise), before training."""
    seen: set[str] = set()
    for config in plan.pending():
        key = repr(sorted(config["data"].items()))
        if key not in seen:
            seen.add(key)
            root = resolve_root(config["data"].get("root"))
            check_dir(root, "data.root", writable=False)
            try:
                build_datamodule(config["data"], seed=int(config["seed"])).prepare_data()
            except OSError as err:
                raise ConfigError(
                    f"data.root={str(root)!r}: cannot read or write the data "
                    f"({err.strerror or err}: {err.filename}); point data.root (or $DROPENS_DATA) "
                    "at a writable directory"
                ) from None


def launch_local(plan: Plan) -> int:
    """Train the pending runs in order; returns 0 if every run of the study is complete."""
    check_results_root(plan)
    check_data(plan)
    pending = plan.pending()
    total, failed = len(plan.runs), []
    print(
        f"study {plan.name}: {total} runs, {total - len(pending)} complete, {len(pending)} to train"
    )
    start = time.time()
    workers = int(plan.launcher.get("workers", 1))
    n_pending = len(pending)
    try:
        if workers > 1 and len(pending) > 1:
            pending, how = longest_first(pending, results_dir(plan), committed_records(plan))
            print(how, flush=True)
            failed = _launch_pool(pending, workers)
            pending = []
        for i, config in enumerate(pending, 1):
            record = RunRecord.for_config(config)
            print(f"[{i}/{len(pending)}] {record.path.name}", flush=True)
            t0 = time.time()
            try:
                run_one(config)
            except ConfigError:
                raise
            except RunFailed as err:
                if not plan.launcher.get("keep_going", True):
                    raise
                failed.append(record.path.name)
                print(f"[{i}/{len(pending)}] FAILED {record.path.name}: {err}", flush=True)
                continue
            except Exception:
                if not plan.launcher.get("keep_going", True):
                    raise
                traceback.print_exc()
                failed.append(record.path.name)
                print(f"[{i}/{len(pending)}] FAILED {record.path.name}", flush=True)
                continue
            print(
                f"[{i}/{len(pending)}] done in {time.time() - t0:.0f}s: {summary_line(record)}",
                flush=True,
            )
    except Stopped as stop:
        done = sum(r.done for r in plan.records())
        trained = max(0, done - (total - n_pending))
        log_invocation(plan, "local", workers, trained, time.time() - start, os.cpu_count())
        if stop.message:  # from the run this process was training
            what = stop.message
        elif workers > 1:
            what = "its workers stopped their runs at a batch boundary, keeping their checkpoints"
        else:
            what = "no run was training"
        message = (
            f"study {plan.name} stopped with {done}/{total} runs complete ({what}); "
            "rerun the same command to train the rest"
        )
        raise Stopped(stop.signum, message) from None
    done = sum(r.done for r in plan.records())
    elapsed = time.time() - start
    log_invocation(plan, "local", workers, n_pending - len(failed), elapsed, os.cpu_count())
    print(f"study {plan.name}: {done}/{total} runs complete ({elapsed:.0f}s)")
    if failed:
        print(f"failed ({len(failed)}): " + ", ".join(failed))
    return 0 if done == total else 1


def die_with_parent(parent: int) -> None:
    """Worker initializer: the kernel kills this worker when the study process dies (Linux
    ``PR_SET_PDEATHSIG``), so killing ``dropens study`` leaves no orphan training a run that the next
    ``dropens study`` would start again beside it. The killed run has no ``DONE`` and resumes from
    its last checkpoint. Elsewhere a no-op."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None).prctl(pr_set_pdeathsig, int(signal.SIGKILL))
    if os.getppid() != parent:  # the study died before the request was registered
        os._exit(1)


_worker_stopped = False  # in a worker process: a stop signal ended one of its runs


def run_in_worker(config: dict) -> str:
    """:func:`~dropens.study.run_one` in a pool worker, which starts no further run once a stop
    signal has ended one of its runs: a signal sent to the whole process group reaches every
    worker, and a worker would otherwise take the next run the pool had already queued for it and
    start training it while the study shuts down.

    Raises:
        Stopped: the run was stopped by a signal, or not started because an earlier one was.
    """
    global _worker_stopped
    if _worker_stopped:
        raise Stopped(signal.SIGTERM, "not started: the study is stopping")
    try:
        return run_one(config)
    except Stopped:
        _worker_stopped = True
        raise


def _launch_pool(pending: list[dict], workers: int) -> list[str]:
    """Train ``pending`` on ``workers`` spawned processes; returns the ids of the runs that failed."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    failed = []
    configs = [
        {**c, "trainer": {**c["trainer"], "enable_progress_bar": False}} for c in pending
    ]  # interleaved bars are unreadable; placement setting, the run id is unchanged
    pool = ProcessPoolExecutor(
        workers,
        mp_context=mp.get_context("spawn"),
        initializer=die_with_parent,
        initargs=(os.getpid(),),
    )
    try:
        futures = {pool.submit(run_in_worker, c): RunRecord.for_config(c) for c in configs}
        for i, future in enumerate(as_completed(futures), 1):
            record = futures[future]
            try:
                future.result()
                print(
                    f"[{i}/{len(configs)}] done: {record.path.name}: {summary_line(record)}",
                    flush=True,
                )
            except Stopped:  # a worker was stopped by a signal: stop the study too
                raise
            except Exception as err:
                failed.append(record.path.name)
                print(
                    f"[{i}/{len(configs)}] FAILED {record.path.name}: {type(err).__name__}: {err}",
                    flush=True,
                )
    except Stopped:
        _stop_workers(pool)
        raise
    pool.shutdown(wait=True)
    return failed


def _stop_workers(pool, grace_s: float = 60.0) -> None:
    """Cancel the queued runs and send SIGTERM to every worker: each stops its run at the next
    batch boundary (keeping its last epoch-end checkpoint); one still alive after ``grace_s`` is
    killed."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()
    deadline = time.time() + grace_s
    for process in processes:
        process.join(timeout=max(0.0, deadline - time.time()))
        if process.is_alive():
            process.kill()
            process.join(timeout=10)
