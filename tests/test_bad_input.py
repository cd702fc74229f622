"""Bad input gets a named gradvar error (API) and one line with exit status 2 (CLI)."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradvar
from gradvar._validation import check_probe_data
from gradvar.checkpoints import save_checkpoint
from gradvar.cli import main
from gradvar.errors import CheckpointError, InvalidArgumentError
from gradvar.records import read_records

FACTORIES = textwrap.dedent(
    """
    import torch
    from torch import nn

    def build():
        return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))

    def _xy(n=40):
        g = torch.Generator().manual_seed(0)
        return torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g)

    def good(split="train", n=None, seed=0):
        x, y = _xy()
        return (x[:n], y[:n]) if n else (x, y)

    def no_arguments():
        return _xy()

    def labels_out_of_range():
        x, y = _xy()
        y[3] = 7
        return x, y

    def float_labels():
        x, y = _xy()
        return x, y.float()

    def float64_inputs():
        x, y = _xy()
        return x.double(), y

    def empty():
        return torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)

    def with_nan():
        x, y = _xy()
        x[2] = float("nan")
        return x, y

    def broken(n=None):
        raise RuntimeError("the data server is down")

    def not_data():
        return [1, 2, 3]
    """
)


def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))


def _xy(n: int = 40):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("project")
    (root / "factories.py").write_text(FACTORIES)
    for step in (0, 4, 8):
        torch.manual_seed(step)
        save_checkpoint(root / "run", _model(), step=step)
    return root


# ------------------------------------------------------------------------------------- API
@pytest.mark.parametrize(
    "data, unit, match",
    [
        ((torch.randn(8, 4), torch.tensor([0, 1, 2, 3, 0, 1, 2, 0])), None, r"\[0, 3\).*\[3\]"),
        ((torch.randn(8, 4), torch.zeros(8)), None, r"float32 class labels.*y\.long\(\)"),
        ((torch.randn(8, 4), torch.zeros(8, dtype=torch.int32)), None, r"int32.*y\.long\(\)"),
        ((torch.randn(8, 4).double(), torch.zeros(8, dtype=torch.long)), None, r"float64.*float32"),
        ([], None, "data is empty"),
        ((torch.randn(1, 4), torch.zeros(1, dtype=torch.long)), None, "at least 2 samples"),
        ((torch.randn(8, 4), torch.zeros(8, dtype=torch.long)), 16, "unit=16 is larger"),
        ((torch.randn(8, 4), torch.zeros(8, dtype=torch.long)), 5, "1 mini-batches of 5"),
        ((torch.randn(8, 4), torch.zeros(7, dtype=torch.long)), None, "first .example. dim"),
        ([torch.randn(3, 4)], None, "not an \\(inputs, targets\\) pair"),
    ],
)
def test_bad_data_gets_a_named_error_before_any_work(data, unit, match) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        check_probe_data(_model(), F.cross_entropy, data, unit_size=unit)
    with pytest.raises(InvalidArgumentError, match=match):
        gradvar.Probe(_model(), F.cross_entropy, unit=unit or "sample").run(data)


def test_good_data_passes_and_ignore_index_is_allowed() -> None:
    x, y = _xy()
    y[0] = -100
    assert check_probe_data(_model(), F.cross_entropy, (x, y)) == 40
    probabilities = torch.softmax(torch.randn(40, 3), dim=1)  # soft targets of the output shape
    assert check_probe_data(_model(), F.cross_entropy, (x, probabilities)) == 40
    assert check_probe_data(_model(), F.mse_loss, (x, torch.randn(40, 3))) == 40


def test_analyze_checks_data_before_touching_checkpoints(project: Path, tmp_path: Path) -> None:
    x, y = _xy()
    with pytest.raises(InvalidArgumentError, match="class labels"):
        gradvar.analyze(project / "run", _model, (x, y + 5), F.cross_entropy,
                        out=tmp_path / "o.parquet", progress=False)  # fmt: skip
    assert not (tmp_path / "o.parquet").exists()


def test_text_named_pt_is_called_a_text_file(tmp_path: Path) -> None:
    (tmp_path / "step-1.pt").write_text("these are my notes, not weights\n" * 4)
    with pytest.raises(CheckpointError, match="text file"):
        gradvar.CheckpointSeries(tmp_path)


# ------------------------------------------------------------------------------------- CLI
def _cli(monkeypatch, capsys, project: Path, *args: str) -> tuple[int, str, str]:
    monkeypatch.chdir(project)
    monkeypatch.setattr(sys, "argv", ["gradvar", *args])
    code = 0
    try:
        main()  # argv from sys.argv: exactly what the console script does
    except SystemExit as stop:
        code = int(stop.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


ANALYZE = ["analyze", "run", "--model", "./factories.py:build", "--quiet", "--out", "r.parquet"]


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--data", "./factories.py:labels_out_of_range"], "class labels must lie in [0, 3)"),
        (["--data", "./factories.py:float_labels"], "y.long()"),
        (["--data", "./factories.py:float64_inputs"], "float64"),
        (["--data", "./factories.py:empty"], "empty"),
        (["--data", "./factories.py:good", "--n", "1"], "at least 2"),
        (["--data", "./factories.py:good", "--n", "32", "--unit", "64"], "unit=64 is larger"),
        (["--data", "./factories.py:good", "--n", "500"], "--n 500 asks for more examples"),
        (["--data", "./factories.py:broken"], "raised RuntimeError: the data server is down"),
        (["--data", "./factories.py:not_data"], "returned a list"),
        (["--data", "./missing.py:load"], "no Python file"),
        (["--data", "./factories.py:nope"], "has no attribute 'nope'"),
        (["--data", "./factories.py:with_nan"], "--skip-nonfinite"),
        (["--data", "./factories.py:good", "--unit", "ten"], "--unit must be"),
        (["--data", "./factories.py:good", "--pairing", "metadata"], "record no snapshot_step"),
    ],
)
def test_cli_user_errors_are_one_line_with_status_2(
    monkeypatch, capsys, project: Path, extra, match
) -> None:
    code, _, err = _cli(monkeypatch, capsys, project, *ANALYZE, *extra)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("gradvar analyze: error: ") and match in lines[0], lines[0]
    assert "Traceback" not in err


def test_cli_file_factories_contracts_n_and_skip_nonfinite(monkeypatch, capsys, project) -> None:
    code, out, err = _cli(
        monkeypatch, capsys, project, *ANALYZE, "--data", "./factories.py:no_arguments",
        "--n", "24", "--threads", "1",
    )  # fmt: skip
    assert code == 0, err
    assert "the first 24 of the 40 that --data returned" in out and "1 CPU thread" in out
    assert "pairing: previous: " in out
    assert set(read_records(project / "r.parquet")["n"].dropna()) == {24}
    code, out, err = _cli(
        monkeypatch, capsys, project, *ANALYZE[:-1], "nan.parquet", "--data",
        "./factories.py:with_nan", "--skip-nonfinite",
    )  # fmt: skip
    assert code == 0, err
    skipped = read_records(project / "nan.parquet").query("metric == 'nonfinite_skipped'")
    assert (skipped["value"] == 1).all() and len(skipped) == 3


def test_cli_dry_run_series_and_version(monkeypatch, capsys, project: Path) -> None:
    code, out, _ = _cli(monkeypatch, capsys, project, "series", "run", "--model",
                        "./factories.py:build", "--data", "./factories.py:good")  # fmt: skip
    assert code == 0
    assert "step-000004.pt" in out and "prefix stripped" in out and "pairing: previous" in out
    code, out, _ = _cli(monkeypatch, capsys, project, *ANALYZE, "--dry-run")
    assert code == 0 and "snapshot" in out
    code, out, _ = _cli(monkeypatch, capsys, project, "--version")
    assert code == 0 and out.startswith("gradvar ")
    code, out, _ = _cli(monkeypatch, capsys, project, "analyze", "--help")
    assert code == 0 and "./file.py:FN" in out and "FN(**model_kwargs)" in out


def test_cli_missing_run_and_garbage_checkpoint(monkeypatch, capsys, project, tmp_path) -> None:
    code, _, err = _cli(monkeypatch, capsys, project, "analyze", "nowhere", "--out", "x.parquet")
    assert code == 2 and "does not exist" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "step-3.pt").write_text("not weights\n")
    code, _, err = _cli(monkeypatch, capsys, project, "series", str(tmp_path))
    assert code == 2 and "text file" in err and "Traceback" not in err


def test_cpu_threads_respect_flag_then_environment(monkeypatch) -> None:
    from gradvar._factories import cpu_threads

    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert cpu_threads(2) == (2, "--threads")
    assert cpu_threads(None) == (3, "OMP_NUM_THREADS")
    monkeypatch.delenv("OMP_NUM_THREADS")
    count, why = cpu_threads(None)
    assert 1 <= count <= 4 and why.startswith("default")
    with pytest.raises(InvalidArgumentError, match="--threads 0"):
        cpu_threads(0)


def test_label_check_restores_every_module_mode() -> None:
    import torch
    import torch.nn.functional as F

    from gradvar import Probe

    model = torch.nn.Sequential(
        torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 3)
    )
    model.train()
    model[1].eval()  # a frozen BatchNorm inside a training model
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    Probe(model, F.cross_entropy).run((x, y))
    assert model.training and model[0].training and not model[1].training
