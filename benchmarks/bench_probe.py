#!/usr/bin/env python
"""Time and peak memory of gradvar's Probe against plain training passes (one run, one table).

Methods, each over BOTH weight sets θ (the model) and θ̃ (a perturbed snapshot) on the same batch:

    plain       (a) two ordinary mean-loss forward+backward passes (the reference cost)
    probe_gram  (b) Probe(...).run((x, y), snapshot=θ̃), top_eigenvalue="gram" (all metrics)
    probe_none  (b) the same with top_eigenvalue="none" (metric 3 left out)
    probe_vmap  (c) Probe(closed_form=False, top_eigenvalue="none"): every layer through vmap
    psg         (c) gradvar.per_sample_grads at θ and at θ̃ (raw [n, *shape] gradients)
    loop        (d) a Python loop of n single-example forward+backward() passes per weight set
                    (gradients are left in .grad and discarded: a lower bound on that approach)

Timing: every method is warmed up, then timed in ``--repeat`` interleaved rounds (each round
runs every method once, in a rotated order) so that load from other processes hits all methods
alike; the ratio to (a) is taken within each round and its median is reported. A fast method is
run several times per measurement so that one measurement lasts at least ``--min-time``.

Peak memory, CPU: each (model, method, n) runs in a fresh subprocess that builds the model and
data, warms the method up on a tiny batch, resets the kernel's peak-RSS counter (``echo 5 >
/proc/self/clear_refs``), runs the method once at full size and reports VmHWM − VmRSS-before
(falling back to the ru_maxrss delta where clear_refs is unavailable). That is the extra
resident memory of the call over the model, data and libraries. The subprocess runs with
``MALLOC_MMAP_THRESHOLD_=65536`` so that freed blocks leave RSS at once (reproducible to
< 1 MiB; without it glibc's heap reuse moves the figure by ±10 MiB). Peak memory, CUDA:
``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()``, minus the memory
allocated before the call (in-process; the allocator's counters are exact).

Usage (see benchmarks/README.md)::

    THP_MEM_ALLOC_ENABLE=1 python benchmarks/bench_probe.py --threads 1 --out results.json
    python benchmarks/bench_probe.py --quick            # smoke run, < 20 s
    python benchmarks/bench_probe.py --device cuda --sizes 256,1024,8192
"""

from __future__ import annotations

import os

# The CPU allocator's transparent-huge-page mode makes the per-example code 3–4× faster on CPU;
# it must be set before torch is imported.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import argparse  # noqa: E402
import copy  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import resource  # noqa: E402
import shlex  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing gradvar
    sys.path.insert(0, str(ROOT))

import gradvar  # noqa: E402

METHODS: dict[str, str] = {
    "plain": "(a) fwd+bwd, mean loss, θ and θ̃",
    "probe_gram": "(b) Probe, top_eigenvalue='gram'",
    "probe_none": "(b) Probe, top_eigenvalue='none'",
    "probe_vmap": "(c) Probe, closed_form=False, 'none'",
    "psg": "(c) per_sample_grads, θ and θ̃",
    "loop": "(d) per-example backward() loop",
}
MAIN_METHODS = list(METHODS)
SCALING_METHODS = ["plain", "probe_none", "probe_vmap"]
VMAP_METHODS = {"probe_vmap", "psg"}


# ----------------------------------------------------------------------------- models & data
def make_model(name: str, width: int = 512) -> nn.Module:
    """``mlp``: 784-512-512-512-10 (ReLU); ``cnn``: conv 1→16→32 (3×3, pool 2) + linear."""
    if name == "mlp":
        return nn.Sequential(
            nn.Linear(784, width),
            nn.ReLU(),
            nn.Linear(width, width),
            nn.ReLU(),
            nn.Linear(width, width),
            nn.ReLU(),
            nn.Linear(width, 10),
        )
    if name == "cnn":
        return nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(32 * 7 * 7, 10),
        )
    raise ValueError(f"unknown model {name!r}")


def describe_model(name: str, width: int) -> str:
    if name == "mlp":
        return f"MLP 784-{width}-{width}-{width}-10"
    return "CNN conv1→16→32 (3×3, maxpool) + linear 1568→10, 28×28 input"


@dataclass
class Setup:
    model: nn.Module
    snap_model: nn.Module
    state: dict[str, torch.Tensor]
    x: torch.Tensor
    y: torch.Tensor
    n_params: int


