"""The same small run saved in every layout users have gives the same records.

The fixture imitates how each tool writes its files (``torch.save`` / safetensors, as they
do), without depending on the tools: plain state_dicts, the tutorial dict, DDP and
torch.compile prefixes, PyTorch Lightning ``.ckpt`` (``model.`` prefix, ``global_step``,
``last.ckpt``, ``-v1``, metric values in names), Hugging Face Trainer ``checkpoint-N/``
folders (single, sharded and ``pytorch_model.bin``, with optimizer/scheduler/RNG/args
files), safetensors files, EMA weights and gradvar's own files.
"""

from __future__ import annotations

import argparse
import enum
import json
import pickle
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import safetensors.torch
import torch
import torch.nn.functional as F
from torch import nn

import gradvar
from gradvar.checkpoints import CheckpointSeries, save_checkpoint
from gradvar.checkpoints._common import torch_load
from gradvar.errors import CheckpointError, CheckpointWarning

STEPS = (0, 8, 16)  # epochs 0, 1, 2 of 8 steps


def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))


def _states() -> dict[int, dict[str, torch.Tensor]]:
    states = {}
    for step in STEPS:
        torch.manual_seed(100 + step)
        states[step] = {k: v.clone() for k, v in _model().state_dict().items()}
    return states


def _prefixed(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in state.items()}


def _optimizer_state() -> dict:
    return {"state": {0: {"momentum_buffer": torch.zeros(3)}}, "param_groups": [{"lr": 0.1}]}


class _Opaque:
    """Stands in for a pickled object (TrainingArguments); loading it must never be tried."""


def write_plain(root: Path, states) -> None:
    for step, state in states.items():
        torch.save(state, root / f"step_{step}.pt")
    torch.save(states[16], root / "best.pt")  # an alias without a step: same weights as 16
    torch.save(_optimizer_state(), root / "optimizer.pt")


def write_tutorial(root: Path, states) -> None:
    for step, state in states.items():
        epoch = step // 8
        payload = {"model_state_dict": state, "optimizer_state_dict": _optimizer_state(),
                   "epoch": epoch, "step": step, "loss": 0.5}  # fmt: skip
        torch.save(payload, root / f"model_epoch{epoch:02d}_valacc0.{81 + epoch}.pt")


def write_ddp(root: Path, states) -> None:
    for step, state in states.items():
        torch.save({"model": _prefixed(state, "module."), "step": step}, root / f"ckpt-{step}.pth")


def write_compiled(root: Path, states) -> None:
    for step, state in states.items():
        torch.save(_prefixed(state, "_orig_mod."), root / f"step={step}.pt")


