"""The paper's headline on modern networks: AdamW baseline vs SVRG vs alpha-SVRG, on the GPU.

    # GPU (results/, see README.md for the exact device command)
    PYTHONPATH=. python3 analyses/modern_nets/run.py --out DIR --runs-dir /tmp/mn_runs
    # CPU, CI
    THP_MEM_ALLOC_ENABLE=1 .venv/bin/python analyses/modern_nets/run.py --quick

1. data: Fashion-MNIST (a fixed seeded training subset, the whole test set)
2. calibrate: solo time of one training pass per network; choose the number of epochs so that
   all runs, concurrently on the one GPU, fit the budget (config.py)
3. train, all at once as separate processes: {ConvNeXt, ViT} x {baseline, SVRG, alpha-SVRG
   linear 0.75} x seeds, official AdamW recipe + augmentation (gradvar.train recipe="official");
   the seed-0 baseline also logs alpha* with the paper's protocol (gradvar.paper_alpha)
4. as soon as a network's seed-0 baseline is done: fit_schedule on its alpha*, and train
   alpha-SVRG with the fitted schedule for every seed
5. tables: final train loss (full pass, and the last epoch's mean mini-batch loss), test
   accuracy, mean ± std over seeds, paired differences, wall time per epoch

Settings in config.py (FULL, or QUICK with --quick: CPU, tiny nets, runs in-process).
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
import torch.nn.functional as F  # noqa: E402

import gradvar  # noqa: E402
from gradvar import recipe, schedules  # noqa: E402
from gradvar.train import read_metrics, train  # noqa: E402
from gradvar.zoo import augment, build_model, load_dataset  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from config import FULL, QUICK  # noqa: E402

METHODS = ("baseline", "svrg", "alpha-svrg", "alpha-svrg-fitted")
VR = {
    "baseline": "none",
    "svrg": "svrg",
    "alpha-svrg": "alpha-svrg",
    "alpha-svrg-fitted": "alpha-svrg",
}
# The paper (ImageNet-1K train loss, AdamW baseline / SVRG / alpha-SVRG; README of the code)
PAPER = {"ConvNeXt-F": (3.487, 3.505, 3.467), "ViT-T": (3.443, 3.431, 3.415)}


def augment_shift_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random shift of up to 2 pixels (zero padded) and a horizontal flip with p = 0.5."""
    return augment(x, generator, max_shift=2, flip=True)


def load(cfg: dict) -> tuple[torch.utils.data.TensorDataset, torch.utils.data.TensorDataset]:
    train_set = load_dataset("fashion-mnist", split="train", n=cfg["n_train"], seed=0)
    test_set = load_dataset("fashion-mnist", split="test", n=cfg["n_test"], seed=0)
    return train_set, test_set  # x [N, 1, 28, 28] in [0, 1], y [N]


def model_for(cfg: dict, net: str, seed: int) -> torch.nn.Module:
    spec = cfg["nets"][net]
    return build_model(spec["name"], seed=seed, **spec["kwargs"]).to(cfg["device"])


