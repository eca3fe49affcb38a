"""`data.eval_limit`: the tiny smoke forms of studies evaluate on the first examples only."""

import pytest

from dropens.config import compose, to_container
from dropens.data import build_datamodule
from dropens.errors import ConfigError
from dropens.results import default_run_id


def test_eval_limit_keeps_the_first_test_examples():
    cfg = to_container(compose(["data=mnist1d"]))["data"]
    full = build_datamodule(cfg)
    full.setup("fit")
    small = build_datamodule({**cfg, "eval_limit": 10})
    small.setup("fit")
    x, y = small.eval_sets()["clean"]
    fx, fy = full.eval_sets()["clean"]
    assert len(x) == 10 and (x == fx[:10]).all() and (y == fy[:10]).all()
    assert len(small.x_train) == len(full.x_train)  # training data untouched


def test_eval_limit_is_validated_and_absent_from_ordinary_run_ids():
    with pytest.raises(ConfigError, match=r"data\.eval_limit"):
        build_datamodule({**to_container(compose([]))["data"], "eval_limit": 0})
    plain = to_container(compose([]))
    assert "eval_limit" not in plain["data"]  # ordinary configs (and their run ids) do not carry it
    limited = to_container(compose(["+data.eval_limit=256"]))
    assert limited["data"]["eval_limit"] == 256
    assert default_run_id(limited) != default_run_id(plain)
