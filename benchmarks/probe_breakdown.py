#!/usr/bin/env python
"""Where a Probe run spends its time, phase by phase, and what the proposed fixes would save.

Phases (wall-clock, summed over chunks, median over ``--repeat`` runs):

    engine       per-sample gradient blocks at θ and θ̃ (closed-form pass and/or vmap)
    finite       the non-finite check of every block
    update       GradientSums.update (float64 sufficient statistics)
    top_eig      GramStore.top_eigenvalues (metric 3, top_eigenvalue='gram' only)
    metrics      all_metrics (per-layer and whole-model metrics from the sums)

``--proposed`` monkeypatches gradvar with prototypes of the fixes recommended in BENCHMARKS.md
that are not in gradvar yet (it does not edit gradvar) and first checks that every metric
agrees with the unpatched code:

    1. GramStore.top_eigenvalues: one batched ``eigvalsh`` for all layers and the whole model;
    2. Probe._finite: one device sync per chunk (stack the per-parameter masks) instead of one
       per parameter.

The other fixes measured here earlier (cached norms and the finite check from them, fused
block moments, masked metric means, no empty vmap pass) are in gradvar now, so their
prototypes are gone; so is the float32-products prototype, which was built on them (its
figures in BENCHMARKS.md come from this script at commit 6f8fad9).

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
from gradvar import probe as gv_probe  # noqa: E402
from gradvar import spectrum as gv_spectrum  # noqa: E402
from gradvar.blocks import cat_blocks  # noqa: E402

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


@contextlib.contextmanager
def proposed_fixes() -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        stack.enter_context(
            patched(gv_spectrum.GramStore, "top_eigenvalues", _batched_top_eigenvalues)
        )
        stack.enter_context(patched(gv_probe.Probe, "_finite", _one_sync_finite))
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