# ----------------------------------------------------------------------------- worker
def worker(spec: dict) -> dict:
    """Train one (net, method, seed) run into spec["run_dir"]; write and return result.json."""
    cfg = QUICK if spec["quick"] else FULL
    torch.set_num_threads(1)
    torch.set_float32_matmul_precision("high")  # TF32 matmuls on the GPU, for all methods
    train_set, test_set = load(cfg)
    model = model_for(cfg, spec["net"], spec["seed"])
    steps_per_epoch = len(train_set) // cfg["batch_size"]
    log = {}
    if spec.get("log_alpha"):
        log = {
            "alpha_log_every": max(1, steps_per_epoch // cfg["alpha_log_per_epoch"]),
            "alpha_log_batches": cfg["alpha_log_batches"],
        }
    t0 = time.perf_counter()
    train(
        model,
        train_set,
        run_dir=spec["run_dir"],
        optimizer="adamw",
        recipe="official",  # lr 4e-3, wd 0.05 (not biases/1-D), warmup + cosine to 1e-6
        epochs=spec["epochs"],
        batch_size=cfg["batch_size"],
        seed=spec["seed"],
        vr=VR[spec["method"]],
        alpha=spec.get("alpha", cfg["alpha0"]),
        transform=augment_shift_flip,
        progress=False,
        model_spec={**cfg["nets"][spec["net"]], "seed": spec["seed"]},
        data_spec={"name": "fashion-mnist", "n": cfg["n_train"], "seed": 0},
        **log,
    )
    wall = time.perf_counter() - t0
    model.eval()
    x, y = (t.to(cfg["device"]) for t in test_set.tensors)
    with torch.no_grad():
        logits = torch.cat([model(x[i : i + 1000]) for i in range(0, len(y), 1000)])
    result = {
        **{k: spec[k] for k in ("net", "method", "seed", "epochs")},
        "wall_s": round(wall, 2),
        "test_loss": float(F.cross_entropy(logits, y)),
        "test_acc": float((logits.argmax(1) == y).double().mean()),
        "params": sum(p.numel() for p in model.parameters()),
    }
    Path(spec["run_dir"], "result.json").write_text(json.dumps(result))
    return result


# ----------------------------------------------------------------------------- calibration
def calibrate(cfg: dict, steps: int = 20) -> dict[str, float]:
    """Seconds per training pass (forward, backward, AdamW step; batch 128) of each net, solo."""
    x = torch.rand(cfg["batch_size"], 1, 28, 28, device=cfg["device"])
    y = torch.randint(10, (cfg["batch_size"],), device=cfg["device"])
    out = {}
    for net in cfg["nets"]:
        model = model_for(cfg, net, 0)
        opt = recipe.official_optimizer(model, "adamw")
        for i in range(2 * steps):
            if i == steps:
                if cfg["device"] == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        if cfg["device"] == "cuda":
            torch.cuda.synchronize()
        out[net] = (time.perf_counter() - t0) / steps
    return out


def passes_per_epoch(method: str, steps: int, cfg: dict, log_alpha: bool) -> float:
    """Training passes of one epoch: 1 per step (+2 for h, +1 per step for the snapshot pass
    of the SVRG variants), a third of a pass per step for the full-pass train loss, and the
    alpha* log's 2 passes per logged batch."""
    total = steps * (1 if method == "baseline" else 4) + steps / 3
    if log_alpha:
        total += 2 * cfg["alpha_log_batches"] * cfg["alpha_log_per_epoch"]
    return total


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CPU, tiny nets, in-process")
    parser.add_argument("--out", type=Path, help="results folder (default: config's out)")
    parser.add_argument("--runs-dir", type=Path, help="run directories (default: out/runs)")
    parser.add_argument("--parallel", action="store_true", help="processes even with --quick")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return
    cfg = QUICK if args.quick else FULL
    out = args.out or HERE / cfg["out"]
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
    jobs = [(n, m, s) for n in cfg["nets"] for m in METHODS for s in cfg["seeds"]]

    def estimate(epochs: int) -> float:
        passes = {n: 0.0 for n in cfg["nets"]}
        for net, method, seed in jobs:
            log_alpha = method == "baseline" and seed == cfg["seeds"][0]
            passes[net] += epochs * passes_per_epoch(method, steps, cfg, log_alpha)
        return sum(p * calibration[n] for n, p in passes.items()) / cfg["concurrency_gain"]

    fits = [e for e in cfg["epoch_choices"] if estimate(e) <= cfg["budget_s"]]
    epochs = fits[0] if fits else cfg["epoch_choices"][-1]
    say(
        f"{steps} steps/epoch; epochs {epochs} (estimate {estimate(epochs):.0f} s for "
        f"{len(jobs)} runs; budget {cfg['budget_s']} s)"
    )

    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    running: dict[tuple, subprocess.Popen] = {}
    done: dict[tuple, float] = {}
    started: dict[tuple, float] = {}
    fitted: dict[str, dict] = {}

    def launch(net: str, method: str, seed: int, **extra) -> None:
        key = (net, method, seed)
        spec = {
            "quick": args.quick,
            "net": net,
            "method": method,
            "seed": seed,
            "epochs": epochs,
            "run_dir": str(runs / f"{net}-{method}-s{seed}"),
            "log_alpha": method == "baseline" and seed == cfg["seeds"][0],
            **extra,
        }
        started[key] = time.perf_counter()
        if not parallel:
            worker(spec)
            done[key] = time.perf_counter()
            return
        logf = open(runs / f"{net}-{method}-s{seed}.log", "w")  # noqa: SIM115
        running[key] = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)],
            stdout=logf,
            stderr=subprocess.STDOUT,
            env=env,
        )

    def after_baseline(net: str) -> None:
        """Fit the schedule on the seed-0 baseline, then start the fitted runs."""
        run_dir = runs / f"{net}-baseline-s{cfg['seeds'][0]}"
        try:
            fit = fit_from_baseline(run_dir, steps, epochs, cfg["fit_metric"])
        except Exception as exc:  # noqa: BLE001 (reported, the other runs go on)
            say(f"{net}: fit failed: {exc!r}")
            return
        path = runs / f"{net}-fitted-schedule.json"
        schedules.save(fit.schedule, path)
        fitted[net] = {
            "schedule": fit.schedule.to_dict(),
            "candidates": fit.table().drop(columns="params").to_dict(orient="records"),
        }
        say(f"{net}: fitted {fit.schedule} (R² {fit.report.r2:.3f}); starting fitted runs")
        for seed in cfg["seeds"]:
            launch(net, "alpha-svrg-fitted", seed, alpha=str(path))

    runs.mkdir(parents=True, exist_ok=True)
    for net, method, seed in jobs:  # every call is a fresh experiment (epochs may differ)
        shutil.rmtree(runs / f"{net}-{method}-s{seed}", ignore_errors=True)
    first = [(n, m, s) for n, m, s in jobs if m != "alpha-svrg-fitted"]
    # the seed-0 baselines first, so that the fitted runs can start as early as possible
    first.sort(key=lambda j: j[1] != "baseline" or j[2] != cfg["seeds"][0])
    for job in first:
        launch(*job)
        if not parallel and job[1] == "baseline" and job[2] == cfg["seeds"][0]:
            after_baseline(job[0])
    deadline = t_start + cfg["deadline_s"]
    while running:
        time.sleep(1.0)
        for key, proc in list(running.items()):
            if proc.poll() is None:
                continue
            del running[key]
            done[key] = time.perf_counter()
            tail = (runs / f"{key[0]}-{key[1]}-s{key[2]}.log").read_text()[-1500:]
            say(
                f"finished {key} rc={proc.returncode} in {done[key] - started[key]:.0f} s"
                + (f"\n{tail}" if proc.returncode else "")
            )
            if key[1] == "baseline" and key[2] == cfg["seeds"][0] and proc.returncode == 0:
                after_baseline(key[0])
        if time.perf_counter() > deadline and running:
            say(f"deadline: stopping {sorted(running)}")
            for proc in running.values():
                proc.kill()
            for proc in running.values():
                proc.wait()
            running.clear()

    # ------------------------------------------------------------------------- tables
    summary, epochs_rows, alpha_rows = [], [], []
    for net, method, seed in jobs:
        run_dir = runs / f"{net}-{method}-s{seed}"
        rows = read_metrics(run_dir) if run_dir.is_dir() else []
        epoch_loss = [v for _, _, m, v in rows if m == "epoch_train_loss"]
        mb = pd.DataFrame(
            [(s, v) for s, _, m, v in rows if m == "train_loss"], columns=["step", "loss"]
        )
        mb_epoch = (
            mb.assign(epoch=(mb["step"] - 1) // steps + 1).groupby("epoch")["loss"].mean()
            if len(mb)
            else pd.Series(dtype=float)
        )
        for e, v in enumerate(epoch_loss, start=1):
            epochs_rows.append(
                {
                    "net": net,
                    "method": method,
                    "seed": seed,
                    "epoch": e,
                    "train_loss": v,
                    "minibatch_loss": mb_epoch.get(e, np.nan),
                }
            )
        alpha_rows += [
            {"net": net, "step": s, "epoch": s / steps, "metric": m, "value": v}
            for s, _, m, v in rows
            if m.startswith("alpha_star")
        ]
        result_file = run_dir / "result.json"
        result = json.loads(result_file.read_text()) if result_file.exists() else {}
        summary.append(
            {
                "net": net,
                "method": method,
                "seed": seed,
                "epochs": epochs,
                "epochs_done": len(epoch_loss),
                "finished": bool(result),
                "final_train_loss": epoch_loss[-1] if len(epoch_loss) == epochs else np.nan,
                "last_epoch_minibatch_loss": mb_epoch.get(epochs, np.nan),
                "test_acc": result.get("test_acc", np.nan),
                "test_loss": result.get("test_loss", np.nan),
                "wall_s": result.get("wall_s", np.nan),
                "s_per_epoch": result.get("wall_s", np.nan) / epochs,
                "params": result.get("params", np.nan),
            }
        )
    summary = pd.DataFrame(summary)
    summary.to_csv(out / "summary.csv", index=False)
    pd.DataFrame(epochs_rows).to_csv(out / "epoch_losses.csv", index=False)
    pd.DataFrame(alpha_rows).to_csv(out / "alpha_star.csv", index=False)
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
            },
            indent=2,
        )
    )

    lines = [f"# modern nets: {epochs} epochs x {steps} steps, seeds {list(cfg['seeds'])}", ""]
    for net in cfg["nets"]:
        part = summary[summary["net"] == net]
        base = part[part["method"] == "baseline"].set_index("seed")
        params = int(part["params"].max()) if part["params"].notna().any() else "?"
        lines += [
            f"## {net} ({params} params)",
            "",
            "| method | final train loss (full pass) | last-epoch mini-batch loss | "
            "minus baseline (paired) | test acc | s/epoch (shared GPU) | finished |",
            "|---|---|---|---|---|---|---|",
        ]
        for method in METHODS:
            rows = part[part["method"] == method].set_index("seed")
            loss, mbl = rows["final_train_loss"], rows["last_epoch_minibatch_loss"]
            diff = (loss - base["final_train_loss"]).dropna()
            lines.append(
                f"| {method} | {loss.mean():.4f} ± {loss.std(ddof=1):.4f} | "
                f"{mbl.mean():.4f} ± {mbl.std(ddof=1):.4f} | "
                f"{diff.mean():+.4f} ± {diff.std(ddof=1):.4f} "
                f"({int((diff < 0).sum())}/{len(diff)} lower) | "
                f"{rows['test_acc'].mean():.4f} ± {rows['test_acc'].std(ddof=1):.4f} | "
                f"{rows['s_per_epoch'].mean():.1f} | {int(rows['finished'].sum())}/{len(rows)} |"
            )
        lin = part[part["method"] == "alpha-svrg"].set_index("seed")["final_train_loss"]
        fit = part[part["method"] == "alpha-svrg-fitted"].set_index("seed")["final_train_loss"]
        gap = (fit - lin).dropna()
        lines += [
            "",
            f"fitted minus linear (paired): {gap.mean():+.4f} ± {gap.std(ddof=1):.4f}, "
            f"fitted lower on {int((gap < 0).sum())}/{len(gap)} seeds",
            "",
        ]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)
    say(f"done in {time.perf_counter() - t_start:.0f} s -> {out}")
    (out / "driver.log").write_text("\n".join(log_lines) + "\n")


if __name__ == "__main__":
    main()
