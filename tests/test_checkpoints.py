"""Checkpoint series: round trips, step parsing, ordering, refusal of foreign or damaged files,
compatibility checks and snapshot pairing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import safetensors.torch
import torch
from torch import nn

from gradvar.checkpoints import (
    Checkpoint,
    CheckpointSeries,
    check_compatible,
    load_into,
    read_run_config,
    save_checkpoint,
    write_run_config,
)
from gradvar.errors import CheckpointError, CheckpointWarning, InvalidArgumentError


def _model(seed: int = 0, hidden: int = 5) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, hidden), nn.ReLU(), nn.Linear(hidden, 2))


def _assert_same_weights(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    expected = model.state_dict()
    assert set(state) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=0)


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_round_trip_keeps_weights_and_fields(tmp_path: Path, fmt: str) -> None:
    model = _model()
    path = save_checkpoint(tmp_path, model, step=123, epoch=2.5, snapshot_step=100, format=fmt)
    assert path.name == f"step-000123.{fmt}"
    checkpoint = Checkpoint.open(path)
    assert (checkpoint.step, checkpoint.epoch, checkpoint.snapshot_step) == (123, 2.5, 100)
    _assert_same_weights(model, checkpoint.load())
    fresh = load_into(_model(seed=1), checkpoint)
    _assert_same_weights(model, fresh.state_dict())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left


def test_optional_fields_absent_and_optimizer_kept(tmp_path: Path) -> None:
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    save_checkpoint(tmp_path, model, step=7, optimizer=optimizer)
    checkpoint = CheckpointSeries(tmp_path)[0]
    assert checkpoint.epoch is None and checkpoint.snapshot_step is None
    state = checkpoint.optimizer_state()
    assert state is not None
    torch.testing.assert_close(
        state["state"][0]["momentum_buffer"], optimizer.state_dict()["state"][0]["momentum_buffer"]
    )
    with pytest.raises(InvalidArgumentError, match="format='pt'"):
        save_checkpoint(tmp_path, model, step=8, optimizer=optimizer, format="safetensors")


def test_series_orders_by_step_and_parses_plain_names(tmp_path: Path) -> None:
    models = {step: _model(seed=step) for step in (1200, 30, 400)}
    torch.save(models[1200].state_dict(), tmp_path / "ckpt-1200.pt")
    torch.save(models[30].state_dict(), tmp_path / "step_30.pt")
    safetensors.torch.save_file(
        dict(models[400].state_dict()), tmp_path / "checkpoint-400.safetensors"
    )
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    series = CheckpointSeries(tmp_path)
    assert series.steps == [30, 400, 1200]
    assert len(series) == 3 and [c.step for c in series] == [30, 400, 1200]
    assert series[-1].name == "ckpt-1200.pt" and [c.step for c in series[:2]] == [30, 400]
    for checkpoint in series:
        _assert_same_weights(models[checkpoint.step], checkpoint.load())
    # no snapshot information: each checkpoint against the previous one, and it says so
    assert series.pairing == "previous" and "previous" in series.pairing_note
    assert [series.snapshot_for(c).step for c in series] == [30, 30, 400]


def test_step_field_wins_over_name_and_common_dict_layouts(tmp_path: Path) -> None:
    model = _model()
    torch.save({"model_state_dict": model.state_dict(), "epoch": 3, "step": 9}, tmp_path / "a.pt")
    torch.save({"state_dict": model.state_dict(), "step": 50}, tmp_path / "step-7.pth")
    series = CheckpointSeries(tmp_path)
    assert series.steps == [9, 50]
    assert series[0].epoch == 3.0 and series[0].metadata["epoch"] == 3
    assert series[1].step_from == "metadata:step"
    for checkpoint in series:
        _assert_same_weights(model, checkpoint.load())


def test_files_without_a_step_are_skipped_with_a_warning(tmp_path: Path) -> None:
    torch.save(_model(1).state_dict(), tmp_path / "final.pt")
    torch.save(_model(2).state_dict(), tmp_path / "mystery.pt")
    torch.save(_model().state_dict(), tmp_path / "step-1.pt")
    torch.save(_model(3).state_dict(), tmp_path / "step-2.pt")
    with pytest.warns(CheckpointWarning, match=r"mystery\.pt") as caught:
        series = CheckpointSeries(tmp_path)
    assert any("final.pt" in str(w.message) for w in caught)
    assert series.steps == [1, 2]
    assert {name for name, _ in series.skipped} == {"final.pt", "mystery.pt"}


def test_duplicate_steps_are_refused_unless_identical(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, _model(), step=5)
    save_checkpoint(tmp_path, _model(), step=5, format="safetensors")
    save_checkpoint(tmp_path, _model(seed=1), step=6)
    series = CheckpointSeries(tmp_path)  # the same weights twice: one is kept
    assert series.steps == [5, 6] and len(series.skipped) == 1
    save_checkpoint(tmp_path, _model(seed=2), step=6, format="safetensors")
    with pytest.raises(CheckpointError, match="same step 6 with different weights"):
        CheckpointSeries(tmp_path)


def test_missing_and_empty_folders(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        CheckpointSeries(tmp_path / "nope")
    (tmp_path / "run.json").write_text("{}")
    with pytest.raises(CheckpointError, match=r"no checkpoint files.*run\.json"):
        CheckpointSeries(tmp_path)


def _write_marker(path: str) -> None:
    Path(path).write_text("pickled code ran")


class _Payload:
    """Pickles to a call of _write_marker: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):  # noqa: ANN204
        return (_write_marker, (self.marker,))


