"""Every study's grid in its tiny form (one seed, the smoke trainer), trained and reported, so no
study config can rot (slow: `make test-slow`)."""

from __future__ import annotations

import pytest

from dropens.cli import main
from dropens.reporting import build_report
from dropens.study import expand, load_study_file, study_names


@pytest.mark.slow
@pytest.mark.parametrize("name", study_names())
def test_study_tiny_form_trains_and_reports(name, tmp_path, selection):
    overrides = ["smoke=true", "seeds=[0]", "logger=csv", f"results_root={tmp_path / 'results'}"]
    assert main(["study", name, *overrides, "launcher.workers=2"]) == 0
    plan = expand(name, overrides)
    assert plan.runs and all(r.done for r in plan.records())
    out = build_report(name, overrides, reports_root=tmp_path / "reports")
    figures = load_study_file(name).figures
    for stem in figures:
        assert (out / f"{stem}.png").stat().st_size > 10_000, stem
        assert (out / f"{stem}.pdf").exists(), stem
    assert (out / "runs.csv").exists()
    text = (tmp_path / "reports" / "REPORT.md").read_text()
    assert f"<!-- BEGIN study:{name} -->" in text and load_study_file(name).claim[:40] in text
