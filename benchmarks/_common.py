"""Shared helpers of the benchmark scripts: the machine line, interleaved timing, the table.

Not a benchmark itself (``make bench`` runs ``benchmarks/bench_*.py`` only).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch


@dataclass
class Timing:
    """Wall and process CPU times (seconds) of the repeats of one variant.

    On a busy machine the wall time includes waiting for a core; the CPU time of this process
    (all its threads) does not, so ratios of CPU times are the steadier comparison there.
    """

    times: list[float]
    cpu: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def best(self) -> float:
        return min(self.times)

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu)


def bench_args(doc: str, repeats: int, warmup: int) -> argparse.Namespace:
    """The options every timing script takes (``--threads``, ``--repeats``, ``--warmup``), parsed;
    torch's CPU threads set to ``--threads``."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (cpu_threads)")
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--warmup", type=int, default=warmup)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    return args


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """``(wall seconds, process CPU seconds)`` of one call of ``fn``."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def interleaved(
    variants: Mapping[str, Callable[[], object]], repeats: int, warmup: int
) -> dict[str, Timing]:
    """Time every variant ``repeats`` times after ``warmup`` untimed rounds, the variants
    interleaved within each round (a change of the machine's load hits all of them alike)."""
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    out = {name: Timing([], []) for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            wall, cpu = timed(fn)
            out[name].times.append(wall)
            out[name].cpu.append(cpu)
    return out


def cpu_name() -> str:
    """The CPU model (``/proc/cpuinfo``), else what :mod:`platform` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def header(title: str, args: argparse.Namespace, timing: str | None = None) -> str:
    """Title line plus the machine: CPU, cores, torch version and threads, load average."""
    if timing is None:
        timing = (
            f"median (best) of {args.repeats} interleaved repeats after {args.warmup} warm-up; "
            "cpu = process CPU time"
        )
    load = os.getloadavg()
    cores = os.cpu_count() or 1
    busy = "  (machine busy: timings include contention)" if load[0] > cores - 0.5 else ""
    return (
        f"{title}\n"
        f"machine: {cpu_name()}, {cores} cores, {platform.system()} {platform.release()}; "
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); "
        f"load avg {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}{busy}\n"
        f"timing: {timing}"
    )


def table(times: Mapping[str, Timing], base: str) -> str:
    """One row per variant: wall median and best, CPU median (ms), and the speed-up over the
    ``base`` variant (``base / variant``) by wall and by CPU time."""
    width = max(len(name) for name in times) + 2
    ref = times[base]
    lines = [
        f"{'variant':{width}s}{'wall ms':>9s}{'(best)':>8s}{'cpu ms':>9s}"
        f"{'speed-up wall':>15s}{'cpu':>7s}"
    ]
    for name, t in times.items():
        lines.append(
            f"{name:{width}s}{t.median * 1e3:9.1f}{t.best * 1e3:8.1f}{t.cpu_median * 1e3:9.1f}"
            f"{ref.median / t.median:14.2f}x{ref.cpu_median / t.cpu_median:6.2f}x"
        )
    return "\n".join(lines)
