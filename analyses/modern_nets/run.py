"""The paper's headline on modern networks: AdamW baseline vs SVRG vs alpha-SVRG, on the GPU.

    # GPU (results/, see results/command.txt for the exact device commands)
    PYTHONPATH=. python3 analyses/modern_nets/run.py --out DIR --runs-dir /tmp/mn_runs
    # a follow-up call: only some methods / lr schedules, fitted runs from an earlier fit
    ... run.py --methods alpha-svrg,alpha-svrg-fitted --schedules results/fitted_schedules.json
    # tables over several calls' results folders (paired by seed across calls)
    ... run.py --combine results results/followup --out results/combined
    # CPU, CI (both lr schedules; tests/test_modern_nets_followup.py adds a follow-up + --combine)
    THP_MEM_ALLOC_ENABLE=1 .venv/bin/python analyses/modern_nets/run.py --quick

1. data: Fashion-MNIST (a fixed seeded training subset, the whole test set)
2. calibrate: solo time of one training pass per network; choose the number of epochs so that
   all runs, concurrently on the one GPU, fit the budget (config.py)
3. train, all at once as separate processes: {ConvNeXt, ViT} x {baseline, SVRG, alpha-SVRG
   linear 0.75} x {lr schedules} x seeds, official AdamW recipe + augmentation
   (gradvar.train recipe="official"; lr "cosine" = warmup + cosine to 1e-6, "constant" = the
   same warmup, then 4e-3 held); the seed-0 baseline also logs alpha* with the paper's protocol
   (gradvar.paper_alpha)
4. as soon as a network's seed-0 baseline is done: fit_schedule on its alpha*, and train
   alpha-SVRG with the fitted schedule for every seed (at once, with --schedules FILE: the
   schedules an earlier call fitted, fitted_schedules.json)
5. tables: final train loss (full pass, and the last epoch's mean mini-batch loss), test
   accuracy, mean ± std over seeds, paired differences, wall time per epoch

Settings in config.py (FULL, or QUICK with --quick: CPU, tiny nets, runs in-process); one run
and the solo timing in training.py, tables in tables.py, figures in figures.py.
"""

from __future__ import annotations

import os

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # before torch is imported

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

import gradvar  # noqa: E402
from gradvar import schedules  # noqa: E402
from gradvar.train import read_metrics  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from config import FULL, QUICK  # noqa: E402
from figures import alpha_figure, loss_gap_figure  # noqa: E402
from tables import (  # noqa: E402
    KEY,
    LR_SCHEDULES,
    METHODS,
    collect,
    markdown,
    read_call,
    run_label,
    schedule_key,
)
from training import calibrate, load, passes_per_epoch, worker  # noqa: E402


