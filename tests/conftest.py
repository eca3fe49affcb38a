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
    """A ``reports/readings_tune/selected.yaml`` with a value for every arm and method of
    ``experiments/readings.yaml`` (which reads the tuning stage's selection), in a temporary
    reports directory: studies whose grid has ``@`` values expand against it."""
    import yaml

    from dropens import study

    root = tmp_path / "reports"
    (root / "readings_tune").mkdir(parents=True)
    methods = {
        "plain": {"optim.weight_decay": 0.01},
        "dropout": {"dropout.p": 0.1},
        "explicit": {"dropout.p": 0.2},
    }
    arms = ("mnist1d_mlp", "mnist1d_cnn1d", "fashion_mnist_mlp")
    (root / "readings_tune" / study.SELECTED_FILE).write_text(
        yaml.safe_dump({arm: methods for arm in arms})
    )
    monkeypatch.setattr(study, "reports_dir", lambda: root)
    return root
