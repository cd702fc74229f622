#!/usr/bin/env python
"""Where a Probe run spends its time, phase by phase, and what the proposed fixes would save.

Phases (wall-clock, summed over chunks, median over ``--repeat`` runs):

    engine       per-sample gradient blocks at θ and θ̃ (closed-form pass and/or vmap)
    finite       the non-finite check of every block
    update       GradientSums.update (float64 sufficient statistics)
    top_eig      GramStore.top_eigenvalues (metric 3, top_eigenvalue='gram' only)
    metrics      all_metrics (per-layer and whole-model metrics from the sums)

``--proposed`` monkeypatches gradvar with prototypes of the fixes recommended in BENCHMARKS.md
(it does not edit gradvar) and first checks that every metric agrees with the unpatched code:

    1. DenseBlock/OuterBlock cache ``norms_sq()`` (n floats) and ``finite()`` reads
       ``isfinite(norms_sq)`` instead of ``isfinite`` over all n × d entries;
    2. GradientSums.update reads each DenseBlock once, in cache-sized column slabs converted to
       float64 (instead of ~9 float64 copies of the whole [n, d] block and their products),
       and gets Σg and every directional sum from one matmul with stacked weights;
    3. layer_metrics averages over masks with ``torch.where`` sums instead of boolean indexing;
    4. GramStore.top_eigenvalues: one batched ``eigvalsh`` for all layers and the whole model;
    5. Probe._finite: one device sync per chunk (stack the per-parameter masks) instead of one
       per parameter;
    6. GradientEngine.blocks skips the vmap pass and its RNG replay when no parameter is left
       for it (an all-Linear model), saving a capture/restore of every RNG per chunk.

    THP_MEM_ALLOC_ENABLE=1 python benchmarks/probe_breakdown.py --model mlp --threads 1
    THP_MEM_ALLOC_ENABLE=1 python benchmarks/probe_breakdown.py --vmap --chunk-size 64 --proposed
"""

from __future__ import annotations

import os

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

import bench_probe  # noqa: E402

import gradvar  # noqa: E402
from gradvar import blocks as gv_blocks  # noqa: E402
from gradvar import metrics as gv_metrics  # noqa: E402
from gradvar import probe as gv_probe  # noqa: E402
from gradvar import spectrum as gv_spectrum  # noqa: E402
from gradvar import stats as gv_stats  # noqa: E402
from gradvar.blocks import cat_blocks  # noqa: E402
from gradvar.grads import _engine as gv_engine  # noqa: E402

_F64 = torch.float64
PHASES = {
    "engine": (gv_probe.GradientEngine, "blocks"),
    "finite": (gv_probe.Probe, "_finite"),
    "update": (gv_probe.GradientSums, "update"),
    "top_eig": (gv_probe.GramStore, "top_eigenvalues"),
    "metrics": (gv_probe, "all_metrics"),
}


@contextlib.contextmanager
def patched(obj: Any, name: str, value: Any) -> Iterator[None]:
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


@contextlib.contextmanager
def phase_timers(totals: dict[str, float], device: str) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for phase, (owner, attr) in PHASES.items():
            inner = getattr(owner, attr)

            def timed(*a: Any, _inner: Any = inner, _phase: str = phase, **k: Any) -> Any:
                bench_probe._sync(device)
                t0 = time.perf_counter()
                out = _inner(*a, **k)
                bench_probe._sync(device)
                totals[_phase] = totals.get(_phase, 0.0) + time.perf_counter() - t0
                return out

            stack.enter_context(patched(owner, attr, timed))
        yield


# ----------------------------------------------------------------------------- proposed fixes
def _cached_norms_sq(original: Any) -> Any:
    def norms_sq(self: Any) -> torch.Tensor:
        cached = self.__dict__.get("_norms_sq_cache")
        if cached is None:
            cached = original(self)
            self.__dict__["_norms_sq_cache"] = cached
        return cached

    return norms_sq


def _finite_from_norms(self: Any) -> torch.Tensor:
    # ‖g_i‖² in float64 of float32 entries is finite iff every entry is (no overflow possible).
    return torch.isfinite(self.norms_sq())


def _dense_norms_sq(self: Any) -> torch.Tensor:
    rows = self.rows().reshape(self.n, -1)
    return torch.linalg.vector_norm(rows, dim=1, dtype=_F64) ** 2


