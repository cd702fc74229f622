"""Where a steady-state probe run spends its host time (cProfile, top functions by own time).

    python benchmarks/profile_probe.py --cases mlp-256 gpt2
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))

from bench_engine import build, snapshot_of  # noqa: E402

from gradvar import Probe  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="*", default=["mlp-256"])
    parser.add_argument("--top", type=int, default=22)
    parser.add_argument("--quick", action="store_true", help="a tiny CPU case (smoke test)")
    parser.add_argument("--out", default=None, help="unused; for the quick-mode test harness")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cases = ["mlp-64"] if args.quick else args.cases
    for case in cases:
        model, x, y, loss = build(case, device)
        snap = snapshot_of(model)
        probe = Probe(model, loss, top_eigenvalue="none", progress=False)
        probe.run((x, y), snapshot=snap)
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(3):
            probe.run((x, y), snapshot=snap)
        if device == "cuda":
            torch.cuda.synchronize()
        profiler.disable()
        print(f"## {case}: 3 runs")
        pstats.Stats(profiler).sort_stats("tottime").print_stats(args.top)
    print("| done |")


if __name__ == "__main__":
    main()
