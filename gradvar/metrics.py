"""The quantities of METHOD.md §4 as pure functions of sufficient statistics.

Per coordinate k over n samples (1/n normalisation throughout):

    Var_k(g) = Σg²/n − (Σg/n)²,   Cov_k(g,h) = Σgh/n − (Σg/n)(Σh/n),
    ρ_k = Cov_k / sqrt(Var_k(g) Var_k(h)),   α*_k = clamp(Cov_k / (Var_k(h) + 1e-24), −2, 2).

Per layer L (a group of coordinates) and for the whole model (``__all__``):

- ``m1_cosine``: (1/(n(n−1))) Σ_{i<j} (1 − cos(g_i, g_j)) = ½ − (‖Σ_i u_i‖² − n) / (2n(n−1)),
  u_i = g_i/‖g_i‖ (samples with a zero gradient have no direction and are left out of n);
- ``m2_total_variance``: Σ_k Var_k(g);
- ``m3_top_eigenvalue``: λ_max of the covariance (see :mod:`gradvar.spectrum`);
- ``rho_mean``: mean of ρ_k; ``rho_layer``: ΣCov / sqrt(ΣVar(g) ΣVar(h));
- ``alpha_star_mean``: mean of α*_k over defined coordinates (see below);
  ``alpha_star_mean_ref``: the reference code's plain mean over *all* coordinates, where a
  0/0 coordinate counts as 0 (what the paper's figures show);
- ``alpha_star_layer``: α*_L = ΣCov / ΣVar(h), the single α minimising the layer's variance;
- ``vr_variance`` at α: Σ_k [Var_k(g) − 2α Cov_k + α² Var_k(h)]; ``vr_variance_ratio``: that over
  ``m2_total_variance`` (> 1: the correction adds variance);
- ``grad_norm_sq``: ‖ḡ‖²; ``gns_simple``: tr Σ / ‖ḡ‖²; ``gsnr_mean``: mean of ḡ_k² / Var_k(g).

Means over coordinates (ρ, α*, GSNR) skip coordinates where the estimator is 0/0: variance
zero to float64 precision (Var_k ≤ 1e-12 · E[x_k²], e.g. weights of always-zero input
pixels), or a second moment at the rounding-noise level of the model's dtype relative to its
own parameter tensor (E[x_k²] ≤ (64 ε)² · max over the tensor of E[x²], e.g. attention key
biases, whose exact gradient is 0). Every metric is computed from per-parameter partial sums
(:func:`parameter_partials`), so layers and the whole model combine them exactly.
:func:`optimal_alpha` keeps the reference code's exact estimator for
users who want it coordinate by coordinate.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import Tensor

from gradvar.errors import InvalidArgumentError
from gradvar.spectrum import centred_top_eigenvalue
from gradvar.stats import GradientSums

__all__ = [
    "RELATIVE_VARIANCE_FLOOR",
    "parameter_partials",
    "combine_partials",
    "all_metrics",
    "variance_metrics",
    "optimal_alpha",
]

RELATIVE_VARIANCE_FLOOR = 1e-12
_F64 = torch.float64
_NAN = float("nan")

MetricKey = tuple[str, str, "float | None"]  # (layer, metric, alpha or None)


def _directional(sum_dir_sq: float, n_dir: float) -> float:
    if n_dir < 2:
        return _NAN
    return 0.5 - (sum_dir_sq - n_dir) / (2 * n_dir * (n_dir - 1))


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else _NAN


_SINGLE_KEYS = ("coords", "var_g", "norm_sq", "gsnr", "gsnr_n")
_PAIRED_KEYS = _SINGLE_KEYS + (
    "var_h", "cov", "rho", "rho_n", "alpha", "alpha_n", "alpha_ref",
)  # fmt: skip
_GROUP_COORDS = 1 << 24  # coordinates handled at once (16 Mi × 12 rows × 8 B ≈ 1.5 GiB)


def _segment_partials(sums: GradientSums, params: Sequence[str], eps: float) -> Tensor:
    """``[keys, len(params)]``: the additive totals of :func:`parameter_partials` for several
    parameters at once — their coordinates side by side, every key reduced per parameter by
    one slice sum (the noise floor is still relative to each tensor's own maximum)."""
    t = sums.tensors
    n = t["n"]
    bounds, start = [], 0
    for p in params:
        bounds.append((start, start + sums.shapes[p].numel()))
        start += sums.shapes[p].numel()

    def flat(kind: str) -> Tensor:
        return sums.flat(kind, params)

    def per_param_sums(values: Tensor) -> Tensor:
        # one sum per contiguous run: scatter/segment kernels serialise long segments on a
        # GPU, and a sum over a slice is a single fast kernel
        return torch.stack([values[..., a:b].sum(-1) for a, b in bounds], dim=-1)

    def defined(var: Tensor, msq: Tensor) -> Tensor:
        peak = torch.stack([msq[a:b].amax() if b > a else msq.new_zeros(()) for a, b in bounds])
        floor = torch.repeat_interleave(
            peak, torch.tensor([b - a for a, b in bounds], device=peak.device)
        )
        return (var > RELATIVE_VARIANCE_FLOOR * msq) & (msq > (64 * eps) ** 2 * floor)

    # the per-coordinate rows are written in place into one [keys - 1, coords] buffer (no
    # stacking copy); the first key, the coordinate count, is each tensor's size
    keys = len(_PAIRED_KEYS if sums.paired else _SINGLE_KEYS)
    g = flat("g")
    rows = torch.empty(keys - 1, g.numel(), dtype=_F64, device=g.device)
    mean_g = g / n
    msq_g = flat("g2") / n
    var_g, mean_g_sq, gsnr, ok_g_row = rows[0], rows[1], rows[2], rows[3]
    torch.mul(mean_g, mean_g, out=mean_g_sq)
    torch.sub(msq_g, mean_g_sq, out=var_g).clamp_min_(0)
    ok_g = defined(var_g, msq_g)
    torch.div(mean_g_sq, var_g, out=gsnr).masked_fill_(~ok_g, 0.0)
    ok_g_row.copy_(ok_g)
    if sums.paired:
        var_h, cov, rho, both_row, alpha_ok, ok_h_row, alpha = rows[4:11]
        mean_h, msq_h = flat("h") / n, flat("h2") / n
        torch.sub(msq_h, mean_h * mean_h, out=var_h).clamp_min_(0)
        torch.sub(flat("gh") / n, mean_g * mean_h, out=cov)
        ok_h = defined(var_h, msq_h)
        both = ok_g & ok_h
        torch.div(cov, (var_g * var_h).sqrt(), out=rho).clamp_(-1.0, 1.0).masked_fill_(~both, 0.0)
        both_row.copy_(both)
        torch.div(cov, var_h + 1e-24, out=alpha).clamp_(-2.0, 2.0)
        torch.mul(alpha, ok_h, out=alpha_ok)  # where(ok_h, alpha, 0): alpha is finite
        ok_h_row.copy_(ok_h)
    sizes = torch.tensor([float(b - a) for a, b in bounds], dtype=_F64, device=g.device)
    return torch.cat([sizes[None], per_param_sums(rows)])  # [keys, params]


def parameter_partials(sums: GradientSums, param: str, eps: float) -> dict[str, Tensor]:
    """Additive per-parameter totals every layer metric is built from (0-d device tensors).

    Sums over the tensor's coordinates of Var(g), Var(h), Cov, ḡ², and of ρ_k, α*_k, GSNR_k
    with their counts over defined coordinates (the noise floor is relative to this tensor's
    largest second moment). Computing them once per parameter lets every layer and the whole
    model combine them without touching the coordinates again; :func:`all_metrics` computes
    them for many parameters at once and brings them to the host in one transfer.
    """
    keys = _PAIRED_KEYS if sums.paired else _SINGLE_KEYS
    return dict(zip(keys, _segment_partials(sums, [param], eps)[:, 0]))


def combine_partials(
    parts: Sequence[Mapping[str, float]],
    *,
    sum_dir_sq: float,
    n_dir: float,
    alphas: Iterable[float] = (),
) -> dict[tuple[str, float | None], float]:
    """Every metric of a layer from its parameters' :func:`parameter_partials`."""
    total = {key: sum(p[key] for p in parts) for key in parts[0]}
    m2, norm_sq = total["var_g"], total["norm_sq"]
    out: dict[tuple[str, float | None], float] = {
        ("m1_cosine", None): _directional(sum_dir_sq, n_dir),
        ("m2_total_variance", None): m2,
        ("grad_norm_sq", None): norm_sq,
        ("gns_simple", None): _ratio(m2, norm_sq),
        ("gsnr_mean", None): _ratio(total["gsnr"], total["gsnr_n"]),
    }
    if "cov" not in total:
        return out
    var_h, cov = total["var_h"], total["cov"]
    out[("rho_mean", None)] = _ratio(total["rho"], total["rho_n"])
    out[("rho_layer", None)] = _ratio(cov, (m2 * var_h) ** 0.5)
    out[("alpha_star_mean", None)] = _ratio(total["alpha"], total["alpha_n"])
    out[("alpha_star_mean_ref", None)] = _ratio(total["alpha_ref"], total["coords"])
    out[("alpha_star_layer", None)] = _ratio(cov, var_h)
    for a in alphas:
        vr = m2 - 2 * a * cov + a * a * var_h
        out[("vr_variance", float(a))] = vr
        out[("vr_variance_ratio", float(a))] = _ratio(vr, m2)
    return out


def all_metrics(
    sums: GradientSums,
    *,
    alphas: Iterable[float] = (),
    top_eigenvalues: Mapping[str | None, float] | None = None,
    whole_model: str = "__all__",
    eps: float = torch.finfo(torch.float32).eps,
) -> dict[MetricKey, float]:
    """Metrics of every layer of ``sums.groups`` and of the whole model (``whole_model``)."""
    if sums.n == 0:
        raise InvalidArgumentError("no samples were accumulated; the data was empty")
    alphas = list(alphas)
    names = list(sums.shapes)
    groups, current, size = [], [], 0
    for p in names:  # bounded working memory: at most _GROUP_COORDS coordinates at once
        if current and size + sums.shapes[p].numel() > _GROUP_COORDS:
            groups.append(current)
            current, size = [], 0
        current.append(p)
        size += sums.shapes[p].numel()
    groups.append(current)
    keys = _PAIRED_KEYS if sums.paired else _SINGLE_KEYS
    matrix = torch.cat([_segment_partials(sums, group, eps) for group in groups], dim=1)
    dir_keys = [(layer, p) for layer, params in sums.groups.items() for p in params]
    dir_tensors = [sums.tensors[f"dir/{lay}/{p}"] for lay, p in dir_keys]
    dir_tensors += [sums.tensors[f"dir_model/{p}"] for p in names]
    dir_norms = torch.stack(torch._foreach_norm(dir_tensors)) ** 2
    host = torch.cat([matrix.T.reshape(-1), dir_norms]).tolist()  # the one transfer
    parts = {
        p: dict(zip(keys, host[i * len(keys) : (i + 1) * len(keys)])) for i, p in enumerate(names)
    }
    dir_values = host[len(names) * len(keys) :]
    layer_dir = dict(zip(dir_keys, dir_values[: len(dir_keys)]))
    model_dir = sum(dir_values[len(dir_keys) :])
    counts = sums.tensors_on_host(["n_dir_model", *(f"n_dir/{lay}" for lay in sums.groups)])
    out: dict[MetricKey, float] = {}
    for layer, params in sums.groups.items():
        dir_sq = sum(layer_dir[(layer, p)] for p in params)
        values = combine_partials(
            [parts[p] for p in params],
            sum_dir_sq=dir_sq,
            n_dir=counts[f"n_dir/{layer}"],
            alphas=alphas,
        )
        out.update({(layer, metric, a): v for (metric, a), v in values.items()})
    values = combine_partials(
        list(parts.values()),
        sum_dir_sq=model_dir,
        n_dir=counts["n_dir_model"],
        alphas=alphas,
    )
    out.update({(whole_model, metric, a): v for (metric, a), v in values.items()})
    if top_eigenvalues is not None:
        for layer, value in top_eigenvalues.items():
            out[(whole_model if layer is None else layer, "m3_top_eigenvalue", None)] = value
    return out


# -------------------------------------------------------------------- pure forms on rows
def _as_rows(rows: Tensor, name: str) -> Tensor:
    if rows.dim() < 2:
        raise InvalidArgumentError(
            f"{name} must have shape [n, d] (one gradient per row), got shape {tuple(rows.shape)}"
        )
    return rows.reshape(rows.shape[0], -1).to(_F64)


def variance_metrics(rows: Tensor) -> dict[str, float]:
    """Metrics 1–3 of gradient rows ``[n, d]`` (one sample's gradient per row).

    ``m1_cosine`` = (1/(n(n−1))) Σ_{i<j} (1 − cos(g_i, g_j)); ``m2_total_variance`` = trace of
    the 1/n covariance; ``m3_top_eigenvalue`` = its largest eigenvalue (via the n×n Gram
    matrix when n ≤ d, else the d×d covariance).
    """
    g = _as_rows(rows, "rows")
    n = g.shape[0]
    norms = g.norm(dim=1)
    units = g[norms > 0] / norms[norms > 0, None]
    m1 = _directional(float((units.sum(0) ** 2).sum()), float(units.shape[0]))
    centred = g - g.mean(0)
    m2 = float((centred**2).sum() / n)
    if n <= g.shape[1]:
        m3 = centred_top_eigenvalue(g @ g.T)
    else:
        m3 = float(torch.linalg.eigvalsh(centred.T @ centred / n)[-1].clamp_min(0))
    return {"m1_cosine": m1, "m2_total_variance": m2, "m3_top_eigenvalue": m3}


def optimal_alpha(
    current_rows: Tensor,
    snapshot_rows: Tensor,
    clamp: tuple[float, float] | None = (-2.0, 2.0),
) -> Tensor:
    """Per-coordinate α*_k = Cov_k(g, h) / (Var_k(h) + 1e-24), clamped — the paper's estimator.

    ``current_rows`` and ``snapshot_rows`` are ``[n, d]`` gradients of the same n samples at the
    current and snapshot weights. Returns a float64 tensor ``[d]`` (its plain mean is what the
    reference code reports).
    """
    g = _as_rows(current_rows, "current_rows")
    h = _as_rows(snapshot_rows, "snapshot_rows")
    if g.shape != h.shape:
        raise InvalidArgumentError(
            f"current_rows and snapshot_rows must have the same shape, got {tuple(g.shape)} "
            f"and {tuple(h.shape)}"
        )
    gc, hc = g - g.mean(0), h - h.mean(0)
    alpha = (gc * hc).mean(0) / ((hc * hc).mean(0) + 1e-24)
    return alpha.clamp(*clamp) if clamp is not None else alpha
