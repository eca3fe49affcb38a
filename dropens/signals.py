"""Stop signals: SIGTERM and SIGINT end ``dropens train`` / ``dropens study`` at a safe point with
one line and exit status ``128 + signal``; under SLURM, SIGUSR1 (``--signal=USR1@90``, what
submitit asks for) also requeues the job.

:func:`guard` installs the handlers for a command (nested guards share them; the previous
handlers are restored at the end). Outside training a signal raises
:class:`~dropens.failures.Stopped` at once. Inside :func:`deferred` (Lightning's fit) it is only
noted, and :func:`check` raises it at the next batch boundary (``dropens.train``'s callback), so
the epoch-end checkpoint on disk is never half-written: the stopped run keeps its last epoch-end
``checkpoints/last.ckpt`` and the next ``dropens train`` of the same config resumes from it exactly
(an in-memory data loader cannot resume mid-epoch, so no mid-epoch checkpoint is written).

SIGUSR1 under SLURM (and submitit's ``$SUBMITIT_PREEMPT_SIGNAL``), once the run has stopped: when
a handler was installed before (submitit's ``checkpoint_and_try_requeue``, which dumps the task and
calls ``scontrol requeue``) it is called; otherwise (``dropens train`` in an sbatch script with
``--signal=USR1@90``) ``scontrol requeue`` is called here. The requeued task reruns the same
config and resumes from the checkpoint. Lightning's own SLURM auto-requeue does not take over: it
installs its SIGUSR1 handler only where none exists, and its HPC checkpoints would be mid-epoch.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from dropens.failures import Stopped

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class _State:
    def __init__(self) -> None:
        self.depth = 0  # nested guards
        self.deferring = 0  # nested deferred() blocks
        self.pending: int | None = None  # the first stop signal received
        self.previous: dict[int, Any] = {}  # handlers before the outermost guard


_state = _State()


def under_slurm() -> bool:
    return bool(os.environ.get("SLURM_JOB_ID"))


def requeue_signals() -> tuple[int, ...]:
    """SIGUSR1 (``--signal=USR1@90``; Lightning's and this launcher's choice) and the signal
    submitit was told to use (``$SUBMITIT_PREEMPT_SIGNAL``, e.g. ``USR2``), under SLURM only."""
    if not under_slurm():
        return ()
    out = [signal.SIGUSR1]
    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "")
    extra = getattr(signal, f"SIG{name.upper()}", None) if name else None
    if extra is not None and extra not in (*out, *STOP_SIGNALS):
        out.append(extra)
    return tuple(out)


def _signals() -> tuple[int, ...]:
    return (*STOP_SIGNALS, *requeue_signals())


def _handler(signum: int, frame: Any) -> None:
    if _state.pending is None:
        _state.pending = signum
    if _state.deferring == 0:
        raise Stopped(signum)


def pending() -> int | None:
    """The stop signal received under the current guard, if any."""
    return _state.pending


def check() -> None:
    """Raise :class:`Stopped` if a stop signal was received (call at safe points)."""
    if _state.pending is not None:
        raise Stopped(_state.pending)


@contextmanager
def deferred() -> Iterator[None]:
    """Signals received inside only mark the stop; :func:`check` acts on it."""
    _state.deferring += 1
    try:
        yield
    finally:
        _state.deferring -= 1


def job_id() -> str | None:
    """The SLURM job (``<array>_<task>`` for an array task) this process runs in."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return os.environ.get("SLURM_JOB_ID")


def requeue(signum: int, previous: Any) -> str:
    """Requeue this SLURM job after a stop by ``signum`` (SIGUSR1): ``previous`` (submitit's
    handler: checkpoints the task, requeues it, then exits) or ``scontrol requeue``; returns what
    was done."""
    if callable(previous):
        previous(signum, None)  # submitit: dumps the task, `scontrol requeue`, then sys.exit
        return "requeued by the previous handler"
    jid = job_id()
    if jid is None:
        return "not requeued (no SLURM job id)"
    done = subprocess.run(["scontrol", "requeue", jid], capture_output=True, text=True, timeout=60)
    if done.returncode:
        return f"requeue of job {jid} failed: {done.stderr.strip() or done.returncode}"
    return f"job {jid} requeued"


@contextmanager
def guard() -> Iterator[None]:
    """Handle the stop signals for the duration of a command or a run (module docstring).

    Only the main thread can install handlers; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    outermost = _state.depth == 0
    if outermost:
        _state.previous = {s: signal.getsignal(s) for s in _signals()}
        _state.pending = None
        for s in _state.previous:
            signal.signal(s, _handler)
    _state.depth += 1
    try:
        yield
    except Stopped as stop:
        if outermost and stop.signum in requeue_signals():
            print(f"{stop}; requeueing the SLURM job {job_id()}", file=sys.stderr, flush=True)
            done = requeue(stop.signum, _state.previous.get(stop.signum))
            print(f"SLURM: {done}", file=sys.stderr, flush=True)
        raise
    finally:
        _state.depth -= 1
        if outermost:
            for s, handler in _state.previous.items():
                signal.signal(s, handler if handler is not None else signal.SIG_DFL)
            _state.previous = {}
            _state.pending = None
