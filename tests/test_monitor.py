"""gradvar.Monitor in a plain loop: its records equal gradvar.analyze over checkpoints saved at
the same steps (with AlphaSVRG snapshots, and k steps back without), it leaves training bit
for bit as it was, appends without duplicates, logs, and picks k from the measured costs."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F

import gradvar
from gradvar.checkpoints import save_checkpoint
from gradvar.errors import InvalidArgumentError
from gradvar.monitor import Monitor
from gradvar.optim import AlphaSVRG
from gradvar.records import read_records

loss_fn = F.cross_entropy
KEY = ["step", "layer", "metric", "alpha"]


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 3))


def make_data(num_batches: int = 6, batch: int = 8, seed: int = 1) -> list[tuple[Tensor, Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(batch, 5, generator=gen), torch.randint(0, 3, (batch,), generator=gen))
        for _ in range(num_batches)
    ]


PROBE_SET = make_data(2, 16, seed=5)


def run_loop(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    data: list[tuple[Tensor, Tensor]],
    steps: int,
    monitor: Monitor | None = None,
    run_dir: Path | None = None,
) -> None:
    """Train; save a checkpoint (with the snapshot it pairs with) wherever the monitor probed
    and wherever a snapshot is taken."""
    svrg = isinstance(opt, AlphaSVRG)
    if run_dir is not None:
        save_checkpoint(run_dir, model, step=0, snapshot_step=0)
    for t in range(steps):
        if svrg and opt.snapshot_due:
            opt.refresh_snapshot(model, data, loss_fn)
        x, y = data[t % len(data)]
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        if svrg:
            with opt.at_snapshot(model):
                loss_fn(model(x), y).backward()
        opt.step()
        probed = monitor.step() if monitor is not None else None
        if run_dir is not None and (probed is not None or (svrg and opt.snapshot_due)):
            paired = probed["snapshot_step"].iloc[0] if probed is not None else t + 1
            save_checkpoint(run_dir, model, step=t + 1, snapshot_step=int(paired))


def compare_with_analyze(records: pd.DataFrame, run_dir: Path) -> None:
    expected = gradvar.analyze(run_dir, make_model(), PROBE_SET, loss_fn, progress=False)
    ours = records[records["metric"] != "alpha_measured"]
    merged = ours.merge(expected, on=KEY, suffixes=("", "_analyze"), how="left")
    assert len(merged) == len(ours) and merged["value_analyze"].notna().all()
    assert (merged["snapshot_step"] == merged["snapshot_step_analyze"]).all()
    pd.testing.assert_series_equal(
        merged["value"], merged["value_analyze"], check_names=False, rtol=1e-12
    )


def test_records_equal_analyze_with_alpha_svrg_snapshots(tmp_path: Path) -> None:
    model, data = make_model(), make_data()
    opt = AlphaSVRG(
        torch.optim.SGD(model.parameters(), lr=0.1),
        "measured",
        snapshot_interval=6,
        named_parameters=model.named_parameters(),
    )
    out = tmp_path / "records.parquet"
    monitor = Monitor(model, loss_fn, PROBE_SET, every=4, out=out, optimizer=opt, run="svrg")
    torch.manual_seed(0)
    run_loop(model, opt, data, 13, monitor, tmp_path / "ckpt")
    probed = sorted(set(monitor.records.query("metric != 'alpha_measured'")["step"]))
    assert probed == [4, 8, 12]
    snaps = monitor.records.drop_duplicates("step").set_index("step")["snapshot_step"]
    assert [snaps[s] for s in probed] == [0, 6, 6]
    compare_with_analyze(monitor.records, tmp_path / "ckpt")
    measured = monitor.records[monitor.records["metric"] == "alpha_measured"]
    assert sorted(set(measured["step"])) == list(range(12))  # steps 0..11 logged by probe 12
    assert set(measured["layer"]) == {n for n, _ in model.named_parameters()}
    on_disk = read_records(out)
    pd.testing.assert_frame_equal(on_disk, monitor.records)


def test_records_equal_analyze_against_the_weights_k_steps_back(tmp_path: Path) -> None:
    model, data = make_model(), make_data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    monitor = Monitor(model, loss_fn, PROBE_SET, every=3, unit=4, run="sgd")
    torch.manual_seed(0)
    run_loop(model, opt, data, 10, monitor, tmp_path / "ckpt")
    steps = monitor.records.drop_duplicates("step").set_index("step")["snapshot_step"]
    assert steps.to_dict() == {3: 0, 6: 3, 9: 6}
    assert set(monitor.records["unit"]) == {"4"}
    expected = gradvar.analyze(tmp_path / "ckpt", make_model(), PROBE_SET, loss_fn, unit=4)
    merged = monitor.records.merge(expected, on=KEY, suffixes=("", "_analyze"))
    assert len(merged) == len(monitor.records)
    pd.testing.assert_series_equal(
        merged["value"], merged["value_analyze"], check_names=False, rtol=1e-12
    )


def test_monitor_leaves_training_bit_for_bit_unchanged() -> None:
    data = make_data()
    models = []
    for with_monitor in (False, True):
        model = make_model()
        opt = AlphaSVRG(torch.optim.SGD(model.parameters(), lr=0.1), 0.5, snapshot_interval=6)
        monitor = Monitor(model, loss_fn, PROBE_SET, every=2, optimizer=opt)
        torch.manual_seed(3)
        run_loop(model, opt, data, 9, monitor if with_monitor else None)
        models.append(model)
    for p, q in zip(models[0].parameters(), models[1].parameters()):
        assert torch.equal(p, q)


def test_rerun_replaces_its_rows_and_keeps_other_runs(tmp_path: Path) -> None:
    out = tmp_path / "records.csv"
    for run in ("a", "b", "a"):
        model = make_model()
        monitor = Monitor(model, loss_fn, PROBE_SET, every=2, out=out, run=run)
        run_loop(model, torch.optim.SGD(model.parameters(), lr=0.1), make_data(), 4, monitor)
    frame = read_records(out)
    counts = frame.groupby(["run", "step"]).size()
    assert set(counts.index) == {("a", 2), ("a", 4), ("b", 2), ("b", 4)}
    assert counts.nunique() == 1  # the second run "a" replaced its rows, no duplicates


def test_log_gets_headline_metrics_and_auto_every_keeps_the_overhead(monkeypatch) -> None:
    clock = [0.0]
    monkeypatch.setattr("gradvar.monitor.time.perf_counter", lambda: clock[0])
    model = make_model()
    logged: list[tuple[dict, int]] = []
    monitor = Monitor(model, loss_fn, PROBE_SET, log=lambda m, s: logged.append((dict(m), s)))
    real_run = monitor.probe.run

    def slow_run(*args, **kwargs):
        clock[0] += 0.5  # every probe costs 0.5 s
        return real_run(*args, **kwargs)

    monkeypatch.setattr(monitor.probe, "run", slow_run)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    data = make_data()
    for t in range(300):
        clock[0] += 0.01  # every training step costs 0.01 s
        x, y = data[t % len(data)]
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
        monitor.step()
    # First probe at 20 (0.2 s of training, 0.5 s probing); the next when 2 probes fit in 10 %
    # of the training time: (1.0 s / 0.1 − 0.2 s) / 0.01 s = 980 steps later.
    assert [s for _, s in logged] == [20]
    first = logged[0][0]
    assert first["gradvar/every"] in (980, 981)  # ceil of a float: 980 up to rounding
    assert first["gradvar/overhead"] == pytest.approx(2.5)
    for _ in range(300, 1100):
        clock[0] += 0.01
        monitor.step()
    assert [s for _, s in logged] == [20, 1000]
    assert logged[1][0]["gradvar/overhead"] == pytest.approx(0.1)  # 1.0 s / 10 s
    assert monitor.every in (500, 501)  # steady state: 0.5 s / (0.1 × 0.01 s)
    assert {"gradvar/alpha_star_layer", "gradvar/m2_total_variance"} <= set(first)
    assert "gradvar/vr_variance_ratio@1.0" in first


def test_bad_arguments_name_the_value() -> None:
    model = make_model()
    with pytest.raises(InvalidArgumentError, match="every=0"):
        Monitor(model, loss_fn, PROBE_SET, every=0)
    with pytest.raises(InvalidArgumentError, match="max_overhead"):
        Monitor(model, loss_fn, PROBE_SET, max_overhead=1.5)
    with pytest.raises(InvalidArgumentError, match="empty"):
        Monitor(model, loss_fn, [])


def test_readme_monitor_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import re

    from gradvar.plots import alpha_star_over_steps
    from gradvar.zoo import build_model, load_dataset

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "Monitor(" in b)
    monkeypatch.chdir(tmp_path)
    x, y = load_dataset("digits", n=256).tensors
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=64)
    model = build_model("mlp2", in_features=64, num_classes=10, seed=0)
    opt = AlphaSVRG(torch.optim.SGD(model.parameters(), lr=0.1), "measured")
    namespace = {"model": model, "loader": loader, "opt": opt, "x": x, "y": y, "epochs": 6}
    exec("import gradvar, torch\nimport torch.nn.functional as F\n" + block, namespace)  # noqa: S102
    records = read_records(tmp_path / "records.parquet")
    assert {"alpha_star_layer", "alpha_measured"} <= set(records["metric"])
    alpha_star_over_steps(records, metric="alpha_measured")


def test_callbacks_import_lazily_and_name_the_missing_extra(monkeypatch) -> None:
    import importlib
    import sys

    import gradvar.callbacks as callbacks

    assert "lightning" not in dir(callbacks)
    real = importlib.import_module

    def missing(name: str, *args):
        if name == "gradvar.callbacks.lightning":
            raise ModuleNotFoundError("No module named 'lightning'", name="lightning")
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", missing)
    monkeypatch.delitem(callbacks.__dict__, "LightningMonitor", raising=False)
    monkeypatch.delitem(sys.modules, "gradvar.callbacks.lightning", raising=False)
    with pytest.raises(ImportError, match=r"pip install 'gradvar\[callbacks\]'"):
        callbacks.LightningMonitor  # noqa: B018
