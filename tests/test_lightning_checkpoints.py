"""Checkpoints written by a real ``lightning.Trainer`` whose module called
``save_hyperparameters()`` with objects (an argparse Namespace, an Enum): torch's
``weights_only`` load refuses them; gradvar reads the series and analyses it."""

from __future__ import annotations

import argparse
import enum
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F

import gradvar
from gradvar.checkpoints import CheckpointSeries

pl = pytest.importorskip("lightning.pytorch")


class Width(enum.Enum):
    NARROW = 6


class LitWithObjects(pl.LightningModule):
    def __init__(self, args: argparse.Namespace, width: Width = Width.NARROW) -> None:
        super().__init__()
        self.save_hyperparameters()  # args and width are pickled into every checkpoint
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(4, width.value), nn.Tanh(), nn.Linear(width.value, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.args.lr)


def test_trainer_checkpoints_with_pickled_hyperparameters_are_analysed(tmp_path: Path) -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 4, generator=gen), torch.randint(0, 3, (32,), generator=gen)
    module = LitWithObjects(argparse.Namespace(lr=0.2))
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1)
    trainer = pl.Trainer(
        max_epochs=3,
        accelerator="cpu",
        devices=1,
        logger=False,
        callbacks=[checkpoints],
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), 8))
    first = next((tmp_path / "ckpt").glob("*.ckpt"))
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(first, weights_only=True)  # what gradvar used to stop at

    series = CheckpointSeries(tmp_path / "ckpt")
    assert series.steps == [4, 8, 12]
    assert series[0].layout == "lightning"
    assert series[0].metadata["not_loaded"] == f"argparse.Namespace, {__name__}.Width"
    assert any("argparse.Namespace" in note and "not loaded" in note for note in series.notes)
    last = series[-1].load()
    for key, value in module.state_dict().items():  # the trained module = the last checkpoint
        torch.testing.assert_close(last[key], value, rtol=0, atol=0)

    def build() -> nn.Module:
        return LitWithObjects(argparse.Namespace(lr=0.2)).net

    records = gradvar.analyze(
        series, build, (x, y), F.cross_entropy, progress=False, strip_prefix="net."
    )
    assert sorted(records["step"].dropna().unique()) == [4, 8, 12]
    assert records["metric"].eq("alpha_star_mean").any()
