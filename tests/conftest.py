"""Session-wide test settings."""

import pytest
import torch

# The models under test are tiny: one intra-op thread is faster and immune to the spin-waiting of
# two OpenMP threads on a shared 2-core machine (benchmarks/bench_threads.py); runs do the same
# through the `cpu_threads: 1` config default.
torch.set_num_threads(1)


@pytest.fixture
def assert_rejected(tmp_path, capsys):
    """``assert_rejected(overrides, fragments)``: ``dropens train`` refuses the overrides with exit
    code 2 and one line ``error: ...`` containing every fragment, and writes nothing."""
    from dropens.cli import main

    def check(overrides: list[str], fragments: list[str]) -> None:
        code = main(
            ["train", "trainer=smoke", "logger=none", f"results_root={tmp_path}", *overrides]
        )
        err = capsys.readouterr().err.strip()
        assert code == 2
        assert err.startswith("error: ") and "\n" not in err, err
        for fragment in fragments:
            assert fragment in err, (fragment, err)
        assert not any(tmp_path.iterdir()), "a rejected run must not write anything"

    return check


@pytest.fixture
def selection(tmp_path, monkeypatch):
    """A ``selected.yaml`` for every ``@<study>/<group>/<method>/<key>`` grid value of
    ``experiments/`` (e.g. readings reads readings_tune's selection), in a temporary reports
    directory: plain weight decay 0.01, dropout p 0.1, explicit p 0.2 (what the tests assert);
    studies whose grid has ``@`` values expand against it."""
    import re

    import yaml

    from dropens import study

    root = tmp_path / "reports"
    values = {"plain": 0.01, "dropout": 0.1, "explicit": 0.2}
    chosen: dict[str, dict] = {}
    for path in study.experiments_dir().glob("*.yaml"):
        for ref in re.findall(r"@([\w.-]+)/([\w.-]+)/([\w.-]+)/([\w.-]+)", path.read_text()):
            name, group, method, key = ref
            chosen.setdefault(name, {}).setdefault(group, {})[method] = {key: values[method]}
    for name, groups in chosen.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        (root / name / study.SELECTED_FILE).write_text(yaml.safe_dump(groups))
    monkeypatch.setattr(study, "reports_dir", lambda: root)
    return root
