"""Metric 3's GPU eigensolver (top eigenvalue by repeated squaring) against ``eigvalsh``, on
the CPU: the matrices it sees in practice, the cases that break power methods, and whole
probes with the solver forced on."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from architectures import perturbed
from modern import make_modern, token_loss

import gradvar.spectrum as spectrum
from gradvar import Probe
from gradvar.spectrum import top_eigenvalues_by_squaring

F64 = torch.float64


def _with_spectrum(values: list[float], seed: int = 0) -> torch.Tensor:
    n = len(values)
    q, _ = torch.linalg.qr(
        torch.randn(n, n, dtype=F64, generator=torch.Generator().manual_seed(seed))
    )
    return q @ torch.diag(torch.tensor(values, dtype=F64)) @ q.T


@pytest.mark.parametrize(("n", "rank"), [(2, 2), (16, 40), (64, 5), (200, 600)])
def test_gram_matrices_match_eigvalsh(n: int, rank: int) -> None:
    gen = torch.Generator().manual_seed(n)
    x = (
        torch.randn(7, n, rank, dtype=F64, generator=gen)
        * torch.logspace(0, 3, 7, dtype=F64)[:, None, None]
    )
    grams = x @ x.transpose(-1, -2)
    expected = torch.linalg.eigvalsh(grams)[..., -1]
    torch.testing.assert_close(top_eigenvalues_by_squaring(grams), expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize(
    ("name", "values", "rtol"),
    [
        ("rank one", [3.0, 0, 0, 0, 0], 1e-14),
        ("tied top", [2.0, 2.0, 1.0, 0.5, 0.0], 1e-14),
        ("gap 1e-6", [2.0, 2.0 * (1 - 1e-6), 1.0, 0.5, 0.0], 1e-14),
        ("gap 1e-9: error below the gap", [2.0, 2.0 * (1 - 1e-9), 1.0, 0.5, 0.0], 1e-9),
        ("tiny scale", [1e-200, 1e-210, 1e-220, 0.0, 0.0], 1e-14),
        ("huge scale", [1e200, 1e190, 1.0, 0.0, 0.0], 1e-14),
        ("one dominant of many", [1.0] + [1e-3] * 50, 1e-13),
    ],
)
def test_cases_that_break_power_methods(name: str, values: list[float], rtol: float) -> None:
    top = top_eigenvalues_by_squaring(_with_spectrum(values)[None])[0].item()
    assert top <= max(values) * (1 + 1e-15), name  # a Rayleigh quotient: never above λ_1
    assert top == pytest.approx(max(values), rel=rtol), name


def test_zero_matrix_and_batch_of_mixed_scales() -> None:
    batch = torch.stack([torch.zeros(4, 4, dtype=F64), _with_spectrum([5.0, 1.0, 0.0, 0.0])])
    torch.testing.assert_close(
        top_eigenvalues_by_squaring(batch), torch.tensor([0.0, 5.0], dtype=F64), rtol=1e-14, atol=0
    )


@pytest.mark.parametrize("arch", ["resnet", "vit", "gpt"])
def test_probe_metric_three_is_the_same_with_the_gpu_solver(arch: str, monkeypatch) -> None:
    model, x, y = make_modern(arch)
    loss = token_loss if arch == "gpt" else F.cross_entropy
    snapshot = perturbed(model, scale=0.05)
    eig = Probe(model, loss).run((x, y), snapshot=snapshot)
    calls = []
    monkeypatch.setattr(spectrum, "_by_squaring", lambda matrices: calls.append(1) or True)
    squared = Probe(model, loss).run((x, y), snapshot=snapshot)
    assert calls  # the solver was used
    tops = [k for k in eig.values if k[1] == "m3_top_eigenvalue"]
    assert len(tops) > 2
    for key in tops:
        assert math.isclose(squared.values[key], eig.values[key], rel_tol=1e-10, abs_tol=1e-300), (
            key
        )