def build(name: str, n: int, device: str, width: int, seed: int = 0) -> Setup:
    torch.manual_seed(seed)
    model = make_model(name, width).to(device)
    snap_model = copy.deepcopy(model)
    with torch.no_grad():
        for p in snap_model.parameters():
            p.add_(0.01 * torch.randn_like(p))  # θ̃: a nearby snapshot
    shape = (n, 784) if name == "mlp" else (n, 1, 28, 28)
    x = torch.randn(shape, device=device)
    y = torch.randint(0, 10, (n,), device=device)
    return Setup(
        model,
        snap_model,
        {k: v.detach().clone() for k, v in snap_model.state_dict().items()},
        x,
        y,
        sum(p.numel() for p in model.parameters()),
    )


def make_fn(method: str, s: Setup, chunk: int, vmap_chunk: int) -> Callable[[], Any]:
    """A zero-argument callable doing ``method`` once on the setup's batch (both weight sets)."""
    if method == "plain":

        def plain() -> Any:
            for m in (s.model, s.snap_model):
                m.zero_grad(set_to_none=True)
                F.cross_entropy(m(s.x), s.y).backward()

        return plain
    if method in ("probe_gram", "probe_none", "probe_vmap"):
        kwargs: dict[str, Any] = {"progress": False}
        if method == "probe_vmap":
            kwargs.update(closed_form=False, top_eigenvalue="none", chunk_size=vmap_chunk)
        else:
            kwargs.update(top_eigenvalue=method.split("_")[1], chunk_size=chunk)

        def probe() -> Any:
            return gradvar.Probe(s.model, F.cross_entropy, **kwargs).run(
                (s.x, s.y), snapshot=s.state
            )

        return probe
    if method == "psg":

        def psg() -> Any:
            return [
                gradvar.per_sample_grads(m, s.x, s.y, F.cross_entropy, chunk_size=vmap_chunk)
                for m in (s.model, s.snap_model)
            ]

        return psg
    if method == "loop":

        def loop() -> Any:
            for m in (s.model, s.snap_model):
                for i in range(s.x.shape[0]):
                    m.zero_grad(set_to_none=True)
                    F.cross_entropy(m(s.x[i : i + 1]), s.y[i : i + 1]).backward()

        return loop
    raise ValueError(f"unknown method {method!r}")


# ----------------------------------------------------------------------------- measurement
def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _proc_kb(field: str) -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) if match else None


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return _proc_kb("VmHWM") is not None


def _maxrss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


def measure_peak(fn: Callable[[], Any], device: str) -> tuple[int, float, str]:
    """(extra peak bytes, seconds, method) of one call of ``fn``."""
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        t0 = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated() - base
        del out
        return peak, seconds, "cuda.max_memory_allocated"
    if _reset_peak_rss():
        base = (_proc_kb("VmRSS") or 0) * 1024
        t0 = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - t0
        peak = (_proc_kb("VmHWM") or 0) * 1024 - base
        del out
        return peak, seconds, "VmHWM-VmRSS"
    base = (_proc_kb("VmRSS") or 0) * 1024 or _maxrss_bytes()
    before = _maxrss_bytes()
    t0 = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t0
    after = _maxrss_bytes()
    del out
    return (after - base if after > before else 0), seconds, "ru_maxrss"


def memory_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """Peak memory (and the time) of one call, after a warm-up on a tiny batch."""
    torch.set_num_threads(cfg["threads"])
    device = cfg["device"]
    if cfg.get("warmup", True):
        tiny = build(cfg["model"], min(8, cfg["n"]), device, cfg["width"])
        make_fn(cfg["method"], tiny, cfg["chunk"], cfg["vmap_chunk"])()
        _sync(device)
        del tiny
    s = build(cfg["model"], cfg["n"], device, cfg["width"])
    fn = make_fn(cfg["method"], s, cfg["chunk"], cfg["vmap_chunk"])
    peak, seconds, how = measure_peak(fn, device)
    return {**cfg, "peak_bytes": peak, "first_call_s": seconds, "memory_method": how}


