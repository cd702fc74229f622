"""analyses/modern_nets in follow-up calls: baselines first, fitted runs later from the first
call's fitted_schedules.json, tables over both calls (how the GPU results were produced)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from gradvar import schedules
from gradvar.train import read_metrics

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "analyses" / "modern_nets" / "run.py"


def _run(*args: str | Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "THP_MEM_ALLOC_ENABLE": "1", "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", *map(str, args)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_followup_call_uses_the_first_calls_fit_and_combine_pairs_them(tmp_path: Path) -> None:
    first, second, both = tmp_path / "first", tmp_path / "second", tmp_path / "both"
    proc = _run("--methods", "baseline", "--lr", "constant", "--epochs", "1", "--out", first)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    fits = json.loads((first / "fitted_schedules.json").read_text())
    assert set(fits) == {"convnext-constant", "vit-constant"}

    # without the baselines or --schedules, the fitted runs are refused before any work
    refused = _run("--methods", "alpha-svrg-fitted", "--lr", "constant", "--out", tmp_path / "x")
    assert refused.returncode != 0 and "--schedules" in refused.stderr
    assert not (tmp_path / "x" / "summary.csv").exists()

    proc = _run(
        *("--methods", "alpha-svrg,alpha-svrg-fitted", "--lr", "constant", "--epochs", "1"),
        *("--schedules", first / "fitted_schedules.json", "--out", second),
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    for net in ("convnext", "vit"):
        run_dir = second / "runs" / f"{net}-alpha-svrg-fitted-constant-s0"
        schedule = schedules.from_dict(fits[f"{net}-constant"]["schedule"])
        used = [(s, v) for s, _, m, v in read_metrics(run_dir) if m == "alpha"]
        assert used and all(abs(v - float(schedule(s - 1))) < 1e-6 for s, v in used)

    proc = _run("--combine", first, second, "--out", both)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    summary = pd.read_csv(both / "summary.csv")
    assert len(summary) == 2 * 3 * 2  # nets x (baseline, linear, fitted) x seeds
    text = (both / "summary.md").read_text()
    assert text.count("fitted minus linear (paired)") == 2
    fitted_rows = [line for line in text.splitlines() if line.startswith("| alpha-svrg-fitted")]
    assert len(fitted_rows) == 2 and all("/2 lower)" in line for line in fitted_rows)
    assert (both / "loss_gap.png").stat().st_size > 0
    assert (both / "alpha_star.png").stat().st_size > 0
