"""analyze() and the CLI on a real (tiny) training run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

import gradvar
from gradvar.checkpoints import CheckpointSeries
from gradvar.cli import main
from gradvar.errors import CheckpointError
from gradvar.probe import Probe
from gradvar.records import read_records
from gradvar.zoo import build_model, load_dataset

DATA = {"name": "synthetic"}
N_PROBE = 96


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "mlp2-synthetic"
    main(
        "train --model mlp2 --data synthetic --n 256 --lr 0.2 --batch-size 32 --epochs 2 "
        f"--checkpoint-every 4 --quiet --out {out}".split()
    )
    return out


def _api_records(run_dir: Path, out: Path | None = None, **kw) -> pd.DataFrame:
    series = CheckpointSeries(run_dir)
    dataset = load_dataset("synthetic", n=N_PROBE)
    x, y = dataset.tensors
    spec = series.run_config["model"]
    return gradvar.analyze(
        series,
        lambda: build_model(spec["name"], **spec["kwargs"]),
        (x, y),
        F.cross_entropy,
        out=out,
        run="r",
        progress=False,
        **kw,
    )


def test_cli_and_api_give_identical_records(run_dir: Path, tmp_path: Path, capsys) -> None:
    api = _api_records(run_dir)
    main(
        [
            "analyze",
            str(run_dir),
            "--n",
            str(N_PROBE),
            "--run",
            "r",
            "--quiet",
            "--out",
            str(tmp_path / "cli.parquet"),
        ]
    )
    cli = read_records(tmp_path / "cli.parquet")
    pd.testing.assert_frame_equal(api.reset_index(drop=True), cli.reset_index(drop=True))
    assert "routes: linear " in capsys.readouterr().out  # how the gradients were computed
    series = CheckpointSeries(run_dir)
    assert sorted(api["step"].unique()) == series.steps
    # the pairing is recorded; snapshots pair with themselves (rho = 1 there)
    at_snapshot = api[(api.step == api.snapshot_step) & (api.metric == "rho_mean")]
    assert not at_snapshot.empty and (at_snapshot["value"] - 1).abs().max() < 1e-9
    meta = (tmp_path / "cli.parquet.json").read_text()
    assert f'"pairing": "{series.pairing}"' in meta and series.pairing != "none"


def test_interrupted_analysis_resumes_without_duplicates(
    run_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    out = tmp_path / "records.parquet"
    full = _api_records(run_dir)
    calls = {"n": 0}
    original = Probe.run

    def flaky(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt  # the user hits Ctrl-C during the 4th checkpoint
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Probe, "run", flaky)
    with pytest.raises(KeyboardInterrupt):
        _api_records(run_dir, out)
    partial = read_records(out)
    assert partial["checkpoint"].nunique() == 3
    monkeypatch.setattr(Probe, "run", original)
    resumed = _api_records(run_dir, out)
    assert not resumed.duplicated(["checkpoint", "layer", "metric", "alpha"]).any()
    pd.testing.assert_frame_equal(
        resumed.reset_index(drop=True), full.reset_index(drop=True), check_exact=False
    )
    on_disk = read_records(out)
    assert len(on_disk) == len(full)


def test_bad_checkpoints_fail_by_name_before_any_work(run_dir: Path, tmp_path: Path) -> None:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(run_dir, broken)
    victim = sorted(broken.glob("step-*.pt"))[2]
    victim.write_bytes(victim.read_bytes()[:100])  # truncated
    with pytest.raises(CheckpointError, match=victim.name):
        _api_records(broken, tmp_path / "out.parquet")
    assert not (tmp_path / "out.parquet").exists()

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    evil_dir = tmp_path / "evil"
    shutil.copytree(run_dir, evil_dir)
    target = sorted(evil_dir.glob("step-*.pt"))[1]
    state = torch.load(target, weights_only=True)
    state["payload"] = Evil()
    torch.save(state, target)
    with pytest.raises(CheckpointError, match=target.name):
        _api_records(evil_dir, tmp_path / "evil.parquet")
    assert not (tmp_path / "pwned").exists()

    series = CheckpointSeries(run_dir)
    dataset = load_dataset("synthetic", n=N_PROBE)
    wrong = lambda: build_model("mlp4", in_features=20, num_classes=3)  # noqa: E731
    with pytest.raises(CheckpointError, match="missing key"):
        gradvar.analyze(
            series,
            wrong,
            dataset.tensors,
            F.cross_entropy,
            out=tmp_path / "wrong.parquet",
            progress=False,
        )
    assert not (tmp_path / "wrong.parquet").exists()


def test_cli_errors_exit_2_with_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, "-m", "gradvar.cli", "analyze", str(tmp_path / "nope"), "--out", "x"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "does not exist" in lines[0], proc.stderr
    helped = subprocess.run(
        [sys.executable, "-m", "gradvar.cli", "analyze", "--help"], capture_output=True, text=True
    )
    assert helped.returncode == 0 and "--snapshot-interval" in helped.stdout


def test_fit_and_plot_commands(run_dir: Path, tmp_path: Path) -> None:
    records = tmp_path / "r.parquet"
    main(["analyze", str(run_dir), "--n", "64", "--quiet", "--out", str(records)])
    main(["fit", str(records), "--kind", "linear", "--out", str(tmp_path / "s.json")])
    schedule = gradvar.schedules.load(tmp_path / "s.json")
    assert schedule.kind == "linear"
    run_total = CheckpointSeries(run_dir).run_config["total_steps"]
    saved = json.loads((tmp_path / "s.json").read_text())
    assert saved["total_steps"] == run_total == 16  # the run's length, not a rounded-up one
    main(["plot", str(records), "--out", str(tmp_path / "fig")])
    assert (tmp_path / "fig" / "report.md").exists()
    assert (tmp_path / "fig" / "alpha_star_over_steps.png").stat().st_size > 1000


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "gradvar.cli", "demo", "--out", str(tmp_path), "--quiet"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "demo done" in proc.stdout
    records = read_records(tmp_path / "records.parquet")
    alpha = records[(records.metric == "alpha_star_mean") & (records.layer == "__all__")]
    off = alpha[alpha.step != alpha.snapshot_step]
    assert off["value"].min() < 0.9  # alpha* decays away from the snapshots (the sawtooth)
    assert (tmp_path / "report.md").exists() and (tmp_path / "schedule.json").exists()


def test_second_unit_into_the_same_file_is_not_skipped(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "both.parquet"
    seen = []
    per_example = _api_records(run_dir, out)
    both = _api_records(run_dir, out, unit=8, on_result=lambda r, c, s: seen.append(c.step))
    assert set(both["unit"]) == {"sample", "8"}
    batch_rows = both[both.unit == "8"]
    assert batch_rows["checkpoint"].nunique() == per_example["checkpoint"].nunique()
    assert len(both) == len(per_example) + len(batch_rows)
    assert seen == CheckpointSeries(run_dir).steps  # the hook saw every probed checkpoint
    again = _api_records(run_dir, out, unit=8)  # both units done: nothing re-run
    assert len(again) == len(both)
    assert oct(out.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
