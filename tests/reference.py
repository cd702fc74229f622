"""The slow, obvious reference: a Python loop of per-example ``backward()`` in float64.

Statistics are then computed from the stacked gradient rows by their textbook definitions
(pairwise cosines, explicit covariance matrix), sharing no code with gradvar.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

from gradvar._data import chunk_rng
from gradvar._utils import replay_rng


def loop_grads(
    model: nn.Module,
    loss_fn: Callable,
    x: Tensor,
    y: Tensor,
    state: Mapping[str, Tensor] | None = None,
    unit: int | None = None,
    seed: int = 0,
    params: list[str] | None = None,
) -> dict[str, Tensor]:
    """Rows [n, *shape] of per-example (or per-mini-batch) gradients by plain backward().

    Randomness: one batched forward of all the data from the probe's chunk-0 RNG state
    (the probe must run with one chunk), then one backward per example — the masks the
    batched forward drew are those vmap draws.
    """
    work = _clone(model, state)
    with replay_rng(chunk_rng(seed, 0)):
        out = work(x)
    n = x.shape[0]
    losses = torch.stack([loss_fn(out[i : i + 1], y[i : i + 1]) for i in range(n)])
    groups = (
        [[i] for i in range(n)]
        if unit is None
        else [list(range(s, s + unit)) for s in range(0, n - n % unit, unit)]
    )
    keep = set(params) if params is not None else {k for k, _ in work.named_parameters()}
    rows: dict[str, list[Tensor]] = {k: [] for k, _ in work.named_parameters() if k in keep}
    for members in groups:
        work.zero_grad()
        losses[members].mean().backward(retain_graph=True)
        for k, p in work.named_parameters():
            if k in keep:
                rows[k].append(p.grad.detach().clone())
    return {k: torch.stack(v) for k, v in rows.items()}


def _clone(model: nn.Module, state: Mapping[str, Tensor] | None) -> nn.Module:
    import copy

    work = copy.deepcopy(model)
    if state is not None:
        work.load_state_dict(state)
    return work


def flat(rows: Mapping[str, Tensor], names: list[str]) -> Tensor:
    return torch.cat([rows[k].reshape(rows[k].shape[0], -1) for k in names], 1).double()


def sizes(rows: Mapping[str, Tensor], names: list[str]) -> list[int]:
    """Coordinates per parameter, in ``flat``'s order."""
    return [rows[k][0].numel() for k in names]


def stats(
    g: Tensor, h: Tensor | None, alphas=(1.0,), segments: list[int] | None = None
) -> dict[str, float]:
    """Every metric from rows by definition; ``segments``: coordinates per parameter tensor
    (the noise floor of the mean-of-ratio estimators is relative to each tensor)."""
    segments = segments if segments is not None else [g.shape[1]]
    n = g.shape[0]
    out: dict[str, float] = {}
    cos = []
    for i, j in itertools.combinations(range(n), 2):
        ni, nj = g[i].norm(), g[j].norm()
        if ni > 0 and nj > 0:
            cos.append(float(g[i] @ g[j] / (ni * nj)))
    m = sum(1 for i in range(n) if g[i].norm() > 0)
    out["m1_cosine"] = sum(1 - c for c in cos) / (m * (m - 1)) if m > 1 else math.nan
    mean = g.mean(0)
    cov_matrix = (g - mean).T @ (g - mean) / n
    out["m2_total_variance"] = float(torch.trace(cov_matrix))
    out["m3_top_eigenvalue"] = float(torch.linalg.eigvalsh(cov_matrix)[-1])
    out["grad_norm_sq"] = float(mean @ mean)
    out["gns_simple"] = out["m2_total_variance"] / out["grad_norm_sq"]
    var_g = ((g - mean) ** 2).mean(0)
    ok_g = _defined(var_g, (g * g).mean(0), segments)
    out["gsnr_mean"] = float((mean[ok_g] ** 2 / var_g[ok_g]).mean())
    if h is None:
        return out
    hmean = h.mean(0)
    var_h = ((h - hmean) ** 2).mean(0)
    cov = ((g - mean) * (h - hmean)).mean(0)
    ok_h = _defined(var_h, (h * h).mean(0), segments)
    both = ok_g & ok_h
    out["rho_mean"] = float((cov[both] / (var_g[both] * var_h[both]).sqrt()).clamp(-1, 1).mean())
    out["rho_layer"] = float(cov.sum() / (var_g.sum() * var_h.sum()).sqrt())
    out["alpha_star_mean"] = float((cov[ok_h] / (var_h[ok_h] + 1e-24)).clamp(-2, 2).mean())
    out["alpha_star_layer"] = float(cov.sum() / var_h.sum())
    out["alpha_star_mean_ref"] = float((cov / (var_h + 1e-24)).clamp(-2, 2).mean())
    for a in alphas:
        v = g - a * (h - hmean)  # the variance-reduced gradients themselves
        vr = float(((v - v.mean(0)) ** 2).mean(0).sum())
        out[f"vr_variance@{a}"] = vr
        out[f"vr_variance_ratio@{a}"] = vr / out["m2_total_variance"]
    return out


def _defined(var: Tensor, msq: Tensor, segments: list[int]) -> Tensor:
    """Coordinates where mean-of-ratio estimators are not 0/0 (see gradvar.metrics)."""
    eps = torch.finfo(torch.float64).eps
    ok = []
    for v, m in zip(var.split(segments), msq.split(segments)):
        ok.append((v > 1e-12 * m) & (m > (64 * eps) ** 2 * m.max()))
    return torch.cat(ok)