def test_pickled_payload_beside_the_weights_is_never_run(tmp_path: Path) -> None:
    """An object pickled next to the weights (as Lightning's hyper_parameters are) becomes an
    inert stand-in: the weights load, the payload's callable is neither imported nor called."""
    marker = tmp_path / "marker.txt"
    runs = tmp_path / "run"
    runs.mkdir()
    state = dict(_model().state_dict())
    torch.save({"model": state, "step": 3, "note": _Payload(marker)}, runs / "step-000003.pt")
    series = CheckpointSeries(runs)
    assert series.steps == [3]
    assert series[0].metadata["not_loaded"] == f"{__name__}._write_marker"
    loaded = Checkpoint(3, None, None, runs / "step-000003.pt").load()
    for key, value in state.items():
        torch.testing.assert_close(loaded[key], value, rtol=0, atol=0)
    assert not marker.exists()
    # The payload is real: an unrestricted load would have run it.
    torch.load(runs / "step-000003.pt", weights_only=False)
    assert marker.exists()


def test_pickled_payload_among_the_weights_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "marker.txt"
    runs = tmp_path / "run"
    runs.mkdir()
    torch.save({**_model().state_dict(), "evil": _Payload(marker)}, runs / "step-000003.pt")
    with pytest.raises(CheckpointError, match=r"step-000003\.pt.*non-tensor entries \[evil\]"):
        CheckpointSeries(runs)
    with pytest.raises(CheckpointError, match="_write_marker.*never executes pickled code"):
        Checkpoint(3, None, None, runs / "step-000003.pt").load()
    assert not marker.exists()


def test_whole_module_pickle_is_refused(tmp_path: Path) -> None:
    torch.save(_model(), tmp_path / "model-1.pt")
    with pytest.raises(CheckpointError, match=r"model-1\.pt.*state_dict\(\)"):
        CheckpointSeries(tmp_path)


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_truncated_file_is_named(tmp_path: Path, fmt: str) -> None:
    path = save_checkpoint(tmp_path, _model(hidden=64), step=1, format=fmt)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=path.name):
        CheckpointSeries(tmp_path)
    with pytest.raises(CheckpointError, match=path.name):
        Checkpoint(1, None, None, path).load()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_garbage_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "step-2.pt").write_bytes(b"\x80\x04not a checkpoint at all")
    with pytest.raises(CheckpointError, match=r"step-2\.pt"):
        CheckpointSeries(tmp_path)


def test_mismatched_keys_are_listed(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path, _model(), step=0)
    other = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2), nn.Linear(2, 2))
    with pytest.raises(CheckpointError) as info:
        load_into(other, path)
    message = str(info.value)
    assert "1 missing key(s) [3.weight, 3.bias]" not in message  # two keys are missing
    assert "2 missing key(s) [3.weight, 3.bias]" in message
    assert "0 unexpected" in message and "step-000000.pt" in message


def test_long_key_lists_are_truncated() -> None:
    model = nn.Sequential(*[nn.Linear(2, 2) for _ in range(20)])
    with pytest.raises(CheckpointError, match=r"40 missing key\(s\) .*and 30 more"):
        check_compatible(model, {}, "x.pt")


def test_ddp_prefix_gets_a_hint_and_load_into_strips_it() -> None:
    model = _model()
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match="prefix 'module.'"):
        check_compatible(model, state)
    _assert_same_weights(model, load_into(_model(seed=4), state).state_dict())