# glibc: serve every allocation of 64 KiB or more by mmap and unmap it on free, so that RSS
# follows the live allocations instead of the heap's high-water mark (measurements repeat to
# well under 1 MiB instead of ±10 MiB). Set in the memory workers only: it slows allocation.
MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def run_isolated(cfg: dict[str, Any], timeout: float) -> dict[str, Any]:
    """:func:`memory_config` in a fresh Python process."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_worker", json.dumps(cfg)]
    env = {**MEMORY_ENV, **os.environ}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"worker failed for {cfg}:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def time_methods(
    fns: dict[str, Callable[[], Any]],
    device: str,
    repeat: int,
    min_time: float,
    *,
    warmup: bool = True,
) -> dict[str, dict[str, Any]]:
    """Interleaved timing: per-call seconds of every method in each of ``repeat`` rounds."""
    inner: dict[str, int] = {}
    for name, fn in fns.items():  # warm-up and calibration
        if not warmup:
            inner[name] = 1
            continue
        fn()
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        once = time.perf_counter() - t0
        inner[name] = max(1, min(50, int(min_time / max(once, 1e-6)) + 1)) if once < min_time else 1
    names = list(fns)
    rounds: list[dict[str, float]] = []
    for r in range(repeat):
        order = names[r % len(names) :] + names[: r % len(names)]
        times: dict[str, float] = {}
        for name in order:
            gc.collect()
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(inner[name]):
                fns[name]()
            _sync(device)
            times[name] = (time.perf_counter() - t0) / inner[name]
        rounds.append(times)
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        ts = [rd[name] for rd in rounds]
        entry: dict[str, Any] = {
            "times_s": ts,
            "median_s": statistics.median(ts),
            "inner": inner[name],
        }
        if "plain" in fns:
            ratios = [rd[name] / rd["plain"] for rd in rounds]
            entry.update(ratios=ratios, ratio_median=statistics.median(ratios))
        out[name] = entry
    return out


# ----------------------------------------------------------------------------- reporting
def fmt_time(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.0f} µs"


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "–"
    if abs(n) >= 1 << 30:
        return f"{n / (1 << 30):.2f} GiB"
    return f"{n / (1 << 20):.1f} MiB"


def main_table(section: dict[str, Any]) -> str:
    timing, memory = section["timing"], section["memory"]
    mem_plain = memory.get("plain", {}).get("peak_bytes")
    lines = [
        f"**{section['title']}**, n = {section['n']}, {section['n_params']:,} parameters "
        f"(chunk_size {section['chunk']} closed-form Probe, {section['vmap_chunk']} vmap paths)",
        "",
        "| method | what | time (median) | ratio to (a) (median [min–max] of rounds) "
        "| peak memory | memory / (a) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name in section["methods"]:
        t = timing.get(name)
        m = memory.get(name, {}).get("peak_bytes")
        ratio = (
            f"{t['ratio_median']:.2f} [{min(t['ratios']):.2f}–{max(t['ratios']):.2f}]"
            if t and "ratios" in t
            else "–"
        )
        mem_ratio = f"{m / mem_plain:.2f}" if m is not None and mem_plain else "–"
        lines.append(
            f"| `{name}` | {METHODS[name]} | {fmt_time(t['median_s']) if t else '–'} | {ratio} "
            f"| {fmt_bytes(m)} | {mem_ratio} |"
        )
    return "\n".join(lines)


def scaling_table(rows: list[dict[str, Any]], sizes: list[int]) -> str:
    methods = list(dict.fromkeys(r["method"] for r in rows))
    by = {(r["method"], r["n"]): r for r in rows}
    head = "| method | chunk | " + " | ".join(f"peak n={n}" for n in sizes)
    head += " | peak max/min | " + " | ".join(f"time n={n} (× plain)" for n in sizes) + " |"
    lines = [head, "|---|---:|" + "---:|" * (2 * len(sizes) + 1)]
    for m in methods:
        peaks = [by[(m, n)]["peak_bytes"] if (m, n) in by else None for n in sizes]
        times = [by[(m, n)]["time_s"] if (m, n) in by else None for n in sizes]
        known = [p for p in peaks if p]
        spread = f"{max(known) / min(known):.2f}" if len(known) > 1 else "–"
        chunk = next(by[(m, n)]["chunk_used"] for n in sizes if (m, n) in by)
        cells = []
        for n, t in zip(sizes, times):
            base = by.get(("plain", n), {}).get("time_s")
            ratio = f" ({t / base:.1f}×)" if t is not None and base and m != "plain" else ""
            cells.append(fmt_time(t) + ratio if t is not None else "–")
        lines.append(
            f"| `{m}` | {chunk} | "
            + " | ".join(fmt_bytes(p) for p in peaks)
            + f" | {spread} | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines)


def verdicts(results: dict[str, Any]) -> list[str]:
    out = []
    mlp = results["sections"].get("mlp")
    if mlp and "plain" in mlp["timing"]:
        for name in ("probe_gram", "probe_none"):
            if name in mlp["timing"]:
                r = mlp["timing"][name]["ratio_median"]
                mp = mlp["memory"].get("plain", {}).get("peak_bytes")
                mm = mlp["memory"].get(name, {}).get("peak_bytes")
                mem = mm / mp if mp and mm is not None else float("nan")
                out.append(
                    f"- MLP `{name}`: time {r:.2f}× (a) (target ≤ 2.0: "
                    f"{'met' if r <= 2.0 else 'NOT met'}); memory {mem:.2f}× (a) "
                    f"(target ≤ 2.0: {'met' if mem <= 2.0 else 'NOT met'})"
                )
    rows = [r for r in results.get("scaling", []) if r["method"] == "probe_vmap"]
    if len(rows) > 1:
        peaks = [r["peak_bytes"] for r in rows]
        spread = max(peaks) / max(min(peaks), 1)
        out.append(
            f"- vmap path peak memory over n = {', '.join(str(r['n']) for r in rows)}: "
            f"max/min = {spread:.2f} (target: independent of n, i.e. ≈ 1: "
            f"{'met' if spread <= 1.25 else 'NOT met'})"
        )
    return out


def environment(args: argparse.Namespace) -> dict[str, Any]:
    env: dict[str, Any] = {
        "command": " ".join(shlex.quote(a) for a in sys.argv),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "THP_MEM_ALLOC_ENABLE": os.environ.get("THP_MEM_ALLOC_ENABLE"),
        "platform": platform.platform(),
    }
    if args.device.startswith("cuda"):
        env["device_name"] = torch.cuda.get_device_name()
    else:
        cpu = platform.processor()
        try:
            names = re.findall(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text())
            cpu = f"{names[0]} ×{len(names)} logical" if names else cpu
        except OSError:
            pass
        env["device_name"] = cpu
    if hasattr(os, "getloadavg"):
        env["loadavg_start"] = os.getloadavg()
    return env


# ----------------------------------------------------------------------------- driver
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", help="cpu | cuda (default cpu)")
    p.add_argument(
        "--sizes",
        default=None,
        help="n values of the memory-scaling sweep (MLP), e.g. 256,1024,4096 "
        "(default: 256,1024,4096 on CPU, 256,1024,8192 on CUDA)",
    )
    p.add_argument(
        "--scaling-methods",
        default=",".join(SCALING_METHODS),
        help="methods of the memory-scaling sweep (probe_gram's memory grows with n by design)",
    )
    p.add_argument("--models", default="mlp,cnn", help="models of the main tables")
    p.add_argument("--methods", default=",".join(MAIN_METHODS), help="methods of the main tables")
    p.add_argument("--mlp-batch", type=int, default=256)
    p.add_argument("--cnn-batch", type=int, default=128)
    p.add_argument("--width", type=int, default=512, help="MLP hidden width")
    p.add_argument("--chunk-size", type=int, default=256, help="closed-form Probe chunk_size")
    p.add_argument(
        "--vmap-chunk-size",
        type=int,
        default=64,
        help="chunk_size of the vmap paths (Probe closed_form=False, per_sample_grads)",
    )
    p.add_argument("--repeat", type=int, default=5, help="timed rounds (median reported)")
    p.add_argument("--min-time", type=float, default=None, help="seconds per measurement")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--no-scaling", action="store_true", help="skip the memory-scaling sweep")
    p.add_argument(
        "--no-isolate",
        action="store_true",
        help="CPU: measure memory in this process (approximate; implied by --quick)",
    )
    p.add_argument("--quick", action="store_true", help="fast smoke run (< 20 s): tiny sizes")
    p.add_argument("--out", default=None, help="write all results as JSON here")
    p.add_argument("--worker-timeout", type=float, default=1800)
    p.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    cuda = args.device.startswith("cuda")
    if args.sizes is None:
        args.sizes = "256,1024,8192" if cuda else "256,1024,4096"
    if args.quick:
        args.mlp_batch, args.cnn_batch, args.width = 32, 16, 64
        args.sizes, args.chunk_size, args.vmap_chunk_size = "16,32", 16, 16
        args.repeat, args.no_isolate = min(args.repeat, 2), True
        if args.threads is None and not cuda:
            args.threads = 1  # 2+ OpenMP threads on a shared, loaded CPU can stall for seconds
    if args.min_time is None:
        args.min_time = 0.005 if args.quick else (0.05 if cuda else 0.25)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    gc.freeze()  # imported modules' objects: keeps each gc.collect() below ~1 ms, not ~100 ms
    if args._worker is not None:
        print(json.dumps(memory_config(json.loads(args._worker))))
        return {}
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available")
    isolate = not (cuda or args.no_isolate)
    started = time.perf_counter()
    results: dict[str, Any] = {"env": environment(args), "args": vars(args), "sections": {}}
    base_cfg = {
        "device": args.device,
        "threads": torch.get_num_threads(),
        "width": args.width,
        "chunk": args.chunk_size,
        "vmap_chunk": args.vmap_chunk_size,
        "warmup": not args.quick,
    }

    def memory(cfg: dict[str, Any]) -> dict[str, Any]:
        return run_isolated(cfg, args.worker_timeout) if isolate else memory_config(cfg)

    methods = [m for m in args.methods.split(",") if m]
    for model in [m for m in args.models.split(",") if m]:
        n = args.mlp_batch if model == "mlp" else args.cnn_batch
        print(f"[{time.perf_counter() - started:6.1f}s] {model} n={n}: memory", file=sys.stderr)
        mem = {m: memory({**base_cfg, "model": model, "n": n, "method": m}) for m in methods}
        print(f"[{time.perf_counter() - started:6.1f}s] {model} n={n}: timing", file=sys.stderr)
        s = build(model, n, args.device, args.width)
        fns = {m: make_fn(m, s, args.chunk_size, args.vmap_chunk_size) for m in methods}
        timing = time_methods(fns, args.device, args.repeat, args.min_time)
        del s, fns
        results["sections"][model] = {
            "title": describe_model(model, args.width),
            "n": n,
            "n_params": sum(p.numel() for p in make_model(model, args.width).parameters()),
            "chunk": args.chunk_size,
            "vmap_chunk": args.vmap_chunk_size,
            "methods": methods,
            "timing": timing,
            "memory": mem,
        }
    sizes = [int(v) for v in args.sizes.split(",") if v]
    results["scaling"] = []
    if not args.no_scaling:
        for n in sizes:
            for m in [v for v in args.scaling_methods.split(",") if v]:
                elapsed = time.perf_counter() - started
                print(f"[{elapsed:6.1f}s] scaling mlp n={n} {m}", file=sys.stderr)
                r = memory({**base_cfg, "model": "mlp", "n": n, "method": m})
                vmap = m in VMAP_METHODS
                r["chunk_used"] = (
                    "–"
                    if m in ("plain", "loop")
                    else (args.vmap_chunk_size if vmap else args.chunk_size)
                )
                # Time here, not in the memory worker (whose allocator is slowed on purpose):
                # on CUDA as the main tables; on CPU one call, warm from the main tables.
                s = build("mlp", n, args.device, args.width)
                fn = make_fn(m, s, args.chunk_size, args.vmap_chunk_size)
                if cuda:
                    timed = time_methods({m: fn}, args.device, args.repeat, args.min_time)
                else:
                    timed = time_methods({m: fn}, args.device, 1, 0.0, warmup=False)
                r["time_s"] = timed[m]["median_s"]
                del s, fn
                results["scaling"].append(r)
    if hasattr(os, "getloadavg"):
        results["env"]["loadavg_end"] = os.getloadavg()
    results["env"]["wall_s"] = time.perf_counter() - started
    print(render(results, sizes))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1, default=str))
    return results


def render(results: dict[str, Any], sizes: list[int]) -> str:
    env = results["env"]
    parts = [
        f"`{env['command']}`",
        "",
        f"device: {env['device_name']}; torch {env['torch']}, Python {env['python']}, "
        f"{env['threads']} threads, THP_MEM_ALLOC_ENABLE={env['THP_MEM_ALLOC_ENABLE']}; "
        f"load average {tuple(round(v, 1) for v in env.get('loadavg_start', ()))} → "
        f"{tuple(round(v, 1) for v in env.get('loadavg_end', ()))}; wall {env['wall_s']:.0f} s",
        "",
    ]
    for section in results["sections"].values():
        parts += [main_table(section), ""]
    if results["scaling"]:
        parts += [
            "**Peak memory vs n** (MLP; probes with top_eigenvalue='none'; fixed chunk_size)",
            "",
            scaling_table(results["scaling"], sizes),
            "",
        ]
    parts += ["**Targets**", "", *verdicts(results)]
    return "\n".join(parts)


if __name__ == "__main__":
    main()
