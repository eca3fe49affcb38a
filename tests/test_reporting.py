"""`dropens report`: figures, tables and the REPORT.md section from real (tiny) study records."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from dropens.cli import main
from dropens.errors import ConfigError
from dropens.records import SCHEMA
from dropens.reporting import build_report
from dropens.reporting.common import seed_stats, summarize_groups
from dropens.results import RunRecord
from dropens.study import expand

OVERRIDES = ["smoke=true", "seeds=[0,1]", "logger=csv"]


@pytest.fixture(scope="module")
def study_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    assert main(["study", "quickstart", *OVERRIDES, f"results_root={root}"]) == 0
    return root


def test_report_writes_figures_tables_and_section(study_root, tmp_path, capsys):
    overrides = [*OVERRIDES, f"results_root={study_root}"]
    (tmp_path / "quickstart").mkdir()
    (tmp_path / "quickstart" / "finding.md").write_text("A finding written from the numbers.")
    out = build_report("quickstart", overrides, reports_root=tmp_path)
    for stem in ("predictions", "decomposition", "mc_curve", "diversity", "reliability"):
        assert (out / f"{stem}.png").stat().st_size > 10_000 and (out / f"{stem}.pdf").exists()
    assert "| arm | evaluation |" in (out / "summary.md").read_text()
    assert "verdict" in (out / "verdict.md").read_text()
    report = (tmp_path / "REPORT.md").read_text()
    assert report.count("<!-- BEGIN study:quickstart -->") == 1
    assert "A finding written from the numbers." in report and "seeds [0, 1]" in report
    assert "dropens report quickstart" in report
    # regenerating replaces the section instead of appending a second one
    build_report("quickstart", overrides, reports_root=tmp_path)
    assert (tmp_path / "REPORT.md").read_text().count("<!-- BEGIN study:quickstart -->") == 1
    assert "8 of 8 runs complete, 0 incomplete, 0 missing" in capsys.readouterr().out


def test_report_quotes_the_measured_study_time(study_root, tmp_path):
    """The study command logged its wall time; REPORT.md quotes it and the summed run times."""
    from dropens.reporting.markdown import compute_line
    from dropens.study import read_study_log

    log = read_study_log(study_root / "quickstart")
    assert len(log) == 1 and log[0]["trained"] == 8 and log[0]["launcher"] == "local"
    runs_s = [
        RunRecord(r.path).info()["wall_s"]
        for r in expand("quickstart", [*OVERRIDES, f"results_root={study_root}"]).records()
    ]
    assert (
        0 < max(runs_s) <= log[0]["elapsed_s"] <= sum(runs_s) + 120
    )  # one worker: runs back to back
    build_report("quickstart", [*OVERRIDES, f"results_root={study_root}"], reports_root=tmp_path)
    report = (tmp_path / "REPORT.md").read_text()
    assert compute_line(runs_s, log) in report
    assert "for 8 runs over 1 invocation(s) (local, 1 in parallel on" in report
    # a record without a wall time is left out of the sum and the count, not counted as zero
    assert compute_line([60.0, float("nan")], []).startswith("1 runs: 1 min of")


def test_incomplete_and_missing_runs_are_listed_not_used(study_root, tmp_path, capsys):
    overrides = [*OVERRIDES, f"results_root={study_root}"]
    record = expand("quickstart", overrides).records()[0]
    done = (record.path / "DONE").read_bytes()
    (record.path / "DONE").unlink()
    try:
        build_report("quickstart", [*overrides, "seeds=[0,1,2]"], reports_root=tmp_path)
    finally:
        (record.path / "DONE").write_bytes(done)
    out = capsys.readouterr().out
    assert "7 of 12 runs complete, 1 incomplete, 4 missing" in out
    assert f"incomplete (not used): {record.path.name}" in out
    runs = (tmp_path / "quickstart" / "runs.csv").read_text()
    assert record.path.name not in runs and RunRecord(record.path).config()


def test_report_without_records_is_one_line_error(tmp_path):
    with pytest.raises(ConfigError, match="no complete run record"):
        build_report("quickstart", [f"results_root={tmp_path}"], reports_root=tmp_path / "r")


def test_seed_stats_interval_is_the_t_interval():
    s = seed_stats([1.0, 2.0, 3.0])  # mean 2, sd 1, t_{0.975,2} = 4.303
    assert s["mean"] == 2.0 and abs(s["ci_high"] - (2 + 4.3027 / 3**0.5)) < 1e-3
    assert seed_stats([0.5])["n"] == 1 and seed_stats([])["n"] == 0


def test_summarize_groups_keeps_its_columns_without_any_group():
    """A partial study (e.g. no plain run complete yet) must still report the rest."""
    empty = summarize_groups(pd.DataFrame(columns=["arch", "acc"]), ["arch"], ["acc"])
    assert empty.empty
    assert list(empty.columns) == ["arch", "n", "acc_mean", "acc_std", "acc_lo", "acc_hi"]
    assert empty[empty["arch"] == "mlp"].empty  # the builders' filters work on it


def test_ensemble_view_panel_titles_name_the_2d_cnn_widths():
    """The Fashion-MNIST arm runs a narrowed CNN: its panels say so; the 1-D CNN's int width does not."""
    from dropens.reporting.ensemble_view import _title

    df = pd.DataFrame(
        {
            "cfg.data.name": ["fashion_mnist", "fashion_mnist", "mnist1d"],
            "cfg.model.name": ["cnn2d", "cnn2d", "cnn1d"],
            "cfg.model.channels": ["[8, 16]", "[8, 16]", 25],  # as dropens.results flattens them
        }
    )
    assert _title(df, "fashion_mnist", "cnn2d") == "Fashion-MNIST CNN (8/16 ch.)"
    assert _title(df, "mnist1d", "cnn1d") == "MNIST-1D CNN"
    mixed = df.assign(**{"cfg.model.channels": ["[8, 16]", "[32, 64]", 25]})
    assert _title(mixed, "fashion_mnist", "cnn2d") == "Fashion-MNIST CNN"  # no single width to name