def _lightning(state, step: int) -> dict:
    return {
        "epoch": step // 8,
        "global_step": step,
        "pytorch-lightning_version": "2.4.0",
        "state_dict": {**_prefixed(state, "model."), "loss_fn.pos_weight": torch.ones(3)},
        "optimizer_states": [_optimizer_state()],
        "lr_schedulers": [{"last_epoch": step}],
        "loops": {"fit_loop": {"epoch_progress": {"current": {"completed": step // 8}}}},
        "callbacks": {"ModelCheckpoint{'monitor': 'val_loss'}": {"best_model_score": 0.4}},
        "hyper_parameters": {"lr": 0.1, "hidden": 6},
    }


class _Mode(enum.Enum):
    """A hyper-parameter type of the user's (pickled by reference, like a Namespace)."""

    FAST = "fast"


class _AttributeDict(dict):
    """Like Lightning's AttributeDict: a dict subclass, pickled with its items."""


class _Layers(list):
    """A list subclass, pickled with its items."""


def write_lightning_pickled_hparams(root: Path, states) -> None:
    """Lightning checkpoints whose hyper_parameters hold objects (``save_hyperparameters(args)``
    with an argparse Namespace, an Enum, dict and list subclasses): weights_only=True refuses
    them; gradvar loads the weights and leaves the objects as inert stand-ins."""
    for step, state in states.items():
        payload = _lightning(state, step)
        payload["hyper_parameters"] = {
            "args": argparse.Namespace(lr=0.1, depth=2),
            "mode": _Mode.FAST,
            "config": _AttributeDict(hidden=6, act="tanh"),
            "layers": _Layers([4, 6, 3]),
        }
        torch.save(payload, root / f"epoch={step // 8}-step={step}.ckpt")


def write_lightning(root: Path, states) -> None:
    folder = root / "lightning_logs" / "version_0" / "checkpoints"
    folder.mkdir(parents=True)
    (root / "lightning_logs" / "version_0" / "hparams.yaml").write_text("lr: 0.1\n")
    names = {
        0: "epoch=0-step=0.ckpt",
        8: "epoch=1-val_loss=0.47.ckpt",
        16: "epoch=2-step=16-v1.ckpt",
    }
    for step, state in states.items():
        torch.save(_lightning(state, step), folder / names[step])
    torch.save(_lightning(states[16], 16), folder / "last.ckpt")


def _hf_extras(folder: Path, step: int) -> None:
    torch.save(_optimizer_state(), folder / "optimizer.pt")
    torch.save({"last_epoch": step}, folder / "scheduler.pt")
    torch.save({"python": 1, "cpu": torch.get_rng_state()}, folder / "rng_state.pth")
    (folder / "training_args.bin").write_bytes(pickle.dumps(_Opaque()))
    (folder / "config.json").write_text(json.dumps({"hidden": 6}))
    state = {"global_step": step, "epoch": step / 8, "log_history": [{"loss": 0.3, "step": step}]}
    (folder / "trainer_state.json").write_text(json.dumps(state))


def write_hf(root: Path, states) -> None:
    for step, state in states.items():
        folder = root / f"checkpoint-{step}"
        folder.mkdir()
        _hf_extras(folder, step)
        if step == 16:  # sharded, with its index
            keys = sorted(state)
            shards = {"model-00001-of-00002.safetensors": keys[:2],
                      "model-00002-of-00002.safetensors": keys[2:]}  # fmt: skip
            for name, part in shards.items():
                safetensors.torch.save_file({k: state[k] for k in part}, folder / name,
                                            metadata={"format": "pt"})  # fmt: skip
            index = {"metadata": {}, "weight_map": {k: n for n, ks in shards.items() for k in ks}}
            (folder / "model.safetensors.index.json").write_text(json.dumps(index))
        else:
            safetensors.torch.save_file(
                state, folder / "model.safetensors", metadata={"format": "pt"}
            )


def write_hf_bin(root: Path, states) -> None:
    for step, state in states.items():
        folder = root / "out" / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        _hf_extras(folder, step)
        torch.save(state, folder / "pytorch_model.bin")


def write_safetensors(root: Path, states) -> None:
    for step, state in states.items():
        meta = {"step": str(step), "epoch": str(step // 8)}
        safetensors.torch.save_file(state, root / f"weights-{step}.safetensors", metadata=meta)


def write_ema(root: Path, states) -> None:
    for step, state in states.items():
        noise = {k: v + 1.0 for k, v in state.items()}
        torch.save({"model": noise, "model_ema": state, "step": step}, root / f"step-{step}.pt")


def write_gradvar(root: Path, states) -> None:
    for step, state in states.items():
        save_checkpoint(root, state, step=step, epoch=step / 8)


LAYOUTS: dict[str, tuple[Callable, dict, str]] = {  # writer, series options, prefix stripped
    "plain": (write_plain, {}, ""),
    "tutorial": (write_tutorial, {}, ""),
    "ddp": (write_ddp, {}, "module."),
    "compiled": (write_compiled, {}, "_orig_mod."),
    "lightning": (write_lightning, {}, "model."),
    "lightning-pickled-hparams": (write_lightning_pickled_hparams, {}, "model."),
    "hf-trainer": (write_hf, {}, ""),
    "hf-bin": (write_hf_bin, {}, ""),
    "safetensors": (write_safetensors, {}, ""),
    "ema": (write_ema, {"weights": "ema"}, ""),
    "gradvar": (write_gradvar, {}, ""),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    states = _states()
    out = {}
    for name, (write, _, _) in LAYOUTS.items():
        root = tmp_path_factory.mktemp(name)
        write(root, states)
        out[name] = root
    return out


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(24, 4, generator=generator), torch.randint(0, 3, (24,), generator=generator)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_layout_reads_the_same_series(runs, layout: str) -> None:
    _, options, _ = LAYOUTS[layout]
    with warnings.catch_warnings():
        warnings.simplefilter("error", CheckpointWarning)  # nothing here is un-steppable
        series = CheckpointSeries(runs[layout], **options)
    assert series.steps == list(STEPS)
    assert series.pairing == "previous"
    states = _states()
    for checkpoint in series:
        state = checkpoint.load()
        loaded = gradvar.checkpoints.load_into(_model(), state)
        for key, value in states[checkpoint.step].items():
            torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0)
    reasons = " ".join(reason for _, reason in series.skipped)
    if layout in ("plain", "lightning"):
        assert "alias" in reasons
    if layout == "plain":
        assert "optimizer" in reasons
    if layout == "lightning-pickled-hparams":
        # objects stay inert stand-ins; dict and list subclasses become plain dicts and lists
        assert series[0].metadata["not_loaded"] == f"argparse.Namespace, {__name__}._Mode"
        assert series[0].layout == "lightning"
        hparams = torch_load(series[0].path, mmap=False)["hyper_parameters"]
        assert type(hparams["config"]) is dict and hparams["config"] == {"hidden": 6, "act": "tanh"}
        assert type(hparams["layers"]) is list and hparams["layers"] == [4, 6, 3]
        assert repr(hparams["args"]) == "<not loaded: argparse.Namespace>"


def test_every_layout_gives_the_same_records(runs, tmp_path: Path) -> None:
    frames = {}
    for layout, (_, options, prefix) in LAYOUTS.items():
        out = tmp_path / f"{layout}.parquet"
        series = CheckpointSeries(runs[layout], **options)
        frames[layout] = gradvar.analyze(
            series, _model, _data(), F.cross_entropy, out=out, run="r", progress=False
        )
        meta = json.loads((tmp_path / f"{layout}.parquet.json").read_text())
        stripped = {
            c["prefix"] for c in meta["runs"]["r"]["units"]["sample"]["checkpoints"].values()
        }
        assert stripped == {prefix}, layout
        assert meta["runs"]["r"]["pairing"] == "previous"
    reference = frames["gradvar"].drop(columns=["checkpoint", "epoch"]).reset_index(drop=True)
    assert reference["metric"].eq("alpha_star_mean").any()
    for layout, frame in frames.items():
        pd.testing.assert_frame_equal(
            frame.drop(columns=["checkpoint", "epoch"]).reset_index(drop=True), reference,
            check_exact=False, rtol=1e-6, obj=layout,
        )  # fmt: skip
    assert set(frames["hf-trainer"]["checkpoint"]) == {f"checkpoint-{s}" for s in STEPS}


def test_trainer_output_dir_with_its_final_save(tmp_path: Path) -> None:
    states = _states()
    write_hf(tmp_path, states)
    safetensors.torch.save_file(states[16], tmp_path / "model.safetensors")  # save_model()
    (tmp_path / "trainer_state.json").write_text(json.dumps({"global_step": 16, "epoch": 2.0}))
    (tmp_path / "training_args.bin").write_bytes(pickle.dumps(_Opaque()))
    series = CheckpointSeries(tmp_path)
    assert [c.name for c in series] == [f"checkpoint-{s}" for s in STEPS]
    assert dict(series.skipped)[tmp_path.name] == "same weights as checkpoint-16 (step 16)"


def test_steps_come_from_names_never_from_metric_values(tmp_path: Path) -> None:
    states = _states()
    for epoch, step in enumerate(STEPS):  # only epochs and metrics in the names
        torch.save(states[step], tmp_path / f"model_epoch{epoch + 1:02d}_valacc0.{90 - epoch}.pt")
    series = CheckpointSeries(tmp_path)
    assert series.steps == [1, 2, 3] and [c.step_from for c in series] == ["epoch"] * 3
    assert "epochs" in " ".join(series.notes)
    for checkpoint, step in zip(series, STEPS):  # ordered by epoch, not by val accuracy
        torch.testing.assert_close(checkpoint.load(), states[step])


def test_unsteppable_file_is_skipped_with_a_warning_naming_it(tmp_path: Path) -> None:
    write_gradvar(tmp_path, _states())
    torch.save(_states()[8], tmp_path / "something_else.pt")  # no step, not an alias
    torch.save({"model": _states()[0]}, tmp_path / "final.pt")  # alias of step 0, by weights
    torch.save(_states()[0] | {"0.bias": torch.ones(6)}, tmp_path / "best.pt")  # alias of none
    with pytest.warns(CheckpointWarning) as caught:
        series = CheckpointSeries(tmp_path)
    warned = " ".join(str(w.message) for w in caught)
    assert "something_else.pt" in warned and "best.pt" in warned and "final.pt" not in warned
    assert series.steps == list(STEPS)
    skipped = dict(series.skipped)
    assert set(skipped) == {"something_else.pt", "final.pt", "best.pt"}
    assert "alias (final) of step-000000.pt (same weights)" in skipped["final.pt"]


def test_alias_with_unique_step_is_a_checkpoint_and_two_runs_are_refused(tmp_path: Path) -> None:
    states = _states()
    folder = tmp_path / "ckpts"
    folder.mkdir()
    torch.save(_lightning(states[0], 0), folder / "epoch=0-step=0.ckpt")
    torch.save(_lightning(states[8], 8), folder / "epoch=1-step=8.ckpt")
    torch.save(_lightning(states[16], 16), folder / "last.ckpt")  # the only file at step 16
    assert CheckpointSeries(folder).steps == list(STEPS)
    other = tmp_path / "v1"
    other.mkdir()
    shutil.copy(folder / "last.ckpt", other / "epoch=2-step=16.ckpt")
    with pytest.raises(CheckpointError, match="separate runs"):
        CheckpointSeries(tmp_path)


def test_user_prefix_and_unknown_prefix_hint(tmp_path: Path) -> None:
    for step, state in _states().items():
        torch.save({"net": _prefixed(state, "backbone."), "step": step}, tmp_path / f"s{step}.pt")
    with pytest.raises(CheckpointError, match="strip_prefix='backbone.'"):
        gradvar.analyze(tmp_path, _model, _data(), F.cross_entropy, progress=False)
    records = gradvar.analyze(
        tmp_path, _model, _data(), F.cross_entropy, progress=False, strip_prefix="backbone."
    )
    assert records["step"].dropna().unique().tolist() == list(STEPS)


def test_all_snapshot_pairing_is_refused_with_the_reason(tmp_path: Path) -> None:
    for step, state in _states().items():
        save_checkpoint(tmp_path, state, step=step, snapshot_step=step)
    series = CheckpointSeries(tmp_path)
    assert series.pairing == "metadata"
    with pytest.raises(CheckpointError, match="its own snapshot.*previous"):
        series.pairs()
    assert CheckpointSeries(tmp_path, pairing="previous").pairs()[1][1].step == 0
