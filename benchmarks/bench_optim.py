#!/usr/bin/env python
"""Per-epoch wall time of ``gradvar.AlphaSVRG`` against its base optimizer (one run, one table).

Epoch definitions (N batches of the same pre-generated data, all on ``--device``):

    base      N × (zero_grad, forward+backward, base.step())                      reference
    svrg      refresh_snapshot (N × forward+backward at θ̃, μ̃ accumulated)
              + N × (zero_grad, fwd+bwd g, ``with opt.at_snapshot(model)``: fwd+bwd h, step)
              ideal 3.00 × base
    cache     refresh_snapshot(cache=True) (N × fwd+bwd, every batch gradient kept)
              + N × (zero_grad, fwd+bwd g, opt.use_cached(i), step)                ideal 2.00 × base

Timing: every epoch kind is warmed up, then ``--repeat`` interleaved rounds are run (each round
runs base, svrg and cache once, in a rotated order), so load from other processes hits all
three alike; the ratio to ``base`` is taken within each round and the table gives its median and
range. CUDA: synchronise before and after each epoch only (no syncs inside the timed epochs).

Overhead breakdown (on unless ``--no-breakdown``): a few more instrumented epoch of each kind
with a timer around every phase (CUDA: synchronised around every phase, so it adds sync latency
but attributes GPU time to the phase that queued it): zero_grad, fwd+bwd g, at_snapshot entry
(stash .grad, swap θ̃'s storage in, save buffers, replay torch's RNG), fwd+bwd h, at_snapshot
exit (fold g − αh, swap θ back, restore RNG), the correction (+αμ̃; cache mode also −αh_i)
and the base step, plus the refresh_snapshot pass. Reported in µs per step (refresh: per
batch), median of the instrumented epochs, with AlphaSVRG's own per-step time (its zero_grad
excess, at_snapshot entry and exit, use_cached, correction) as a share of a base step.

``--micro`` times the bookkeeping pieces (RNG capture/restore, clone/copy/swap/add over θ)
alone. (The svrg*/cache* columns of BENCHMARKS.md came from a ``--proposed`` mode that patched
in prototypes of two fixes; both are in gradvar now, so the mode is gone.)

Usage::

    THP_MEM_ALLOC_ENABLE=1 .venv/bin/python benchmarks/bench_optim.py --out results.json
    .venv/bin/python benchmarks/bench_optim.py --quick           # smoke run, < 20 s
    PYTHONPATH=. python benchmarks/bench_optim.py --device cuda --out results_optim_cuda.json
"""

from __future__ import annotations

import os

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # must precede `import torch`

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import gradvar  # noqa: E402
from gradvar.zoo import build_model  # noqa: E402

KINDS = ("base", "svrg", "cache")
BUDGET = 64 * 2**30  # cache budget: the benchmark sizes N so the cache fits
IDEAL = {"base": 1.0, "svrg": 3.0, "cache": 2.0}


# ---------------------------------------------------------------------------- setup


def model_spec(name: str, device: str, quick: bool) -> tuple[Callable[[], nn.Module], tuple]:
    """(factory, input shape without batch) for a benchmark model name."""
    if name == "mlp4":  # 784-263-88-29-10
        return (lambda: build_model("mlp4", seed=0, in_features=784, num_classes=10)), (784,)
    if name == "mlp_big":  # 784-2048-2048-10
        hidden = [256, 256] if quick else [2048, 2048]
        return (
            lambda: build_model(
                "gradvar.zoo.models:mlp",
                seed=0,
                depth=3,
                in_features=784,
                num_classes=10,
                hidden=hidden,
            )
        ), (784,)
    if name == "cnn":
        return (lambda: build_model("cnn", seed=0, in_channels=1, num_classes=10, image_size=28)), (
            1,
            28,
            28,
        )
    if name == "vit":
        dim, depth = (64, 1) if quick else (192, 4)
        return (
            lambda: build_model(
                "vit",
                seed=0,
                image_size=32,
                patch_size=4,
                in_channels=3,
                num_classes=10,
                dim=dim,
                depth=depth,
                heads=8,
                mlp_ratio=2,
            )
        ), (3, 32, 32)
    raise SystemExit(f"unknown model {name!r}")


