"""The ``slurm_cluster`` fixture: a real single-node SLURM cluster on localhost for the session.

It runs ``scripts/slurm_cluster.sh start`` (installs slurm-wlm + munge if missing, configures one
node and partition ``debug``, starts munged/slurmctld/slurmd, waits until the node is idle) and
``stop`` at teardown when it was the one that started it. Needs root; without root the tests are
skipped, unless a cluster is already up. A cluster that fails to start is an error, never a skip.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "slurm_cluster.sh"


@dataclass(frozen=True)
class SlurmCluster:
    partition: str = "debug"


def _script(action: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), action], capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="session")
def slurm_cluster():
    already_up = _script("status", timeout=30).returncode == 0
    if already_up:
        yield SlurmCluster()
        return
    if os.geteuid() != 0:
        pytest.skip(
            "the local SLURM cluster needs root: scripts/slurm_cluster.sh installs slurm-wlm/munge "
            "and starts daemons (run `sudo make test-cluster`, or start it first with "
            "`sudo bash scripts/slurm_cluster.sh start`)"
        )
    # A first start on a fresh machine installs the Debian packages (about a minute).
    started = _script("start", timeout=900)
    if started.returncode != 0:
        _script("stop", timeout=120)  # whatever half started
        pytest.fail(
            f"scripts/slurm_cluster.sh start failed (exit {started.returncode}):\n"
            f"{started.stdout}\n{started.stderr}",
            pytrace=False,
        )
    try:
        yield SlurmCluster()
    finally:
        stopped = _script("stop", timeout=120)
        assert stopped.returncode == 0, f"slurm_cluster.sh stop failed:\n{stopped.stderr}"