# ----------------------------------------------------------------------------- driver
def fit_from_baseline(run_dir: Path, steps_per_epoch: int, epochs: int, metric: str):
    """fit_schedule(kind="auto") on the seed-0 baseline's alpha* log."""
    rows = [(s, v) for s, _, m, v in read_metrics(run_dir) if m == metric]
    steps = np.array([s for s, _ in rows])
    values = np.array([v for _, v in rows])
    snapshot_steps = (steps // steps_per_epoch) * steps_per_epoch
    return gradvar.fit_schedule(
        (steps, values, snapshot_steps), kind="auto", total_steps=epochs * steps_per_epoch
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CPU, tiny nets, in-process")
    parser.add_argument("--out", type=Path, help="results folder (default: config's out)")
    parser.add_argument("--runs-dir", type=Path, help="run directories (default: out/runs)")
    parser.add_argument("--parallel", action="store_true", help="processes even with --quick")
    parser.add_argument(
        "--methods", default=",".join(METHODS), help=f"comma list of {', '.join(METHODS)}"
    )
    parser.add_argument(
        "--lr", help=f"comma list of lr schedules: {', '.join(LR_SCHEDULES)} (default: config's)"
    )
    parser.add_argument(
        "--schedules",
        type=Path,
        help="fitted_schedules.json of an earlier call: its fitted runs start at once from these",
    )
    parser.add_argument("--deadline-s", type=float, help="stop unfinished runs after this")
    parser.add_argument("--epochs", type=int, help="train this many epochs (default: config's)")
    parser.add_argument(
        "--combine",
        nargs="+",
        type=Path,
        metavar="FOLDER",
        help="only write tables over these calls' results folders (later ones win) into --out",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    return parser.parse_args()


def _choices(text: str, allowed: tuple[str, ...], flag: str) -> list[str]:
    values = [v for v in text.split(",") if v]
    bad = [v for v in values if v not in allowed]
    if bad or not values:
        raise SystemExit(f"{flag} {text!r}: {bad or 'empty'} not among {', '.join(allowed)}")
    return values


def combine(folders: list[Path], out: Path) -> None:
    """summary.csv, epoch_losses.csv and summary.md over several calls' results folders."""
    calls = [read_call(folder) for folder in folders]
    summary = pd.concat([c[0] for c in calls]).drop_duplicates(subset=KEY, keep="last")
    epochs = pd.concat([c[1] for c in calls]).drop_duplicates(subset=[*KEY, "epoch"], keep="last")
    out.mkdir(parents=True, exist_ok=True)
    summary.to_csv(out / "summary.csv", index=False)
    epochs.to_csv(out / "epoch_losses.csv", index=False)
    title = f"modern nets, combined: {', '.join(str(f) for f in folders)}"
    (out / "summary.md").write_text(markdown(summary, title))
    loss_gap_figure(epochs, out / "loss_gap.png")
    alpha_figure(folders, out / "alpha_star.png")
    print((out / "summary.md").read_text(), flush=True)


def main() -> None:
    args = parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return
    cfg = QUICK if args.quick else FULL
    out = args.out or HERE / cfg["out"]
    if args.combine:
        combine(args.combine, out)
        return
    methods = _choices(args.methods, METHODS, "--methods")
    lrs = _choices(args.lr or ",".join(cfg["lr_schedules"]), LR_SCHEDULES, "--lr")
    preloaded = json.loads(args.schedules.read_text()) if args.schedules else {}
    jobs = [(n, m, lr, s) for n in cfg["nets"] for lr in lrs for m in methods for s in cfg["seeds"]]
    for net in cfg["nets"]:  # before any work: a follow-up without its schedules
        for lr in lrs:
            if "alpha-svrg-fitted" in methods and "baseline" not in methods:
                if schedule_key(net, lr) not in preloaded:
                    raise SystemExit(
                        f"alpha-svrg-fitted for {net} with lr {lr} needs this call's seed-0 "
                        f"baseline (add baseline to --methods) or --schedules FILE with key "
                        f"{schedule_key(net, lr)!r}"
                    )
    seed0 = cfg["seeds"][0]
    runs = args.runs_dir or out / "runs"
    out.mkdir(parents=True, exist_ok=True)
    log_lines: list[str] = []

    def say(text: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {text}"
        print(line, flush=True)
        log_lines.append(line)

    t_start = time.perf_counter()
    torch.set_num_threads(1)
    parallel = args.parallel or not args.quick
    train_set, _ = load(cfg)
    steps = len(train_set) // cfg["batch_size"]
    if cfg["device"] == "cuda":
        say(f"device {torch.cuda.get_device_name()} torch {torch.__version__}")
    calibration = calibrate(cfg)
    say(f"solo seconds per pass: { {k: round(v, 5) for k, v in calibration.items()} }")

    def estimate(epochs: int) -> float:
        passes = {n: 0.0 for n in cfg["nets"]}
        for net, method, _, seed in jobs:
            log_alpha = method == "baseline" and seed == seed0
            passes[net] += epochs * passes_per_epoch(method, steps, cfg, log_alpha)
        return sum(p * calibration[n] for n, p in passes.items()) / cfg["concurrency_gain"]

    choices = (args.epochs,) if args.epochs else cfg["epoch_choices"]
    fits = [e for e in choices if estimate(e) <= cfg["budget_s"]]
    epochs = fits[0] if fits else choices[-1]
    say(
        f"{steps} steps/epoch; epochs {epochs} (estimate {estimate(epochs):.0f} s for "
        f"{len(jobs)} runs; budget {cfg['budget_s']} s); methods {methods}; lr {lrs}"
    )

    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    running: dict[tuple, subprocess.Popen] = {}
    done: dict[tuple, float] = {}
    started: dict[tuple, float] = {}
    fitted: dict[str, dict] = {}

    def launch(net: str, method: str, lr: str, seed: int, **extra) -> None:
        key = (net, method, lr, seed)
        label = run_label(*key)
        spec = {
            "quick": args.quick,
            "net": net,
            "method": method,
            "lr": lr,
            "seed": seed,
            "epochs": epochs,
            "run_dir": str(runs / label),
            "log_alpha": method == "baseline" and seed == seed0,
            **extra,
        }
        started[key] = time.perf_counter()
        if not parallel:
            worker(spec)
            done[key] = time.perf_counter()
            return
        logf = open(runs / f"{label}.log", "w")  # noqa: SIM115
        running[key] = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)],
            stdout=logf,
            stderr=subprocess.STDOUT,
            env=env,
        )

    def launch_fitted(net: str, lr: str, schedule: dict) -> None:
        total = schedule.get("total_steps")
        if total is not None and total != epochs * steps:
            say(f"{net} lr {lr}: schedule for {total} steps, this call trains {epochs * steps}")
            return
        path = runs / f"{schedule_key(net, lr)}-fitted-schedule.json"
        schedules.save(schedules.from_dict(schedule), path)
        for seed in cfg["seeds"]:
            launch(net, "alpha-svrg-fitted", lr, seed, alpha=str(path))

    def after_baseline(net: str, lr: str) -> None:
        """Fit the schedule on the seed-0 baseline's alpha*; start the fitted runs if asked."""
        try:
            fit = fit_from_baseline(
                runs / run_label(net, "baseline", lr, seed0), steps, epochs, cfg["fit_metric"]
            )
        except Exception as exc:  # noqa: BLE001 (reported, the other runs go on)
            say(f"{net} lr {lr}: fit failed: {exc!r}")
            return
        fitted[schedule_key(net, lr)] = {
            "schedule": fit.schedule.to_dict(),
            "candidates": fit.table().drop(columns="params").to_dict(orient="records"),
        }
        say(f"{net} lr {lr}: fitted {fit.schedule} (R² {fit.report.r2:.3f})")
        if "alpha-svrg-fitted" in methods and schedule_key(net, lr) not in preloaded:
            launch_fitted(net, lr, fit.schedule.to_dict())

    runs.mkdir(parents=True, exist_ok=True)
    for job in jobs:  # every call is a fresh experiment (epochs may differ)
        shutil.rmtree(runs / run_label(*job), ignore_errors=True)
    for net in cfg["nets"]:
        for lr in lrs:
            entry = preloaded.get(schedule_key(net, lr))
            if "alpha-svrg-fitted" in methods and entry is not None:
                say(f"{net} lr {lr}: fitted runs from {args.schedules}: {entry['schedule']}")
                launch_fitted(net, lr, entry["schedule"])
    first = [j for j in jobs if j[1] != "alpha-svrg-fitted"]
    # the seed-0 baselines first, so that the fitted runs can start as early as possible
    first.sort(key=lambda j: j[1] != "baseline" or j[3] != seed0)
    for job in first:
        launch(*job)
        if not parallel and job[1] == "baseline" and job[3] == seed0:
            after_baseline(job[0], job[2])
    deadline = t_start + (args.deadline_s or cfg["deadline_s"])
    while running:
        time.sleep(1.0)
        for key, proc in list(running.items()):
            if proc.poll() is None:
                continue
            del running[key]
            done[key] = time.perf_counter()
            tail = (runs / f"{run_label(*key)}.log").read_text()[-1500:]
            say(
                f"finished {key} rc={proc.returncode} in {done[key] - started[key]:.0f} s"
                + (f"\n{tail}" if proc.returncode else "")
            )
            if key[1] == "baseline" and key[3] == seed0 and proc.returncode == 0:
                after_baseline(key[0], key[2])
        if time.perf_counter() > deadline and running:
            say(f"deadline: stopping {sorted(running)}")
            for proc in running.values():
                proc.kill()
            for proc in running.values():
                proc.wait()
            running.clear()

    call = out.name
    summary, epoch_rows, alpha_rows = collect(runs, jobs, epochs, steps, call)
    summary.to_csv(out / "summary.csv", index=False)
    epoch_rows.to_csv(out / "epoch_losses.csv", index=False)
    alpha_rows.to_csv(out / "alpha_star.csv", index=False)
    (out / "fitted_schedules.json").write_text(json.dumps(fitted, indent=2, default=str))
    (out / "calibration.json").write_text(
        json.dumps(
            {
                "solo_s_per_pass": calibration,
                "epochs": epochs,
                "steps_per_epoch": steps,
                "estimate_s": estimate(epochs),
                "total_s": time.perf_counter() - t_start,
                "parallel": parallel,
                "device": cfg["device"],
                "torch": torch.__version__,
                "methods": methods,
                "lr_schedules": lrs,
                "schedules_from": str(args.schedules) if args.schedules else None,
            },
            indent=2,
        )
    )
    title = f"modern nets: {epochs} epochs x {steps} steps, seeds {list(cfg['seeds'])}"
    (out / "summary.md").write_text(markdown(summary, title))
    print((out / "summary.md").read_text(), flush=True)
    say(f"done in {time.perf_counter() - t_start:.0f} s -> {out}")
    (out / "driver.log").write_text("\n".join(log_lines) + "\n")


if __name__ == "__main__":
    main()
