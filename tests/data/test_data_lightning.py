"""The data modules inside a real Lightning Trainer: loaders accepted, device move, epoch order
kept across a checkpoint resume (Lightning sets the loader's epoch through ``loader.sampler``)."""

from __future__ import annotations

import lightning as L
import torch
from torch import nn

from dropens.data import DigitsDataModule, TensorLoader


class _Probe(L.LightningModule):
    """A linear classifier that records the labels of the first batch of every epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(64, 10)
        self.first_batches: dict[int, torch.Tensor] = {}
        self.n_val = 0

    def training_step(self, batch, batch_idx):
        x, y = batch
        if batch_idx == 0:
            self.first_batches[self.current_epoch] = y.clone()
        return nn.functional.cross_entropy(self.net(x.flatten(1)), y)

    def validation_step(self, batch, batch_idx):
        self.n_val += len(batch[1])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _trainer(max_epochs: int, **kwargs) -> L.Trainer:
    return L.Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **kwargs,
    )


def _first_batch_labels(dm: DigitsDataModule, epoch: int) -> torch.Tensor:
    loader = TensorLoader(dm.x_train, dm.y_train, dm.batch_size, shuffle=True, seed=dm.seed)
    loader.set_epoch(epoch)
    return next(iter(loader))[1]


def test_fit_and_resume_keep_the_epoch_order(tmp_path):
    dm = DigitsDataModule(root=tmp_path, batch_size=200, seed=4)
    probe = _Probe()
    trainer = _trainer(1, enable_checkpointing=False)
    trainer.fit(probe, datamodule=dm)
    assert dm.x_train.device == trainer.strategy.root_device
    assert probe.n_val == len(dm.x_val)  # one validation pass, every example
    assert sorted(probe.first_batches) == [0]
    assert torch.equal(probe.first_batches[0], _first_batch_labels(dm, 0))
    ckpt = tmp_path / "epoch1.ckpt"
    trainer.save_checkpoint(ckpt)

    resumed = _Probe()
    fresh = DigitsDataModule(root=tmp_path, batch_size=200, seed=4)
    _trainer(3, enable_checkpointing=False).fit(resumed, datamodule=fresh, ckpt_path=ckpt)
    assert sorted(resumed.first_batches) == [1, 2]  # a fresh loader, told its epochs
    for epoch in (1, 2):
        assert torch.equal(resumed.first_batches[epoch], _first_batch_labels(dm, epoch))
    assert not torch.equal(resumed.first_batches[1], resumed.first_batches[2])