def _dense_moments(
    t: dict[str, torch.Tensor],
    p: str,
    g: Any,
    h: Any,
    weights: torch.Tensor,
    keys: list[str],
    slab_bytes: int | None = None,
) -> None:
    """Σ w_k g (k = 0: Σg), Σg², Σh, Σh², Σgh of DenseBlocks, over cache-sized column slabs.

    Each slab of ``n × cols`` float32 entries is converted to float64 once (about 4 MiB on CPU,
    so it stays in cache; the whole block on a GPU), instead of ~9 float64 copies of ``[n, d]``.
    """
    n = g.n
    rows = g.rows().reshape(n, -1)
    hrows = h.rows().reshape(n, -1) if h is not None else None
    if slab_bytes is None:  # cache-sized on CPU; one slab on a GPU (kernel launches dominate)
        slab_bytes = 1 << 22 if rows.device.type == "cpu" else 1 << 62
    acc = {k: t[k].view(-1) for k in keys}
    g2 = t[f"g2/{p}"].view(-1)
    step = max(256, slab_bytes // (8 * n))
    for j in range(0, rows.shape[1], step):
        f = rows[:, j : j + step].to(_F64)
        sums = weights @ f
        for i, key in enumerate(keys):
            acc[key][j : j + step] += sums[i]
        g2[j : j + step] += (f * f).sum(0)
        if hrows is not None:
            fh = hrows[:, j : j + step].to(_F64)
            t[f"h/{p}"].view(-1)[j : j + step] += fh.sum(0)
            t[f"h2/{p}"].view(-1)[j : j + step] += (fh * fh).sum(0)
            t[f"gh/{p}"].view(-1)[j : j + step] += (f * fh).sum(0)


def _fast_update(self: Any, current: Any, snapshot: Any = None) -> None:
    """GradientSums.update: DenseBlocks read once in float64 slabs; stacked weight matmuls."""
    if self.paired and snapshot is None:
        raise gv_stats.InvalidArgumentError("these sums are paired; update() needs snapshot blocks")
    t = self.tensors
    norms_sq = {p: b.norms_sq() for p, b in current.items()}
    n = next(iter(current.values())).n
    t["n"] += n
    model_w = gv_stats._inverse_norms(sum(norms_sq.values()))
    t["n_dir_model"] += (model_w > 0).sum()
    layer_w = {}
    for layer, names in self.groups.items():
        layer_w[layer] = gv_stats._inverse_norms(sum(norms_sq[p] for p in names))
        t[f"n_dir/{layer}"] += (layer_w[layer] > 0).sum()
    for p, g in current.items():
        layers = [layer for layer, names in self.groups.items() if p in names]
        keys = [f"g/{p}", *(f"dir/{layer}/{p}" for layer in layers), f"dir_model/{p}"]
        weights = torch.stack([torch.ones_like(model_w), *(layer_w[x] for x in layers), model_w])
        h = snapshot[p] if snapshot is not None and self.paired else None
        if isinstance(g, gv_blocks.DenseBlock):
            _dense_moments(t, p, g, h, weights, keys)
            continue
        assert isinstance(g, gv_blocks.OuterBlock)
        d, a = g._factors()
        k, out = weights.shape[0], d.shape[1]
        stacked = (weights.T.to(d.dtype)[:, :, None] * d[:, None, :]).reshape(n, k * out)
        sums = (stacked.T @ a).to(_F64).reshape(k, out, a.shape[1])
        for i, key in enumerate(keys):
            t[key] += sums[i]
        t[f"g2/{p}"] += g.sum_sq()
        if h is not None:
            t[f"h/{p}"] += h.sum()
            t[f"h2/{p}"] += h.sum_sq()
            t[f"gh/{p}"] += g.sum_cross(h)


def _batched_top_eigenvalues(self: Any, groups: Any) -> dict[Any, float]:
    """GramStore.top_eigenvalues with one batched eigvalsh call for all layers and the model."""
    grams = {name: cat_blocks(parts).gram() for name, parts in self.blocks.items()}
    keys = [*groups, None]
    mats = [sum(grams[p] for p in names) for names in groups.values()]
    k = torch.stack([*mats, sum(grams.values())]).to(_F64)
    n = k.shape[-1]
    if n < 2 or n > gv_spectrum._DENSE_EIG_MAX:
        return {key: gv_spectrum.centred_top_eigenvalue(m) for key, m in zip(keys, k)}
    row = k.mean(1, keepdim=True)
    centred = k - row - row.transpose(1, 2) + k.mean((1, 2), keepdim=True)
    centred = (centred + centred.transpose(1, 2)) / 2
    top = (torch.linalg.eigvalsh(centred)[:, -1].clamp_min(0) / n).tolist()
    return dict(zip(keys, top))


def _one_sync_finite(self: Any, blocks: Any, which: str, index: int) -> torch.Tensor:
    """Probe._finite with one device sync per chunk instead of one per parameter."""
    oks = torch.stack([block.finite() for block in blocks.values()])
    keep = oks.all(0)
    if not self.skip_nonfinite and not bool(keep.all()):
        return _original_finite(self, blocks, which, index)  # raises with the layer's name
    return keep


_original_finite = gv_probe.Probe._finite


def _engine_blocks(
    self: Any, params: Any, buffers: Any, inputs: Any, targets: Any, rng: Any
) -> dict[str, Any]:
    """GradientEngine.blocks that skips the vmap pass (and its RNG replay) when it has no work."""
    out: dict[str, Any] = {}
    if self.slots:
        with gv_engine.replay_rng(rng):
            closed, bad = gv_engine.closed_form_blocks(
                self.model, self.loss_fn, params, buffers, self.slots, inputs, targets,
                self.unit_size,
            )  # fmt: skip
        if bad:
            self.slots = [s for s in self.slots if s not in bad]
            closed = {k: v for k, v in closed.items() if k in self.closed_form_params}
        out.update(closed)
    rest = [n for n in self.param_names if n not in out]
    if rest:
        with gv_engine.replay_rng(rng):
            out.update(
                gv_engine.vmap_blocks(
                    self.model,
                    self.loss_fn,
                    params,
                    buffers,
                    rest,
                    inputs,
                    targets,
                    self.unit_size,
                )  # fmt: skip
            )
    return {name: out[name] for name in self.param_names}


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean of ``x`` over ``mask``; ``x`` is a temporary and is overwritten."""
    count = int(mask.sum())
    return float(x.masked_fill_(~mask, 0.0).sum() / count) if count else math.nan


def _fast_layer_metrics(
    sums: Any,
    params: Any,
    *,
    sum_dir_sq: float,
    n_dir: float,
    alphas: Any = (),
    eps: float = torch.finfo(torch.float32).eps,
) -> dict[tuple[str, float | None], float]:
    """gradvar.metrics.layer_metrics with masked sums (in place) instead of boolean indexing."""
    if sums.n == 0:
        raise gv_metrics.InvalidArgumentError("no samples were accumulated; the data was empty")
    m = gv_metrics._moments(sums, params)
    var_g = m["var_g"]
    m2 = float(var_g.sum())
    norm_sq = float((m["mean_g"] ** 2).sum())
    ok_g = gv_metrics._defined(var_g, m["msq_g"], eps)
    nan = math.nan
    gsnr = m["mean_g"] ** 2
    out: dict[tuple[str, float | None], float] = {
        ("m1_cosine", None): gv_metrics._directional(sum_dir_sq, n_dir),
        ("m2_total_variance", None): m2,
        ("grad_norm_sq", None): norm_sq,
        ("gns_simple", None): m2 / norm_sq if norm_sq > 0 else nan,
        ("gsnr_mean", None): _masked_mean(torch.div(gsnr, var_g, out=gsnr), ok_g),
    }
    if not sums.paired:
        return out
    var_h, cov = m["var_h"], m["cov"]
    ok_h = gv_metrics._defined(var_h, m["msq_h"], eps)
    rho = (var_g * var_h).sqrt_()
    rho = torch.div(cov, rho, out=rho).clamp_(-1.0, 1.0)
    out[("rho_mean", None)] = _masked_mean(rho, ok_g & ok_h)
    del rho
    alpha = var_h + 1e-24
    alpha = torch.div(cov, alpha, out=alpha).clamp_(-2.0, 2.0)
    out[("alpha_star_mean_ref", None)] = float(alpha.mean())
    total_h, total_cov = float(var_h.sum()), float(cov.sum())
    out[("rho_layer", None)] = total_cov / (m2 * total_h) ** 0.5 if m2 > 0 and total_h > 0 else nan
    out[("alpha_star_mean", None)] = _masked_mean(alpha, ok_h)
    out[("alpha_star_layer", None)] = total_cov / total_h if total_h > 0 else nan
    for a in alphas:
        vr = m2 - 2 * a * total_cov + a * a * total_h
        out[("vr_variance", float(a))] = vr
        out[("vr_variance_ratio", float(a))] = vr / m2 if m2 > 0 else nan
    return out


def _outer_native(self: Any) -> tuple[torch.Tensor, torch.Tensor]:
    return self.delta, self.act


@contextlib.contextmanager
def fp32_products() -> Iterator[None]:
    """Precision trade-off (not a free fix): OuterBlock's per-chunk matmuls in the gradient dtype.

    Σg, Σg², Σh, Σh², Σgh and the directional sums of each chunk come from float32 matmuls
    (float32 accumulation over the chunk's n samples) and are then added into the float64
    totals; norms and the Gram matrix stay float64.
    """
    ob = gv_blocks.OuterBlock

    def wrap(method: Any) -> Any:
        def native(self: Any, *args: Any) -> torch.Tensor:
            with patched(ob, "_factors", _outer_native):
                return method(self, *args).to(_F64)

        return native

    with contextlib.ExitStack() as stack:
        stack.enter_context(proposed_fixes())
        for name in ("sum", "sum_sq", "sum_cross"):
            stack.enter_context(patched(ob, name, wrap(getattr(ob, name))))
        stack.enter_context(patched(gv_stats.GradientSums, "update", _fp32_update))
        yield


def _fp32_update(self: Any, current: Any, snapshot: Any = None) -> None:
    for block in current.values():
        block.norms_sq()  # computed (float64) and cached before the factors go native
    with patched(gv_blocks.OuterBlock, "_factors", _outer_native):
        _fast_update(self, current, snapshot)


@contextlib.contextmanager
def proposed_fixes() -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        stack.enter_context(
            patched(gv_blocks.DenseBlock, "norms_sq", _cached_norms_sq(_dense_norms_sq))
        )
        stack.enter_context(
            patched(
                gv_blocks.OuterBlock, "norms_sq", _cached_norms_sq(gv_blocks.OuterBlock.norms_sq)
            )
        )
        for cls in (gv_blocks.DenseBlock, gv_blocks.OuterBlock):
            stack.enter_context(patched(cls, "finite", _finite_from_norms))
        stack.enter_context(patched(gv_stats.GradientSums, "update", _fast_update))
        stack.enter_context(
            patched(gv_spectrum.GramStore, "top_eigenvalues", _batched_top_eigenvalues)
        )
        stack.enter_context(patched(gv_probe.Probe, "_finite", _one_sync_finite))
        stack.enter_context(patched(gv_engine.GradientEngine, "blocks", _engine_blocks))
        stack.enter_context(patched(gv_metrics, "layer_metrics", _fast_layer_metrics))
        yield


# ----------------------------------------------------------------------------- driver
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="mlp", choices=["mlp", "cnn"])
    p.add_argument("--n", type=int, default=None, help="batch (default 256 MLP, 128 CNN)")
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--chunk-size", type=int, default=256)
    p.add_argument("--vmap", action="store_true", help="closed_form=False")
    p.add_argument("--top-eigenvalue", default="gram")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--proposed", action="store_true", help="also time the proposed fixes")
    p.add_argument(
        "--fp32-products",
        action="store_true",
        help="also time the proposed fixes + float32 per-chunk matmuls (precision trade-off)",
    )
    p.add_argument(
        "--peak",
        action="store_true",
        help="also measure each variant's peak memory (fresh subprocess each, as bench_probe)",
    )
    p.add_argument("--profile", action="store_true", help="torch.profiler top ops, current code")
    p.add_argument("--_peak-variant", dest="peak_variant", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    n = args.n or (256 if args.model == "mlp" else 128)

    def make_probe(s: bench_probe.Setup) -> Any:
        def probe() -> Any:
            return gradvar.Probe(
                s.model,
                F.cross_entropy,
                chunk_size=args.chunk_size,
                closed_form=not args.vmap,
                top_eigenvalue=args.top_eigenvalue,
                progress=False,
            ).run((s.x, s.y), snapshot=s.state)

        return probe

    variants: dict[str, Any] = {"current": contextlib.nullcontext}
    if args.proposed:
        variants["proposed"] = proposed_fixes
    if args.fp32_products:
        variants["proposed + fp32 products"] = fp32_products
    if args.peak_variant is not None:  # worker: one variant's peak memory
        with variants[args.peak_variant]():
            make_probe(bench_probe.build(args.model, 8, args.device, args.width))()
            probe = make_probe(bench_probe.build(args.model, n, args.device, args.width))
            peak, _, how = bench_probe.measure_peak(probe, args.device)
        print(json.dumps({"peak_bytes": peak, "method": how}))
        return
    peaks: dict[str, str] = {}
    if args.peak:
        argv = [a for a in sys.argv[1:] if a != "--peak"]
        for name in variants:
            cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--_peak-variant", name]
            env = {**bench_probe.MEMORY_ENV, **os.environ}
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
            peaks[name] = bench_probe.fmt_bytes(
                json.loads(out.strip().splitlines()[-1])["peak_bytes"]
            )
    s = bench_probe.build(args.model, n, args.device, args.width)
    plain = bench_probe.make_fn("plain", s, args.chunk_size, args.chunk_size)
    probe = make_probe(s)
    ref = probe().values
    for name, ctx in list(variants.items())[1:]:
        with ctx():
            new = probe().values
        worst: dict[str, float] = {}
        missing = sorted({metric for (_, metric, _) in ref.keys() - new.keys()})
        if missing:  # gradvar grew a metric the prototype does not know yet
            print(f"WARNING: {name} does not produce {missing}; update the prototype")
        for (layer, metric, a), v in ref.items():
            w = new.get((layer, metric, a), math.nan)
            if not (math.isnan(v) and math.isnan(w)) and metric not in missing:
                err = abs(w - v) / max(abs(v), 1e-300)
                worst[metric] = max(worst.get(metric, 0.0), err)
        detail = ", ".join(f"{m} {e:.1e}" for m, e in worst.items())
        print(f"{name}: {len(ref)} values; max relative difference by metric: {detail}")
    rows: dict[str, dict[str, list[float]]] = {v: {} for v in variants}
    plain()
    for _ in range(args.repeat):  # interleaved rounds: plain, then each variant
        bench_probe._sync(args.device)
        t0 = time.perf_counter()
        plain()
        bench_probe._sync(args.device)
        t_plain = time.perf_counter() - t0
        for name, ctx in variants.items():
            with ctx():
                probe()  # warm
                totals: dict[str, float] = {}
                with phase_timers(totals, args.device):
                    t0 = time.perf_counter()
                    probe()
                    bench_probe._sync(args.device)
                    total = time.perf_counter() - t0
            totals["engine"] = totals.get("engine", 0.0)
            totals["total"] = total
            totals["other"] = total - sum(v for k, v in totals.items() if k in PHASES)
            totals["plain (a)"] = t_plain
            totals["total / (a)"] = total / t_plain
            for k, v in totals.items():
                rows[name].setdefault(k, []).append(v)
    keys = ["plain (a)", *PHASES, "other", "total", "total / (a)"]
    print(
        f"{bench_probe.describe_model(args.model, args.width)}, n={n}, chunk_size="
        f"{args.chunk_size}, closed_form={not args.vmap}, top_eigenvalue={args.top_eigenvalue}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, median of {args.repeat}"
    )
    print("\n| phase | " + " | ".join(variants) + " |")
    print("|---|" + "---:|" * len(variants))
    for k in keys:
        cells = []
        for v in variants:
            med = statistics.median(rows[v].get(k, [0.0]))
            cells.append(f"{med:.2f}×" if k == "total / (a)" else bench_probe.fmt_time(med))
        print(f"| {k} | " + " | ".join(cells) + " |")
    if peaks:
        print("| peak memory | " + " | ".join(peaks[v] for v in variants) + " |")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU]
        if args.device.startswith("cuda"):
            activities.append(ProfilerActivity.CUDA)
        with profile(activities=activities) as prof:
            probe()
            bench_probe._sync(args.device)
        key = "self_cuda_time_total" if args.device.startswith("cuda") else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=key, row_limit=15))


if __name__ == "__main__":
    main()
