"""The Lightning and Hugging Face callbacks, run through a real ``lightning.Trainer`` and a real
``transformers.Trainer`` (tiny models built from code and a config; no download, no network):
their records equal ``gradvar.analyze`` over checkpoints saved at the same steps, and the
headline metrics reach the trainer's loggers (CSV and TensorBoard for Lightning; ``trainer.log``
and TensorBoard for transformers)."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F

import gradvar
from gradvar.checkpoints import save_checkpoint
from gradvar.records import read_records

pl = pytest.importorskip("lightning.pytorch")
transformers = pytest.importorskip("transformers")
event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")

from gradvar.callbacks import HuggingFaceMonitor, LightningMonitor  # noqa: E402
from gradvar.callbacks.huggingface import OutputField  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
KEY = ["step", "layer", "metric", "alpha"]
EVERY = 3


def assert_matches_analyze(
    records: pd.DataFrame, run_dir: Path, model: nn.Module, probe_set: object
) -> None:
    expected = gradvar.analyze(run_dir, model, probe_set, F.cross_entropy, progress=False)
    merged = records.merge(expected, on=KEY, suffixes=("", "_analyze"))
    assert len(merged) == len(records) > 0
    assert (merged["snapshot_step"] == merged["snapshot_step_analyze"]).all()
    pd.testing.assert_series_equal(
        merged["value"], merged["value_analyze"], check_names=False, rtol=1e-10
    )


def tb_tags(folder: Path) -> set[str]:
    tags: set[str] = set()
    for events in folder.rglob("events.out.tfevents.*"):
        acc = event_accumulator.EventAccumulator(str(events))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    return tags


# ---------------------------------------------------------------- Lightning


class LitMLP(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Dropout(0.2), nn.Linear(8, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.2, momentum=0.9)


class SaveEveryK(pl.Callback):
    """Saves the weights at step 0 and every EVERY steps, paired with the step EVERY before."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        save_checkpoint(self.run_dir, pl_module, step=0, snapshot_step=0)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step % EVERY == 0:
            save_checkpoint(self.run_dir, pl_module, step=step, snapshot_step=step - EVERY)


def lightning_data(n: int = 64) -> torch.utils.data.TensorDataset:
    gen = torch.Generator().manual_seed(1)
    return torch.utils.data.TensorDataset(
        torch.randn(n, 5, generator=gen), torch.randint(0, 3, (n,), generator=gen)
    )


def test_lightning_records_equal_analyze_and_reach_the_loggers(tmp_path: Path) -> None:
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    probe_set = [lightning_data(32).tensors]
    out = tmp_path / "records.parquet"
    monitor = LightningMonitor(probe_set, F.cross_entropy, every=EVERY, out=out, run="lit")
    loggers = [CSVLogger(tmp_path, name="csv"), TensorBoardLogger(tmp_path, name="tb")]
    trainer = pl.Trainer(
        max_steps=7,
        accelerator="cpu",
        devices=1,
        logger=loggers,
        callbacks=[monitor, SaveEveryK(tmp_path / "ckpt")],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    loader = torch.utils.data.DataLoader(lightning_data(), batch_size=8, shuffle=True)
    trainer.fit(LitMLP(), loader)
    records = read_records(out)
    assert sorted(set(records["step"])) == [3, 6]
    assert set(records["run"]) == {"lit"}
    assert_matches_analyze(records, tmp_path / "ckpt", LitMLP(), probe_set)
    csv = pd.read_csv(next((tmp_path / "csv").rglob("metrics.csv")))
    logged = csv.dropna(subset=["gradvar/alpha_star_layer"])
    assert list(logged["step"]) == [3, 6]
    expected = records.query("layer == '__all__' and metric == 'alpha_star_layer'")["value"]
    assert list(logged["gradvar/alpha_star_layer"]) == pytest.approx(list(expected))
    assert {"gradvar/alpha_star_layer", "gradvar/overhead"} <= tb_tags(tmp_path / "tb")
    assert monitor.monitor is not None and monitor.monitor.overhead > 0


# ---------------------------------------------------------------- Hugging Face


def tiny_bert() -> nn.Module:
    config = transformers.BertConfig(
        vocab_size=40,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        num_labels=3,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(config)


class TokenData(torch.utils.data.Dataset):
    def __init__(self, n: int, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, 40, (n, 8), generator=gen)
        self.labels = torch.randint(0, 3, (n,), generator=gen)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


class SaveEveryKHF(transformers.TrainerCallback):
    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir

    def on_train_begin(self, args, state, control, model=None, **kwargs) -> None:
        save_checkpoint(self.run_dir, model, step=0, snapshot_step=0)

    def on_step_end(self, args, state, control, model=None, **kwargs) -> None:
        if state.global_step % EVERY == 0:
            step = state.global_step
            save_checkpoint(self.run_dir, model, step=step, snapshot_step=step - EVERY)


def hf_args(tmp_path: Path, report_to: list[str]) -> transformers.TrainingArguments:
    return transformers.TrainingArguments(
        output_dir=str(tmp_path / "hf"),
        max_steps=7,
        per_device_train_batch_size=8,
        learning_rate=1e-2,
        report_to=report_to,
        logging_strategy="no",
        save_strategy="no",
        disable_tqdm=True,
        use_cpu=True,
        dataloader_num_workers=0,
        seed=0,
        run_name="bert",
    )


def test_huggingface_records_equal_analyze_and_go_through_trainer_log(tmp_path: Path) -> None:
    data = TokenData(24, seed=5)
    probe_set = (data.ids, data.labels)
    out = tmp_path / "records.csv"
    monitor = HuggingFaceMonitor(probe_set, F.cross_entropy, every=EVERY, out=out)
    trainer = transformers.Trainer(
        model=tiny_bert(),
        args=hf_args(tmp_path, ["tensorboard"]),
        train_dataset=TokenData(64, seed=1),
        callbacks=[SaveEveryKHF(tmp_path / "ckpt")],
    )
    monitor.attach(trainer)
    trainer.train()
    records = read_records(out)
    assert sorted(set(records["step"])) == [3, 6]
    assert set(records["run"]) == {"bert"}
    view = OutputField(tiny_bert(), "logits")  # what the monitor probes: the logits
    assert_matches_analyze(records, tmp_path / "ckpt", view, probe_set)
    assert "bert.encoder.layer.0.attention.self.query.weight" in set(records["layer"])
    logged = [h for h in trainer.state.log_history if "gradvar/alpha_star_layer" in h]
    assert [h["step"] for h in logged] == [3, 6]
    # transformers' TensorBoard integration prefixes training logs with "train/"
    assert {"train/gradvar/alpha_star_layer", "train/gradvar/every"} <= tb_tags(tmp_path / "hf")


def test_huggingface_without_attach_logs_into_the_state(tmp_path: Path) -> None:
    data = TokenData(16, seed=5)
    monitor = HuggingFaceMonitor((data.ids, data.labels), F.cross_entropy, every=2)
    trainer = transformers.Trainer(
        model=tiny_bert(),
        args=hf_args(tmp_path, []),
        train_dataset=TokenData(32, seed=1),
        callbacks=[monitor],
    )
    trainer.train()
    logged = [h for h in trainer.state.log_history if "gradvar/m2_total_variance" in h]
    assert [h["step"] for h in logged] == [2, 4, 6]
    assert monitor.monitor is not None and set(monitor.monitor.records["step"]) == {2, 4, 6}
