"""Bad input is rejected before training with one line naming the field, the value and the choices,
and nothing is written."""

from __future__ import annotations

import pytest

CASES = {
    "p_too_large": (["dropout.p=1.0"], ["dropout.p=1.0", "[0, 1)"]),
    "p_negative": (["dropout.p=-0.1"], ["dropout.p=-0.1", "[0, 1)"]),
    "unknown_dist": (
        ["dropout.dist=cauchy"],
        ["dropout.dist='cauchy'", "bernoulli", "gaussian", "uniform"],
    ),
    "unknown_structure": (
        ["dropout.structure=row"],
        ["dropout.structure='row'", "channel", "location", "block"],
    ),
    "unknown_scale": (["dropout.scale=half"], ["dropout.scale='half'", "inverted", "none"]),
    "channel_on_mlp": (
        ["model=mlp", "dropout.structure=channel"],
        ["dropout.structure='channel'", "element"],
    ),
    "location_on_mlp": (
        ["model=mlp", "dropout.structure=location"],
        ["dropout.structure='location'", "element"],
    ),
    "block_size_zero": (
        ["dropout.structure=block", "dropout.block_size=0"],
        ["dropout.block_size=0", ">= 1"],
    ),
    "block_too_large": (
        ["dropout.structure=block", "dropout.block_size=50"],
        ["dropout.block_size=50", "larger"],
    ),
    "mc_samples_zero": (["eval.mc_samples=0"], ["eval.mc_samples", ">= 1"]),
    "unknown_dataset": (["data=imagenet"], ["data='imagenet'", "mnist1d"]),
    "unknown_model": (["model=vit"], ["model='vit'", "cnn1d", "mlp"]),
    "unknown_method": (["method=bagging"], ["method='bagging'", "dropout", "plain"]),
    "unknown_objective": (
        ["method.objective=boost"],
        ["method.objective='boost'", "member", "ensemble"],
    ),
    "unknown_site": (
        ["model.dropout_sites=[attention]"],
        ["model.dropout_sites", "attention", "conv"],
    ),
    "unknown_eval_set": (["eval.sets=[clean,rotated]"], ["eval.sets=['rotated']", "all", "clean"]),
    "occlusion_unknown_field": (["+eval.occlusion={size:4}"], ["eval.occlusion.size", "patch"]),
    "occlusion_bad_value": (["+eval.occlusion={patch:0}"], ["eval.occlusion.patch=0", ">= 1"]),
    "faces_rho_above_one": (
        ["data=faces", "model=cnn2d", "data.rho=1.5"],
        ["data.rho=1.5", "[0, 1]"],
    ),
    "faces_size_too_small": (
        ["data=faces", "model=cnn2d", "data.size=8"],
        ["data.size=8", ">= 16"],
    ),
    "temperature_scaling_without_val": (
        ["+eval.temperature_scaling=true"],
        ["eval.temperature_scaling=true", "+data.eval_val=true"],
    ),
    "missing_fashion_files": (
        [
            "data=fashion_mnist",
            "model=cnn2d",
            "data.debian_dir=/nonexistent",
            "data.root=/nonexistent/x",
        ],
        ["fashion", "apt-get install dataset-fashion-mnist"],
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_one_line_error_and_nothing_written(name, assert_rejected):
    overrides, must_contain = CASES[name]
    assert_rejected(overrides, must_contain)
