"""The reference training loop: checkpoint series, run.json, metrics, shuffling, exact resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from gradvar.checkpoints import CheckpointSeries
from gradvar.errors import CheckpointError, InvalidArgumentError
from gradvar.train import read_metrics, train
from gradvar.zoo import augment, build_model, load_dataset

SPEC = {"name": "mlp2", "seed": 0, "kwargs": {"in_features": 64, "num_classes": 10}}
STEPS_PER_EPOCH = 1500 // 128  # digits train split, drop_last


def _model(dropout: float = 0.0, seed: int = 0) -> nn.Module:
    return build_model("mlp2", seed=seed, in_features=64, num_classes=10, dropout=dropout)


def _train(run_dir: Path, model: nn.Module | None = None, **kwargs):
    args = dict(lr=0.1, momentum=0.9, epochs=2, progress=False, model_spec=SPEC)
    args.update(kwargs)
    return train(model or _model(), load_dataset("digits"), run_dir=run_dir, **args)


def test_two_epoch_sgd_writes_checkpoints_run_json_and_metrics(tmp_path: Path) -> None:
    model = _model()
    result = _train(tmp_path, model, checkpoint_every=5, data_spec="digits")
    assert STEPS_PER_EPOCH == 11 and result.steps == 22
    assert result.checkpoint_steps == [0, 5, 10, 11, 15, 20, 22]
    series = CheckpointSeries(tmp_path)
    assert series.steps == result.checkpoint_steps and series.pairing == "metadata"
    assert [c.epoch for c in series] == [s / 11 for s in series.steps]
    # each state pairs with the last interval start; the final one with the last trained interval
    assert [c.snapshot_step for c in series] == [0, 0, 0, 11, 11, 11, 11]
    final = series[-1].load()
    assert all(torch.equal(final[k], v) for k, v in model.state_dict().items())
    assert not torch.equal(series[0].load()["fc1.weight"], final["fc1.weight"])
    config = json.loads((tmp_path / "run.json").read_text())
    assert config["model"] == SPEC and config["data"] == "digits"
    assert config["loss"] == "cross_entropy" and config["seed"] == 0
    assert config["batch_size"] == 128 and config["snapshot_interval"] == 11
    assert config["optimizer"] == {"name": "sgd", "lr": 0.1, "weight_decay": 0.0, "momentum": 0.9}
    assert config["vr"] == "none" and config["alpha"] is None
    rows = read_metrics(tmp_path)
    assert [r[0] for r in rows if r[2] == "train_loss"] == list(range(1, 23))
    assert [(r[0], r[1]) for r in rows if r[2] == "epoch_train_loss"] == [(11, 1.0), (22, 2.0)]
    assert result.step_losses == [r[3] for r in rows if r[2] == "train_loss"]
    assert len(result.epoch_losses) == 2 and result.epoch_losses[1] < result.epoch_losses[0]
    assert result.epoch_losses[0] < result.step_losses[0]  # it learned something


def test_epochs_are_reshuffled_and_runs_reproduce(tmp_path: Path) -> None:
    seen: list[list[float]] = []

    class Recorder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = _model()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.training:
                seen.append(x.flatten(1).sum(1).tolist())
            return self.inner(x)

    _train(tmp_path / "a", Recorder(), progress=False)
    first, seen[:] = list(seen), []
    _train(tmp_path / "b", Recorder(), progress=False)
    assert seen == first  # same seed, same batches
    epoch0, epoch1 = first[:11], first[11:]
    assert epoch0[0] != epoch1[0]  # a fresh order every epoch
    seen[:] = []
    _train(tmp_path / "c", Recorder(), seed=1)
    assert seen[:11] != epoch0


@pytest.mark.parametrize("cut", [11, 15])
def test_resume_continues_exactly(tmp_path: Path, cut: int) -> None:
    full_model = _model(dropout=0.2)
    full = _train(tmp_path / "full", full_model, checkpoint_every=4, transform=augment)
    partial = tmp_path / "partial"
    shutil.copytree(tmp_path / "full", partial)
    for path in partial.glob("step-*.pt"):
        if int(path.stem.split("-")[1]) > cut:
            path.unlink()
    resumed_model = _model(dropout=0.2, seed=123)  # different init: the checkpoint must win
    resumed = _train(partial, resumed_model, checkpoint_every=4, transform=augment, resume=True)
    for key, value in full_model.state_dict().items():
        assert torch.equal(resumed_model.state_dict()[key], value), key
    assert resumed.step_losses == full.step_losses
    assert resumed.epoch_losses == full.epoch_losses
    assert resumed.checkpoint_steps == full.checkpoint_steps


def test_existing_run_needs_resume_and_same_config(tmp_path: Path) -> None:
    _train(tmp_path, epochs=1)
    with pytest.raises(CheckpointError, match="resume=True"):
        _train(tmp_path, epochs=1)
    with pytest.raises(CheckpointError, match="lr"):
        _train(tmp_path, epochs=1, lr=0.05, resume=True)
    files = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    model = _model(seed=9)
    finished = _train(tmp_path, model, epochs=1, resume=True)  # already complete: nothing to do
    assert finished.steps == 11 and len(finished.step_losses) == 11
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == files
    final = CheckpointSeries(tmp_path)[-1].load()
    assert all(torch.equal(final[k], v) for k, v in model.state_dict().items())


def test_argument_errors_name_the_value(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="'adam'"):
        _train(tmp_path, optimizer="adam")
    with pytest.raises(InvalidArgumentError, match="vr="):
        _train(tmp_path, vr="saga")
    with pytest.raises(InvalidArgumentError, match="batch_size=4096"):
        _train(tmp_path, batch_size=4096)
    with pytest.raises(InvalidArgumentError, match="momentum"):
        _train(tmp_path, optimizer="adamw", momentum=0.9)
    with pytest.raises(InvalidArgumentError, match="lr"):
        _train(tmp_path, lr=0.0)


def test_adamw_runs(tmp_path: Path) -> None:
    result = _train(tmp_path, optimizer="adamw", lr=1e-2, momentum=0.0, weight_decay=0.05)
    assert result.epoch_losses[1] < result.epoch_losses[0]


def test_alpha_svrg_records_snapshots_and_linear_alpha(tmp_path: Path) -> None:
    result = _train(tmp_path, vr="alpha-svrg", alpha=0.75, checkpoint_every=4)
    series = CheckpointSeries(tmp_path)
    assert series.pairing == "metadata"
    expected = [(s // 11) * 11 for s in series.steps[:-1]] + [11]  # the end: last interval
    assert [c.snapshot_step for c in series] == expected
    assert [series.snapshot_for(c).step for c in series] == expected
    alphas = [r[3] for r in read_metrics(tmp_path) if r[2] == "alpha"]
    assert alphas == [0.75] * 11 + [0.0] * 11  # reference linear decay over 2 intervals
    config = json.loads((tmp_path / "run.json").read_text())
    assert config["vr"] == "alpha-svrg" and config["alpha"]["kind"] == "linear"
    assert result.epoch_losses[1] < result.epoch_losses[0]


def test_svrg_uses_alpha_one_and_alpha_zero_is_plain_sgd(tmp_path: Path) -> None:
    _train(tmp_path / "svrg", vr="svrg", epochs=1)
    assert {r[3] for r in read_metrics(tmp_path / "svrg") if r[2] == "alpha"} == {1.0}
    sgd_model, zero_model = _model(dropout=0.2), _model(dropout=0.2)
    _train(tmp_path / "sgd", sgd_model, epochs=1)
    _train(
        tmp_path / "zero",
        zero_model,
        epochs=1,
        vr="alpha-svrg",
        alpha={"kind": "constant", "value": 0.0},
    )
    for key, value in sgd_model.state_dict().items():
        assert torch.equal(zero_model.state_dict()[key], value), key


def test_alpha_svrg_resume_mid_interval_is_exact(tmp_path: Path) -> None:
    full_model = _model(dropout=0.2)
    full = _train(tmp_path / "full", full_model, vr="alpha-svrg", checkpoint_every=4)
    partial = tmp_path / "partial"
    shutil.copytree(tmp_path / "full", partial)
    for path in partial.glob("step-*.pt"):
        if int(path.stem.split("-")[1]) > 15:
            path.unlink()
    resumed_model = _model(dropout=0.2, seed=5)
    resumed = _train(partial, resumed_model, vr="alpha-svrg", checkpoint_every=4, resume=True)
    for key, value in full_model.state_dict().items():
        assert torch.equal(resumed_model.state_dict()[key], value), key
    assert resumed.step_losses == full.step_losses


def test_measured_alpha_run_logs_the_alpha_the_optimizer_used(tmp_path: Path) -> None:
    from gradvar.optim import AlphaSVRG  # noqa: F401  (the measured alpha lives in it)

    _train(tmp_path, vr="alpha-svrg", alpha="measured", momentum=0.0, epochs=1)
    alphas = [r[3] for r in read_metrics(tmp_path) if r[2] == "alpha"]
    assert len(alphas) == STEPS_PER_EPOCH
    assert len({round(a, 12) for a in alphas}) > 1  # measured per step, not the 0.75 prior
    assert all(0.0 <= a <= 1.0 for a in alphas)