def test_shape_mismatch_lists_name_and_both_shapes(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path, _model(hidden=5), step=0)
    target = _model(hidden=6)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CheckpointError) as info:
        load_into(target, path)
    assert "0.weight: checkpoint [5, 3] vs model [6, 3]" in str(info.value)
    assert "2.weight: checkpoint [2, 5] vs model [2, 6]" in str(info.value)
    _assert_same_weights(target, before)  # nothing was loaded


def _series_dir(tmp_path: Path, steps: list[int], snapshot_of=None) -> Path:
    for step in steps:
        snapshot = snapshot_of(step) if snapshot_of else None
        save_checkpoint(tmp_path, _model(seed=step), step=step, snapshot_step=snapshot)
    return tmp_path


def test_pairing_from_metadata(tmp_path: Path) -> None:
    series = CheckpointSeries(_series_dir(tmp_path, [0, 5, 10, 12], lambda s: (s // 10) * 10))
    assert series.pairing == "metadata"
    assert [series.snapshot_for(c).step for c in series] == [0, 0, 10, 10]
    assert series.snapshot_for(12).step == 10


def test_pairing_from_interval_argument_and_run_json(tmp_path: Path) -> None:
    _series_dir(tmp_path, [0, 3, 4, 7, 8, 9])
    series = CheckpointSeries(tmp_path, snapshot_interval=4)
    assert series.pairing == "interval:4"
    assert [p.step for _, p in series.pairs()] == [0, 0, 4, 4, 8, 8]
    write_run_config(tmp_path, {"snapshot_interval": 4})
    assert CheckpointSeries(tmp_path).pairing == "interval:4"
    assert CheckpointSeries(tmp_path).run_config == {"snapshot_interval": 4}
    # an explicit argument overrides run.json
    series = CheckpointSeries(tmp_path, snapshot_interval=8)
    assert [p.step for _, p in series.pairs()] == [0, 0, 0, 0, 8, 8]


def test_pairing_explicit_file(tmp_path: Path) -> None:
    run = _series_dir(tmp_path / "run", [1, 2, 3], lambda s: 0)
    anchor = save_checkpoint(tmp_path, _model(seed=99), step=0, format="safetensors")
    series = CheckpointSeries(run, snapshot=anchor)
    assert series.pairing == f"explicit:{anchor}"
    assert all(series.snapshot_for(c).path == anchor for c in series)
    with pytest.raises(InvalidArgumentError, match="not both"):
        CheckpointSeries(run, snapshot=anchor, snapshot_interval=2)


def test_missing_snapshot_on_disk_is_a_clear_error(tmp_path: Path) -> None:
    series = CheckpointSeries(_series_dir(tmp_path, [0, 5, 12], lambda s: (s // 10) * 10))
    assert series.snapshot_for(5).step == 0
    with pytest.raises(CheckpointError, match="no checkpoint at step 10"):
        series.snapshot_for(series[-1])
    with pytest.raises(CheckpointError, match="no checkpoint at step 10"):
        series.pairs()


def test_partial_metadata_needs_a_rule(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, _model(), step=0, snapshot_step=0)
    save_checkpoint(tmp_path, _model(), step=1)
    with pytest.raises(CheckpointError, match=r"step-000001\.pt"):
        CheckpointSeries(tmp_path)
    assert CheckpointSeries(tmp_path, snapshot_interval=1).pairing == "interval:1"


def test_run_config_round_trip_and_errors(tmp_path: Path) -> None:
    config = {"model": {"name": "mlp4", "kwargs": {"in_features": 64}}, "seed": 3}
    write_run_config(tmp_path, config)
    assert read_run_config(tmp_path) == config
    assert json.loads((tmp_path / "run.json").read_text()) == config
    assert read_run_config(tmp_path / "elsewhere") == {}
    with pytest.raises(InvalidArgumentError, match="JSON"):
        write_run_config(tmp_path, {"bad": object()})
    assert read_run_config(tmp_path) == config  # the failed write left the old file
    (tmp_path / "run.json").write_text("{broken")
    with pytest.raises(CheckpointError, match="run.json"):
        read_run_config(tmp_path)


def test_interrupted_write_leaves_previous_file(tmp_path: Path, monkeypatch) -> None:
    path = save_checkpoint(tmp_path, _model(seed=1), step=4)
    original = path.read_bytes()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, _model(seed=2), step=4)
    assert path.read_bytes() == original
    assert sorted(os.listdir(tmp_path)) == ["step-000004.pt"]
