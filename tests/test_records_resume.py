"""Records that never lose or go stale: concurrent writers, resume keys, refusals."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradvar
from gradvar.checkpoints import save_checkpoint
from gradvar.errors import StaleRecordsError
from gradvar.records import read_records


def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))


def _run(root: Path, seed: int, steps=(0, 4, 8, 12, 16, 20)) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for step in steps:
        torch.manual_seed(seed * 1000 + step)
        save_checkpoint(root, _model(), step=step)
    return root


def _data(n: int = 20, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g)


def _analyze(run_dir: Path, out: Path, **kw):
    kw.setdefault("data", _data())
    data = kw.pop("data")
    return gradvar.analyze(run_dir, _model, data, F.cross_entropy, out=out, progress=False, **kw)


_WRITER = textwrap.dedent(
    """
    import sys, torch, torch.nn.functional as F
    from torch import nn
    import gradvar
    torch.set_num_threads(1)
    import pathlib, time
    run_dir, ready, outs = sys.argv[1], pathlib.Path(sys.argv[2]), sys.argv[3:]
    ready.touch()  # start together, so the two writers' updates interleave
    while len(list(ready.parent.glob("ready-*"))) < 2:
        time.sleep(0.01)
    def model():
        return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
    g = torch.Generator().manual_seed(0)
    data = (torch.randn(20, 4, generator=g), torch.randint(0, 3, (20,), generator=g))
    for out in outs:
        gradvar.analyze(run_dir, model, data, F.cross_entropy, out=out, progress=False)
    """
)


def test_concurrent_analyses_of_different_runs_keep_both(tmp_path: Path) -> None:
    steps = tuple(range(0, 40, 4))
    runs = [_run(tmp_path / "a" / "run", 1, steps), _run(tmp_path / "b" / "run2", 2, steps)]
    outs = [str(tmp_path / f"round{i}.parquet") for i in range(3)]  # three rounds, one file each
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "PYTHONWARNINGS": "ignore"}
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(r), str(tmp_path / f"ready-{i}"), *outs],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i, r in enumerate(runs)
    ]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    for out in outs:
        records = read_records(out)
        per_run = records.groupby("run")["checkpoint"].nunique().to_dict()
        assert per_run == {"run": len(steps), "run2": len(steps)}, out
        assert not records.duplicated(["run", "checkpoint", "layer", "metric", "alpha"]).any()
        meta = json.loads(Path(out + ".json").read_text())
        assert set(meta["runs"]) == {"run", "run2"}
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert not leftovers


def test_changed_settings_refuse_and_say_how(tmp_path: Path) -> None:
    run_dir = _run(tmp_path / "run", 1, steps=(0, 4, 8))
    out = tmp_path / "r.parquet"
    first = _analyze(run_dir, out)
    again = _analyze(run_dir, out)  # same everything: nothing recomputed, same rows
    assert len(again) == len(first)
    for change, match in [
        ({"data": _data(n=21)}, r"n: 20 -> 21"),
        ({"data": _data(seed=5)}, r"data: "),
        ({"seed": 3}, r"seed: 0 -> 3"),
        ({"snapshot_interval": 8}, r"pairing: \"previous\" -> \"interval:8\""),
        ({"layers": "module"}, r"layers: "),
        ({"batchnorm": "replace"}, r"batchnorm: "),
    ]:
        with pytest.raises(StaleRecordsError, match=match) as info:
            _analyze(run_dir, out, **change)
        assert "--restart" in str(info.value) and "--run" in str(info.value)
    redone = _analyze(run_dir, out, resume=False, data=_data(seed=5))  # overwrite: this run only
    assert len(redone) == len(first) and not redone["value"].equals(first["value"])


def test_changed_checkpoint_file_is_recomputed(tmp_path: Path) -> None:
    run_dir = _run(tmp_path / "run", 1, steps=(0, 4, 8))
    out = tmp_path / "r.parquet"
    seen: list[int] = []
    _analyze(run_dir, out)
    torch.manual_seed(77)
    save_checkpoint(run_dir, _model(), step=8)  # retrained: new weights at step 8
    after = _analyze(run_dir, out, on_result=lambda r, c, s: seen.append(c.step))
    assert seen == [8]
    fresh = _analyze(run_dir, None)
    cols = ["checkpoint", "layer", "metric", "alpha", "value"]
    merged = after[cols].merge(fresh[cols], on=cols[:-1], suffixes=("", "_fresh"))
    assert len(merged) == len(fresh)
    assert ((merged["value"] - merged["value_fresh"]).abs().fillna(0) < 1e-9).all()


def test_second_run_folder_with_a_taken_name_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "r.parquet"
    _analyze(_run(tmp_path / "x" / "run", 1, steps=(0, 4)), out)
    with pytest.raises(StaleRecordsError, match="two run folders share the name"):
        _analyze(_run(tmp_path / "y" / "run", 2, steps=(0, 4)), out)
    both = _analyze(tmp_path / "y" / "run", out, run="run-y")
    assert set(both["run"]) == {"run", "run-y"}


def test_a_moved_run_folder_is_the_same_run(tmp_path: Path) -> None:
    import shutil

    out = tmp_path / "r.parquet"
    first = _analyze(_run(tmp_path / "old" / "run", 1, steps=(0, 4, 8)), out)
    shutil.move(tmp_path / "old" / "run", tmp_path / "new-run")
    seen: list[int] = []
    again = _analyze(tmp_path / "new-run", out, run="run", on_result=lambda r, c, s: seen.append(1))
    assert seen == [] and len(again) == len(first)  # recognised by content: nothing recomputed


def test_rows_without_a_settings_record_are_not_trusted(tmp_path: Path) -> None:
    run_dir = _run(tmp_path / "run", 1, steps=(0, 4))
    out = tmp_path / "r.parquet"
    _analyze(run_dir, out)
    (tmp_path / "r.parquet.json").unlink()
    with pytest.raises(StaleRecordsError, match="no record of the settings"):
        _analyze(run_dir, out)