def make_base(name: str, params) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=1e-3, momentum=0.9)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=1e-4)
    raise SystemExit(f"unknown optimizer {name!r}")


class Case:
    """One (model, base optimizer): a model, its optimizers and N batches on the device."""

    def __init__(
        self, model_name: str, opt_name: str, batch: int, n_batches: int, device: str, quick: bool
    ) -> None:
        factory, shape = model_spec(model_name, device, quick)
        torch.manual_seed(0)
        self.model = factory().to(device)
        self.model.train()
        self.device = device
        g = torch.Generator().manual_seed(1)
        self.batches = [
            (
                torch.randn(batch, *shape, generator=g).to(device),
                torch.randint(0, 10, (batch,), generator=g).to(device),
            )
            for _ in range(n_batches)
        ]
        params = list(self.model.parameters())
        self.n_params = sum(p.numel() for p in params)
        self.base = make_base(opt_name, params)
        # two wrappers around two separate bases would double optimizer state; one base is
        # enough since every epoch kind only needs *an* optimizer of that type to step.
        self.svrg = gradvar.AlphaSVRG(make_base(opt_name, params), alpha=0.75)
        self.loss_fn = F.cross_entropy

    def sync(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()

    # -- the three epochs, exactly as a user writes them ---------------------------------

    def epoch_base(self) -> None:
        model, opt, loss_fn = self.model, self.base, self.loss_fn
        for x, y in self.batches:
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()

    def epoch_svrg(self, opt=None) -> None:
        model, opt, loss_fn = self.model, opt or self.svrg, self.loss_fn
        opt.refresh_snapshot(model, self.batches, loss_fn)
        for x, y in self.batches:
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            with opt.at_snapshot(model):
                loss_fn(model(x), y).backward()
            opt.step()

    def epoch_cache(self, opt=None) -> None:
        model, opt, loss_fn = self.model, opt or self.svrg, self.loss_fn
        opt.refresh_snapshot(model, self.batches, loss_fn, cache=True, max_cache_bytes=BUDGET)
        for i, (x, y) in enumerate(self.batches):
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.use_cached(i)
            opt.step()
        opt._cache = None  # free the cache between rounds (the next refresh does too)

    def run(self, kind: str) -> float:
        fn = {
            "base": self.epoch_base,
            "svrg": self.epoch_svrg,
            "cache": self.epoch_cache,
        }[kind]
        self.sync()
        t0 = time.perf_counter()
        fn()
        self.sync()
        return time.perf_counter() - t0

    # -- instrumented epochs (breakdown) --------------------------------------------------

    def breakdown(self, kind: str) -> dict[str, float]:
        """Seconds per phase for one instrumented epoch of ``kind``."""
        model, loss_fn, sync = self.model, self.loss_fn, self.sync
        acc: dict[str, float] = defaultdict(float)
        clock = time.perf_counter

        def lap(name: str, t: float) -> float:
            sync()
            now = clock()
            acc[name] += now - t
            return now

        sync()
        t = clock()
        if kind == "base":
            opt = self.base
            for x, y in self.batches:
                opt.zero_grad()
                t = lap("zero_grad", t)
                loss_fn(model(x), y).backward()
                t = lap("fwd+bwd g", t)
                opt.step()
                t = lap("base step", t)
            return dict(acc)
        opt = self.svrg
        opt.refresh_snapshot(
            model, self.batches, loss_fn, cache=kind == "cache", max_cache_bytes=BUDGET
        )
        t = lap("refresh_snapshot", t)
        for i, (x, y) in enumerate(self.batches):
            opt.zero_grad()
            t = lap("zero_grad", t)
            loss_fn(model(x), y).backward()
            t = lap("fwd+bwd g", t)
            if kind == "svrg":
                cm = opt.at_snapshot(model)
                cm.__enter__()
                t = lap("at_snapshot enter", t)
                loss_fn(model(x), y).backward()
                t = lap("fwd+bwd h", t)
                cm.__exit__(None, None, None)
                t = lap("at_snapshot exit (fold)", t)
            else:
                opt.use_cached(i)
                t = lap("use_cached", t)
            opt.apply_correction()
            t = lap("correction (+αμ̃)" if kind == "svrg" else "correction (−αh_i+αμ̃)", t)
            opt.step()
            t = lap("base step", t)
        opt._cache = None
        return dict(acc)


# ---------------------------------------------------------------------------- main


def measure(case: Case, repeat: int, warmup: int, kinds: tuple) -> dict[str, list[float]]:
    for _ in range(warmup):
        for kind in kinds:
            case.run(kind)
    times: dict[str, list[float]] = {k: [] for k in kinds}
    m = len(kinds)
    for r in range(repeat):
        order = kinds[r % m :] + kinds[: r % m]
        for kind in order:
            times[kind].append(case.run(kind))
    return times


def _swap(ps: list, snap: list) -> None:
    current = [p.data for p in ps]
    for p, s in zip(ps, snap):
        p.data = s
    for p, c in zip(ps, current):
        p.data = c


def _micro_model(name: str, device: str, quick: bool, n: int, best: Callable) -> list:
    from gradvar.optim._correction import add_mean_grads_

    factory, _ = model_spec(name, device, quick)
    ps = [p.detach() for p in factory().to(device).parameters()]
    snap = [p.clone() for p in ps]
    k = max(5, n // 50) if name == "mlp_big" else n
    return [
        (
            f"{name}: clone θ (at_snapshot entry before the swap)",
            best(lambda: [p.clone() for p in ps], k),
        ),
        (
            f"{name}: _foreach_copy_ θ̃→θ (×2 per step)",
            best(lambda: torch._foreach_copy_(ps, snap), k),
        ),
        (
            f"{name}: _foreach_add_ g += α·x (fold, +αμ̃)",
            best(lambda: add_mean_grads_(ps, snap, 1e-30), k),
        ),
        (f"{name}: p.data swap in+out (at_snapshot now)", best(lambda: _swap(ps, snap), k)),
    ]


def micro(device: str, quick: bool) -> None:
    """Per-call cost of the pieces of AlphaSVRG's per-step bookkeeping (µs, best of 5)."""
    import random

    import numpy as np

    from gradvar._utils import capture_rng, restore_rng

    cuda = device.startswith("cuda")

    def best(fn: Callable[[], Any], n: int) -> float:
        out = []
        for _ in range(5):
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            if cuda:
                torch.cuda.synchronize()
            out.append((time.perf_counter() - t0) / n * 1e6)
        return min(out)

    n = 50 if quick else 500
    state = capture_rng()
    torch_only = lambda: capture_rng(torch_only=True)  # noqa: E731
    np_state, py_state = np.random.get_state(), random.getstate()
    rows = [
        ("capture_rng() (torch+cuda+numpy+python)", best(capture_rng, n)),
        ("restore_rng()", best(lambda: restore_rng(state), n)),
        ("  of which np.random.get_state()", best(np.random.get_state, n)),
        ("  of which np.random.set_state()", best(lambda: np.random.set_state(np_state), n)),
        ("  of which random.getstate()", best(random.getstate, n)),
        ("  of which random.setstate()", best(lambda: random.setstate(py_state), n)),
        ("capture_rng(torch_only=True) (per step now)", best(torch_only, n)),
    ]
    for name in ("mlp4", "mlp_big"):
        rows += _micro_model(name, device, quick, n, best)
    print("\n| piece | µs per call |\n|---|---|")
    for name, us in rows:
        print(f"| {name} | {us:.1f} |")


def fmt_range(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    med = statistics.median(values) * scale
    return f"{med:.{digits}f} [{min(values) * scale:.{digits}f}–{max(values) * scale:.{digits}f}]"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, < 20 s (smoke test)")
    ap.add_argument("--out", help="write every measurement as JSON here")
    ap.add_argument("--models", help="comma list of mlp4,cnn,mlp_big,vit")
    ap.add_argument("--opts", default="sgd,adamw", help="base optimizers: sgd,adamw")
    ap.add_argument("--batch", type=int, help="batch size (default 128 CPU, 256 CUDA)")
    ap.add_argument("--batches", help="N per model, e.g. mlp4=100,cnn=20 (epoch length)")
    ap.add_argument("--repeat", type=int, default=None, help="interleaved rounds (default 7)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (CPU)")
    ap.add_argument("--no-breakdown", action="store_true")
    ap.add_argument("--breakdown-repeat", type=int, default=3)
    ap.add_argument(
        "--micro", action="store_true", help="also time the wrapper's bookkeeping pieces alone"
    )
    args = ap.parse_args(argv)

    cuda = args.device.startswith("cuda")
    if not cuda:
        torch.set_num_threads(args.threads)
    models = (args.models or ("vit,mlp_big" if cuda else "mlp4,cnn,mlp_big")).split(",")
    batch = args.batch or (256 if cuda else 128)
    default_n = (
        {"mlp4": 10, "cnn": 4, "mlp_big": 6, "vit": 4}
        if args.quick
        else {"mlp4": 200, "cnn": 30, "mlp_big": 12, "vit": 40}
        if not cuda
        else {"mlp4": 200, "cnn": 200, "mlp_big": 100, "vit": 40}
    )
    if args.batches:
        for item in args.batches.split(","):
            k, v = item.split("=")
            default_n[k] = int(v)
    repeat = args.repeat or (2 if args.quick else 7)
    if args.quick:
        batch = min(batch, 32)

    env = {
        "device": torch.cuda.get_device_name() if cuda else platform.processor() or "cpu",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "batch": batch,
        "repeat": repeat,
        "argv": sys.argv,
        "THP_MEM_ALLOC_ENABLE": os.environ.get("THP_MEM_ALLOC_ENABLE"),
    }
    print(
        f"# AlphaSVRG epoch benchmark — {env['device']}, torch {env['torch']}, "
        f"threads {env['threads']}, batch {batch}, {repeat} rounds\n"
    )
    results: list[dict[str, Any]] = []
    rows, brows = [], []
    opts = args.opts.split(",")
    head = (
        "| model (params) | base opt | N | base ms/step | svrg ratio (ideal 3) | over 3× |"
        " cache ratio (ideal 2) | over 2× |"
    )
    sep = "|" + "---|" * (head.count("|") - 1)
    print(head + "\n" + sep, flush=True)
    t_start = time.perf_counter()
    for model_name in models:
        for opt_name in opts:
            n = default_n[model_name]
            case = Case(model_name, opt_name, batch, n, args.device, args.quick)
            kinds = KINDS
            times = measure(case, repeat, args.warmup, kinds)
            ratios = {k: [t / b for t, b in zip(times[k], times["base"])] for k in kinds[1:]}
            rec: dict[str, Any] = {
                "model": model_name,
                "opt": opt_name,
                "batches": n,
                "params": case.n_params,
                "times_s": times,
                "ratios": ratios,
            }
            base_ms = statistics.median(times["base"]) * 1e3 / n
            row = [f"{model_name} ({case.n_params / 1e6:.2f}M)", opt_name, str(n), f"{base_ms:.3f}"]
            for k in kinds[1:]:
                med = statistics.median(ratios[k])
                over = (med / IDEAL[k] - 1) * 100
                row += [fmt_range(ratios[k]), f"{over:+.1f}%"]
            rows.append(row)
            print("| " + " | ".join(row) + " |", flush=True)
            if not args.no_breakdown:
                bd: dict[str, dict[str, list[float]]] = {}
                for kind in kinds:
                    case.breakdown(kind)  # warm
                    runs = [case.breakdown(kind) for _ in range(args.breakdown_repeat)]
                    bd[kind] = {p: [r[p] for r in runs] for p in runs[0]}
                rec["breakdown_s"] = bd
                brows.append((model_name, opt_name, n, bd))
            results.append(rec)
            if args.out:
                Path(args.out).write_text(json.dumps({"env": env, "results": results}, indent=1))
            print(
                f"<!-- {model_name}/{opt_name} done at {time.perf_counter() - t_start:.0f} s -->",
                flush=True,
            )
            del case
            if cuda:
                torch.cuda.empty_cache()

    head = (
        "| model (params) | base opt | N | base ms/step | svrg ratio (ideal 3) | over 3× |"
        " cache ratio (ideal 2) | over 2× |"
    )
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(
        "\nratio = epoch time / base epoch time in the same round: median [min–max] over "
        f"{repeat} rounds.\n"
    )

    for model_name, opt_name, n, bd in brows:
        print(
            f"\n**Breakdown {model_name} / {opt_name}** — µs per step (refresh_snapshot: per "
            f"batch), median of {args.breakdown_repeat} instrumented epochs (synchronised "
            "phases)\n"
        )
        phases: list[str] = []
        bkinds = tuple(bd)
        for kind in bkinds:
            for p in bd[kind]:
                if p not in phases:
                    phases.append(p)
        print("| phase | " + " | ".join(bkinds) + " |")
        print("|---" * (len(bkinds) + 1) + "|")
        totals = {}
        for kind in bkinds:
            totals[kind] = statistics.median(
                [sum(v[i] for v in bd[kind].values()) for i in range(args.breakdown_repeat)]
            )
        for p in phases:
            cells = []
            for kind in bkinds:
                v = bd[kind].get(p)
                cells.append("" if v is None else f"{statistics.median(v) * 1e6 / n:.1f}")
            print(f"| {p} | " + " | ".join(cells) + " |")
        print(
            "| **epoch total / N** | "
            + " | ".join(f"{totals[k] * 1e6 / n:.1f}" for k in bkinds)
            + " |"
        )
        print(
            "| ratio to base | "
            + " | ".join(f"{totals[k] / totals['base']:.3f}" for k in bkinds)
            + " |"
        )
        # AlphaSVRG's own per-step time: its zero_grad excess (RNG capture), at_snapshot's
        # entry and exit (swaps, RNG replay, fold g − αh), use_cached and the correction.
        med = {k: {p: statistics.median(v) * 1e6 / n for p, v in bd[k].items()} for k in bkinds}
        base_step = sum(med["base"].values())
        own_cells, excess_cells = [], []
        for k in bkinds:
            x = med[k]
            own = (
                0.0
                if k == "base"
                else (
                    x["zero_grad"]
                    - med["base"]["zero_grad"]
                    + sum(
                        v
                        for p, v in x.items()
                        if p.startswith(("at_snapshot", "use_cached", "correction"))
                    )
                )
            )
            own_cells.append(f"{own:.0f} ({own / base_step * 100:.1f}%)")
            excess_cells.append(f"{own / base_step / IDEAL[k] * 100:+.1f}%")
        print("| AlphaSVRG's own µs/step (% of a base step) | " + " | ".join(own_cells) + " |")
        print("| → its share of the ratio's excess over ideal | " + " | ".join(excess_cells) + " |")

    if args.micro:
        micro(args.device, args.quick)
    if args.out:
        Path(args.out).write_text(json.dumps({"env": env, "results": results}, indent=1))
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
