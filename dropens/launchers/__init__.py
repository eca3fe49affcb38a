"""Launchers: where a study's runs train. ``local`` (this process, one run after another) or
``slurm`` (a job array through submitit). Both skip runs whose record is complete."""

from __future__ import annotations

from dropens.errors import check_choice
from dropens.study import Plan

LAUNCHERS = ("local", "slurm")


def launch(plan: Plan) -> int:
    """Train the plan's pending runs with ``plan.launcher["name"]``; returns the exit status."""
    name = plan.launcher["name"]
    check_choice("launcher", name, LAUNCHERS)
    if name == "local":
        from dropens.launchers.local import launch_local

        return launch_local(plan)
    from dropens.launchers.slurm import launch_slurm

    return launch_slurm(plan)