def _report_files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_compact_records_regenerate_the_same_report(study_root, tmp_path, capsys):
    """From results/, the report writes records.jsonl; from that file alone (no results/), every
    figure, table and the REPORT.md section come out byte-identical."""
    overrides = [*OVERRIDES, f"results_root={study_root}"]
    first = build_report("quickstart", overrides, reports_root=tmp_path / "a")
    assert "reading 8 complete run records from" in capsys.readouterr().out
    lines = (first / "records.jsonl").read_text().splitlines()
    assert len(lines) == 8 and all(json.loads(line)["schema"] == SCHEMA for line in lines)
    shutil.copytree(first, tmp_path / "b" / "quickstart")
    # a results root without this study: auto falls back to the committed records
    fresh = [*OVERRIDES, f"results_root={tmp_path / 'empty'}"]
    second = build_report("quickstart", fresh, reports_root=tmp_path / "b")
    out = capsys.readouterr().out
    assert f"reading 8 complete committed compact records from {second / 'records.jsonl'}" in out
    assert _report_files(first) == _report_files(second)
    assert (tmp_path / "a" / "REPORT.md").read_text() == (tmp_path / "b" / "REPORT.md").read_text()


def test_a_deleted_line_is_missing_and_a_damaged_line_is_listed(study_root, tmp_path, capsys):
    overrides = [*OVERRIDES, f"results_root={study_root}"]
    out_dir = build_report("quickstart", overrides, reports_root=tmp_path)
    path = out_dir / "records.jsonl"
    lines = path.read_text().splitlines()  # sorted: dropout s0 s1, ensemble, plain, subnets
    gone = json.loads(lines[4])["run_id"]
    wrong_schema = json.loads(lines[2])
    wrong_schema["schema"] = SCHEMA + 1
    damaged = lines[6][: len(lines[6]) // 2]
    kept = [lines[0], lines[1], json.dumps(wrong_schema), lines[3], lines[5], damaged, lines[7]]
    path.write_text("\n".join(kept) + "\n")
    capsys.readouterr()
    build_report("quickstart", overrides, reports_root=tmp_path, source="records")
    out = capsys.readouterr().out
    assert f"line 3: schema {SCHEMA + 1}; this dropens reads schema {SCHEMA}" in out
    assert "line 6: not JSON" in out
    assert "5 of 8 runs complete, 0 incomplete, 3 missing" in out
    assert f"missing (not run yet): {gone}" in out
    assert wrong_schema["run_id"] not in (out_dir / "runs.csv").read_text()


def test_report_from_records_without_records_is_one_line_error(tmp_path):
    with pytest.raises(ConfigError, match="no compact records"):
        build_report(
            "quickstart", [f"results_root={tmp_path}"], reports_root=tmp_path, source="records"
        )


def test_dropens_list_counts_results_and_records(study_root, tmp_path, capsys):
    overrides = [*OVERRIDES, f"results_root={study_root}"]
    build_report("quickstart", overrides, reports_root=tmp_path)
    from dropens.study import overview

    row = next(
        line
        for line in overview(tmp_path, overrides).splitlines()
        if line.startswith("quickstart ")
    )
    assert row.split()[1:4] == ["8", "8", "8"]  # planned, complete in results, in the records
    (tmp_path / "quickstart" / "records.jsonl").write_text("")
    three = [*OVERRIDES[:1], "seeds=[0,1,2]", *OVERRIDES[2:], f"results_root={study_root}"]
    text = overview(tmp_path, three)
    row = next(line for line in text.splitlines() if line.startswith("quickstart "))
    assert row.split()[1:4] == ["12", "8", "0"]
    assert "experiments:" in text and "configs:" in text


def test_damaged_record_is_listed_and_the_report_written_from_the_sound_ones(tmp_path, capsys):
    """A run directory with DONE but a truncated metrics.json is neither complete nor a crash: the
    report lists it as damaged and is written from the sound records (issue 16)."""
    results = tmp_path / "results"
    overrides = ["smoke=true", "seeds=[0]", "logger=none", f"results_root={results}"]
    assert main(["study", "reference", *overrides, "--match", "mlp-mnist1d"]) == 0
    records = [r for r in expand("reference", overrides).records() if r.done]
    assert len(records) == 2
    damaged, sound = records
    text = (damaged.path / "metrics.json").read_text()
    (damaged.path / "metrics.json").write_text(text[: len(text) // 3])
    capsys.readouterr()
    assert main(["report", "reference", *overrides, "--out", str(tmp_path / "reports")]) == 0
    out = capsys.readouterr().out
    assert "1 of 5 runs complete, 0 incomplete, 3 missing, 1 damaged" in out, out
    (line,) = [ln for ln in out.splitlines() if "damaged (not used)" in ln]
    assert damaged.path.name in line and "metrics.json is damaged" in line
    runs = pd.read_csv(tmp_path / "reports" / "reference" / "runs.csv")
    assert list(runs["run_id"]) == [sound.path.name]
