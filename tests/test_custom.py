"""``model=custom``, ``data=folder`` and ``data=tensors`` end to end through the real CLI and
Lightning Trainer (dropens/models/custom.py, dropens/data/custom.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from dropens.cli import main
from dropens.data.faces import render, sample_faces
from dropens.results import RunRecord

# why the eval caps: 4 MC masks are enough to exercise MC in a smoke run
SMOKE = ["trainer=smoke", "logger=csv", "eval.mc_curve=[1,4]", "eval.mc_samples=4"]
RESNET = [
    "model=custom",
    "model.target=torchvision.models:resnet18",
    "model.kwargs.num_classes=2",
    "model.dropout_after=[layer4]",
]
RECORD_FILES = ("config.yaml", "metrics.json", "predictions.npz", "magnitudes.json", "DONE")


@pytest.fixture(scope="module")
def faces_folder(tmp_path_factory):
    """Rendered faces (dropens.data.faces) as 32 x 32 PNGs: ``train/<class>/*`` (320: five
    batches of the folder config's 64, so trainer=smoke validates within its 8 steps) and
    ``test/<class>/*`` (32)."""
    root = tmp_path_factory.mktemp("faces")
    for split, n, stream in (("train", 320, 0), ("test", 32, 1)):
        params = sample_faces(n, rho=0.5, seed=0, stream=stream, size=32)
        for i, (img, y) in enumerate(zip(render(params, size=32), params["label"].tolist())):
            folder = root / split / ("smiling" if y else "angry")
            folder.mkdir(parents=True, exist_ok=True)
            pixels = (img[0].numpy() * 255).round().astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def _train(capsys, *overrides: str) -> RunRecord:
    assert main(["train", *overrides]) == 0
    out = capsys.readouterr().out
    path = next(line.split("record: ", 1)[1] for line in out.splitlines() if "record: " in line)
    return RunRecord(path)


def _complete(record: RunRecord) -> dict:
    assert record.done
    for name in RECORD_FILES:
        assert (record.path / name).exists(), name
    metrics = json.loads((record.path / "metrics.json").read_text())
    assert all(np.isfinite(v) for v in metrics.values())
    return metrics


def test_resnet18_on_image_folder_dropout(faces_folder, tmp_path, capsys):
    """Acceptance 2: the issue's command, as written (plus the smoke eval caps)."""
    record = _train(
        capsys,
        *RESNET,
        "data=folder",
        f"data.root={faces_folder}",
        "method=dropout",
        *SMOKE,
        f"results_root={tmp_path}",
    )
    metrics = _complete(record)
    for key in ("deterministic/acc", "mc4/acc", "mc4/nll", "ws_on/ece"):
        assert f"test/clean/{key}" in metrics
    config = record.config()
    assert config["model"]["target"] == "torchvision.models:resnet18"
    assert config["data"]["root"] == str(faces_folder)
    preds = record.predictions()
    assert preds["clean/mc"].shape == (4, 32, 2)


@pytest.mark.parametrize("method", ["subnets", "ensemble"])
def test_resnet18_on_image_folder_subnets_and_ensemble(faces_folder, tmp_path, capsys, method):
    """subnets: K fixed masks at the new layer4 site; ensemble: K resnet18s vectorized with
    torch.func (its BatchNorm buffers are stacked per member, so vmap works)."""
    record = _train(
        capsys,
        *RESNET,
        "data=folder",
        f"data.root={faces_folder}",
        "data.batch_size=16",  # why: 4 members x 64 images is slow for a smoke test
        f"method={method}",
        *SMOKE,
        f"results_root={tmp_path}",
    )
    metrics = _complete(record)
    assert "test/clean/members/acc" in metrics


def _arrays(n_features: int = 8) -> dict[str, np.ndarray]:
    g = np.random.default_rng(0)
    out = {}
    for split, n in (("train", 160), ("test", 40)):
        x = g.normal(size=(n, n_features)).astype(np.float32)
        out[f"x_{split}"] = x
        out[f"y_{split}"] = (x[:, 0] > 0).astype(np.int64)
    return out


@pytest.mark.parametrize("suffix", [".pt", ".npz"])
def test_tensor_file_with_torchvision_mlp(tmp_path, capsys, suffix):
    """data=tensors with a model whose own nn.Dropout modules are converted (torchvision's MLP)."""
    arrays = _arrays()
    path = tmp_path / f"data{suffix}"
    if suffix == ".pt":
        torch.save({k: torch.from_numpy(v) for k, v in arrays.items()}, path)
    else:
        np.savez(path, **arrays)
    record = _train(
        capsys,
        "model=custom",
        "model.target=torchvision.ops:MLP",
        "model.kwargs.in_channels=8",
        "model.kwargs.hidden_channels=[16,2]",
        "model.kwargs.dropout=0.5",  # replaced: the run's dropout.p applies to converted sites
        "data=tensors",
        f"data.path={path}",
        "data.batch_size=16",
        "method=dropout",
        "dropout.p=0.2",
        *SMOKE,
        f"results_root={tmp_path / 'results'}",
    )
    metrics = _complete(record)
    assert "test/clean/mc4/acc" in metrics
    assert record.config()["data"]["path"] == str(path)


@pytest.mark.parametrize(
    ("make", "overrides", "fragments"),
    [
        (None, ["data=folder", "data.root=/nonexistent/faces"], ["data.root=", "does not exist"]),
        ("empty_dir", ["data=folder"], ["data.root", "not an image folder"]),
        (None, ["data=folder"], ["data.root=PATH"]),
        ("garbage.npz", ["data=tensors"], ["data.path=", "cannot be read"]),
        ("missing.npz", ["data=tensors"], ["data.path=", "y_test"]),
        ("data.csv", ["data=tensors"], ["data.path=", ".pt or .npz"]),
    ],
)
def test_bad_folder_or_file_one_line(tmp_path_factory, assert_rejected, make, overrides, fragments):
    where = tmp_path_factory.mktemp("bad")
    extra = []
    if make == "empty_dir":
        extra = [f"data.root={where}"]
    elif make is not None:
        path = where / make
        if make == "missing.npz":
            arrays = _arrays()
            del arrays["y_test"]
            np.savez(path, **arrays)
        else:
            path.write_bytes(b"not an array file")
        extra = [f"data.path={path}"]
    assert_rejected(
        ["model=custom", "model.target=torchvision.ops:MLP", *overrides, *extra], fragments
    )


@pytest.mark.parametrize(
    ("target", "fragments"),
    [
        ("nosuch.module:factory", ["model.target='nosuch.module:factory'", "cannot be imported"]),
        ("null", ["model.target=", "package.module:factory"]),
    ],
)
def test_bad_target_one_line(tmp_path_factory, assert_rejected, target, fragments):
    path = tmp_path_factory.mktemp("arrays") / "d.npz"
    np.savez(path, **_arrays())
    assert_rejected(
        ["model=custom", f"model.target={target}", "data=tensors", f"data.path={path}"], fragments
    )
