"""The pure-function forms on gradient rows."""

from __future__ import annotations

import itertools

import pytest
import torch

from gradvar.errors import InvalidArgumentError
from gradvar.metrics import optimal_alpha, variance_metrics
from gradvar.spectrum import Lanczos, centred_top_eigenvalue


def test_variance_metrics_by_definition() -> None:
    gen = torch.Generator().manual_seed(0)
    for n, d in [(6, 20), (30, 4)]:  # Gram route and covariance route
        g = torch.randn(n, d, generator=gen, dtype=torch.float64) + 0.5
        out = variance_metrics(g)
        cos = [
            float(g[i] @ g[j] / (g[i].norm() * g[j].norm()))
            for i, j in itertools.combinations(range(n), 2)
        ]
        assert out["m1_cosine"] == pytest.approx(sum(1 - c for c in cos) / (n * (n - 1)))
        cov = torch.cov(g.T, correction=0)
        assert out["m2_total_variance"] == pytest.approx(float(torch.trace(cov)))
        assert out["m3_top_eigenvalue"] == pytest.approx(float(torch.linalg.eigvalsh(cov)[-1]))
    aligned = torch.ones(5, 3)
    assert variance_metrics(aligned)["m1_cosine"] == pytest.approx(0.0, abs=1e-12)


def test_optimal_alpha_is_the_reference_estimator() -> None:
    gen = torch.Generator().manual_seed(1)
    h = torch.randn(50, 7, generator=gen, dtype=torch.float64)
    g = 0.6 * h + 0.1 * torch.randn(50, 7, generator=gen, dtype=torch.float64)
    alpha = optimal_alpha(g, h)
    expected = [
        float(
            torch.cov(torch.stack([g[:, k], h[:, k]]), correction=0)[0, 1]
            / h[:, k].var(unbiased=False)
        )
        for k in range(7)
    ]
    torch.testing.assert_close(alpha, torch.tensor(expected, dtype=torch.float64))
    assert torch.equal(optimal_alpha(h, h), torch.ones(7, dtype=torch.float64))
    assert float(optimal_alpha(10 * h, h).max()) == 2.0  # clamped
    assert float(optimal_alpha(10 * h, h, clamp=None).max()) == pytest.approx(10.0)
    with pytest.raises(InvalidArgumentError, match="same shape"):
        optimal_alpha(g, h[:, :3])


def test_lanczos_and_gram_routes_agree_with_eigvalsh() -> None:
    gen = torch.Generator().manual_seed(2)
    g = torch.randn(40, 15, generator=gen, dtype=torch.float64) * torch.linspace(0.1, 3, 15)
    cov = torch.cov(g.T, correction=0)
    exact = float(torch.linalg.eigvalsh(cov)[-1])
    assert centred_top_eigenvalue(g @ g.T) == pytest.approx(exact, rel=1e-10)
    solver = Lanczos(15, tol=1e-12)
    while not solver.done:
        solver.feed(cov @ solver.vector)
    assert solver.value == pytest.approx(exact, rel=1e-9)


def test_flat_sums_are_views_for_consecutive_parameters() -> None:
    from gradvar.stats import GradientSums

    shapes = {"a": (2, 3), "b": (4,), "c": (5,)}
    sums = GradientSums(shapes, {"all": list(shapes)}, paired=True)
    for i, p in enumerate(shapes):
        sums.tensors[f"g2/{p}"].fill_(i + 1)
    together = sums.flat("g2", ["a", "b", "c"])
    assert together.tolist() == [1.0] * 6 + [2.0] * 4 + [3.0] * 5
    together[0] = 9.0  # a view: writes reach the sums
    assert sums.tensors["g2/a"][0, 0] == 9.0
    apart = sums.flat("g2", ["a", "c"])  # not consecutive: a copy
    assert apart.tolist() == [9.0] + [1.0] * 5 + [3.0] * 5
    apart[0] = 0.0
    assert sums.tensors["g2/a"][0, 0] == 9.0
