"""Longest run first (dropens.launchers.order), checked on the family study's committed records:
110 measured runs in 22 cells of 5 seeds."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from dropens.launchers.order import cell_of, expected_seconds, longest_first, measured_seconds
from dropens.records import read_records
from dropens.results import RunRecord
from dropens.study import committed_records, expand


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    plan = expand("family", [f"results_root={tmp_path_factory.mktemp('results')}"])
    runs, problems = read_records(committed_records(plan))
    assert not problems and len(runs) == len(plan.runs) == 110
    return plan, {r.run_id: r for r in runs}


def _id(config) -> str:
    return RunRecord.for_config(config).path.name


def test_a_fresh_results_dir_runs_the_committed_study_longest_first(family):
    plan, runs = family
    ordered, how = longest_first(plan.pending(), Path("/nonexistent"), committed_records(plan))
    assert sorted(map(_id, ordered)) == sorted(map(_id, plan.runs))  # a permutation
    walls = [runs[_id(c)].info()["wall_s"] for c in ordered]
    assert walls == sorted(walls, reverse=True)
    assert walls != [runs[_id(c)].info()["wall_s"] for c in plan.runs]  # which plan order is not
    assert "(110/110 runs estimated" in how


def test_a_run_without_its_own_measurement_gets_its_cells_median(family):
    plan, runs = family
    measured = measured_seconds(Path("/nonexistent"), committed_records(plan))
    held_out = [c for c in plan.runs if c["seed"] == 0]
    for config in held_out:
        del measured[_id(config)]
    estimates = expected_seconds(held_out, measured)
    for config, estimate in zip(held_out, estimates):
        siblings = [
            r.info()["wall_s"]
            for r in runs.values()
            if r.config()["seed"] != 0 and cell_of(r.config()) == cell_of(config)
        ]
        assert len(siblings) == 4 and estimate == statistics.median(siblings)


def test_unmeasured_runs_go_first_in_plan_order(family):
    plan, _ = family
    smoke = expand("family", ["smoke=true", "seeds=[0]"]).runs[:3]  # other configs: no estimate
    mixed = [plan.runs[-1], smoke[0], plan.runs[0], smoke[1], smoke[2]]
    ordered, _ = longest_first(mixed, Path("/nonexistent"), committed_records(plan))
    assert list(map(_id, ordered[:3])) == list(map(_id, smoke))
    assert expected_seconds(smoke, measured_seconds(Path("/nonexistent"), None)) == [None] * 3


def test_without_any_measurement_the_plan_order_stays(tmp_path):
    plan = expand("family", [f"results_root={tmp_path}", "seeds=[0]"])
    ordered, how = longest_first(plan.runs, tmp_path, tmp_path / "no-records.jsonl")
    assert ordered == plan.runs and how.startswith("order: plan order")
