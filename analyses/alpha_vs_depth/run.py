"""alpha* vs depth: MLP-1/2/4 on Fashion-MNIST with the official SGD and AdamW recipes.

    THP_MEM_ALLOC_ENABLE=1 .venv/bin/python analyses/alpha_vs_depth/run.py [--quick]

1. data: a fixed subset of Fashion-MNIST (CIFAR-10, the paper's dataset, is not offline)
2. train mlp{1,2,4}-{sgd,adamw} with the official recipe (gradvar.train recipe="official")
   along two trajectories: the paper's, SVRG with the per-coordinate alpha* (vr="svrg-optimal"),
   and the plain optimizer's (vr="none"); both log alpha* with the paper's protocol
   (gradvar.paper_alpha: 1 at the snapshot, recomputed every 1/12 epoch from 32 mini-batches
   of the epoch) and with both estimators (the plain mean, alpha_star_mean_ref, the paper's;
   gradvar's alpha_star_mean, which skips 0/0 coordinates)
3. per-epoch means (snapshot points left out: the code logs 1 at one of 234 steps, here one of
   12 points) beside the paper's numbers (METHOD.md §6; CIFAR-10 there)
4. figures: the sawtooth, per-epoch alpha* per depth

Re-running resumes: finished runs are not retrained (--quick starts afresh). Settings in
config.py (FULL, or QUICK with --quick, which writes to results-quick/).
"""

from __future__ import annotations

import os

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # before torch is imported
os.environ.setdefault("MPLBACKEND", "Agg")

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from gradvar.train import read_metrics, train  # noqa: E402
from gradvar.zoo import build_model, load_dataset  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from config import FULL, QUICK  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--quick", action="store_true", help="CI settings, writes results-quick/")
args = parser.parse_args()
cfg = QUICK if args.quick else FULL
torch.set_num_threads(cfg["threads"])
out_dir, runs_dir = HERE / cfg["out"], HERE / cfg["runs_dir"]
if args.quick:  # CI's short run starts afresh: nothing an older configuration left stays
    shutil.rmtree(out_dir, ignore_errors=True)
out_dir.mkdir(parents=True, exist_ok=True)
seed, batch_size, epochs = cfg["seed"], cfg["batch_size"], cfg["epochs"]
timings: dict[str, float] = {}
t_start = time.perf_counter()

# METHOD.md §6 (CIFAR-10, read off the paper's figures, ±0.02): alpha* mean over coordinates
# along SVRG-alpha*. MLPs: (epoch 2, epoch 11); logistic regression: a band "throughout".
PAPER = {
    ("sgd", 1): {"band": (0.95, 0.97)},
    ("sgd", 2): {"first": 0.84, "last": 0.66},
    ("sgd", 4): {"first": 0.88, "last": 0.52},
    ("adamw", 1): {"band": (0.87, 0.92)},
    ("adamw", 2): {"first": 0.70, "last": 0.53},
    ("adamw", 4): {"first": 0.62, "last": 0.47},
}
PAPER_EPOCHS = (2, 11)

# ----------------------------------------------------------------------------- 1. data
dataset = load_dataset(cfg["data"], split="train", n=cfg["n_train"], seed=seed)
x, y = dataset.tensors  # x [N, 1, 28, 28] float32 in [0, 1], y [N] int64
model_kwargs = {"in_features": int(np.prod(x.shape[1:])), "num_classes": int(y.max()) + 1}
steps_per_epoch = len(y) // batch_size  # 234 (full), 8 (quick)
every = max(1, steps_per_epoch // cfg["alpha_log_per_epoch"])  # 19 (full)
print(f"data {cfg['data']}: x {tuple(x.shape)}, {steps_per_epoch} steps/epoch, alpha* every "
      f"{every} steps from {cfg['alpha_log_batches']} mini-batches", flush=True)  # fmt: skip

# ----------------------------------------------------------------------------- 2. train
runs = {f"mlp{d}-{o}": (d, o) for o in cfg["optimizers"] for d in cfg["depths"]}
rows, losses = [], []
for run, (depth, opt) in runs.items():
    for trajectory in cfg["trajectories"]:
        run_dir = runs_dir / f"{run}-{trajectory}"
        t0 = time.perf_counter()
        train(
            build_model(f"mlp{depth}", seed=seed, **model_kwargs),  # 784-263-88-29-10 for L=4
            dataset,
            run_dir=run_dir,
            optimizer=opt,
            recipe="official",
            epochs=epochs,
            batch_size=batch_size,
            seed=seed,
            vr=trajectory,
            alpha_log_every=every,
            alpha_log_batches=cfg["alpha_log_batches"],
            resume=True,  # a finished run is a no-op
            progress=False,
            model_spec={"name": f"mlp{depth}", "kwargs": model_kwargs, "seed": seed},
            data_spec={"name": cfg["data"], "n": cfg["n_train"], "seed": seed},
        )
        wall_file = run_dir / "wall_seconds.json"  # the training's own time, kept on re-runs
        if not wall_file.exists():
            wall_file.write_text(json.dumps(round(time.perf_counter() - t0, 1)))
        timings[run_dir.name] = json.loads(wall_file.read_text())
        metrics = read_metrics(run_dir)
        tag = {"run": run, "trajectory": trajectory, "depth": depth, "optimizer": opt}
        rows += [{**tag, "step": s, "epoch": e, "snapshot_step": (s // steps_per_epoch) *
                  steps_per_epoch, "metric": m, "value": v}
                 for s, e, m, v in metrics if m.startswith("alpha_star")]  # fmt: skip
        losses += [{**tag, "epoch": round(e), "train_loss": v}
                   for _, e, m, v in metrics if m == "epoch_train_loss"]  # fmt: skip
        print(f"{run_dir.name:24s} epoch losses "
              f"{[round(r['train_loss'], 3) for r in losses[-epochs:]]} "
              f"[{timings[run_dir.name]:.0f} s]", flush=True)  # fmt: skip
alpha = pd.DataFrame(rows)
alpha.round({"value": 6, "epoch": 6}).to_csv(out_dir / "alpha_star.csv", index=False)
pd.DataFrame(losses).to_csv(out_dir / "train_loss.csv", index=False)

# ----------------------------------------------------------------------------- 3. tables
off = alpha[alpha["step"] != alpha["snapshot_step"]].copy()  # the snapshot's forced 1 left out
off["epoch_index"] = off["step"] // steps_per_epoch + 1
per_epoch = (
    off.groupby(["run", "trajectory", "metric", "epoch_index"])["value"].mean().reset_index()
)
per_epoch.to_csv(out_dir / "per_epoch_alpha.csv", index=False)


def paper_text(opt: str, depth: int) -> str:
    ref = PAPER[(opt, depth)]
    if "band" in ref:
        return f"{ref['band'][0]:.2f}–{ref['band'][1]:.2f}"
    return f"{ref['first']:.2f} → {ref['last']:.2f}"


def markdown(table: pd.DataFrame) -> str:
    """A GitHub-markdown table (pandas' to_markdown needs tabulate, not a dependency)."""
    cells = [[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row]
             for row in table.itertuples()]  # fmt: skip
    header = [table.index.name or "", *map(str, table.columns)]
    return "\n".join("| " + " | ".join(r) + " |" for r in [header, ["---"] * len(header), *cells])


first_epoch = min(2, epochs)
variants = [  # (trajectory, metric, label)
    ("svrg-optimal", "alpha_star_mean_ref", "paper protocol (SVRG-α*, plain mean)"),
    ("svrg-optimal", "alpha_star_mean", "SVRG-α*, gradvar mean (0/0 skipped)"),
    ("none", "alpha_star_mean_ref", "plain optimizer, plain mean"),
    ("none", "alpha_star_mean", "plain optimizer, gradvar mean"),
]
summary = {"paper (CIFAR-10), ep 2 → 11": [paper_text(o, d) for d, o in runs.values()]}
for trajectory, metric, label in variants:
    part = per_epoch[(per_epoch["trajectory"] == trajectory) & (per_epoch["metric"] == metric)]
    table = part.pivot(index="run", columns="epoch_index", values="value").reindex(list(runs))
    later = table[[e for e in table.columns if e >= first_epoch]]
    slope = [np.polyfit(later.columns, v, 1)[0] if later.shape[1] > 1 else np.nan
             for v in later.to_numpy()]  # fmt: skip
    summary[f"{label}: ep {first_epoch} → {epochs}"] = [
        f"{a:.2f} → {b:.2f}" for a, b in zip(later.iloc[:, 0], later.iloc[:, -1])
    ]
    summary[f"{label}: trend/epoch"] = [f"{v:+.3f}" for v in slope]
summary = pd.DataFrame(summary, index=pd.Index(list(runs), name="run"))
lines = ["### whole-model alpha*, per-epoch means of the logged points (snapshot points left out)",
         "", markdown(summary), ""]  # fmt: skip
for trajectory, metric, label in variants:
    part = per_epoch[(per_epoch["trajectory"] == trajectory) & (per_epoch["metric"] == metric)]
    table = part.pivot(index="run", columns="epoch_index", values="value").reindex(list(runs))
    table = table.rename(columns=lambda e: f"ep{e}")
    lines += [f"### {label}", "", markdown(table), ""]
loss_table = pd.DataFrame(losses).pivot_table(
    index=["run", "trajectory"], columns="epoch", values="train_loss"
)
lines += ["### train loss (full pass) per epoch", "",
          markdown(loss_table.rename(columns=lambda e: f"ep{e}").reset_index(level=1)),
          ""]  # fmt: skip
(out_dir / "per_epoch_alpha.md").write_text("\n".join(lines))
print("\n".join(lines), flush=True)

# ----------------------------------------------------------------------------- 4. figures
colors = {1: "tab:blue", 2: "tab:orange", 4: "tab:green"}
fig = Figure(figsize=(12, 6.5), layout="constrained")
axes = fig.subplots(len(cfg["optimizers"]), len(cfg["depths"]), sharex=True, sharey=True,
                    squeeze=False)  # fmt: skip
styles = {("svrg-optimal", "alpha_star_mean_ref"): ("-", "paper protocol (SVRG-α*, plain mean)"),
          ("svrg-optimal", "alpha_star_mean"): ("--", "SVRG-α*, gradvar mean"),
          ("none", "alpha_star_mean_ref"): (":", "plain optimizer, plain mean")}  # fmt: skip
for i, opt in enumerate(cfg["optimizers"]):
    for j, depth in enumerate(cfg["depths"]):
        ax, run = axes[i, j], f"mlp{depth}-{opt}"
        for (trajectory, metric), (ls, label) in styles.items():
            part = alpha[(alpha["run"] == run) & (alpha["trajectory"] == trajectory)
                         & (alpha["metric"] == metric)]  # fmt: skip
            ax.plot(part["epoch"], part["value"], ls, lw=1, color=colors.get(depth, "k"),
                    label=label)  # fmt: skip
        ref = PAPER[(opt, depth)]
        if "band" in ref:
            ax.axhspan(*ref["band"], color="0.5", alpha=0.2, lw=0)
        else:
            ax.plot(PAPER_EPOCHS, (ref["first"], ref["last"]), "D", mfc="none", color="k", ms=6)
        ax.set(title=f"MLP-{depth}, {'SGD (Nesterov)' if opt == 'sgd' else 'AdamW'}",
               xlabel="epoch" if i == len(cfg["optimizers"]) - 1 else None,
               ylabel="α* (mean over coordinates)" if j == 0 else None)  # fmt: skip
axes[0, 0].legend(fontsize=7, frameon=False, loc="lower left")
fig.suptitle("α* along training, the paper's protocol (1 at each snapshot); ◇ the paper's epochs "
             "2 and 11 on CIFAR-10, band: its logistic regression")  # fmt: skip
fig.savefig(out_dir / "sawtooth.png", dpi=110)

fig = Figure(figsize=(11, 4.2), layout="constrained")
axes = np.atleast_1d(fig.subplots(1, len(cfg["optimizers"]), sharey=True))
for ax, opt in zip(axes, cfg["optimizers"]):
    for depth in cfg["depths"]:
        run, color = f"mlp{depth}-{opt}", colors.get(depth, "k")
        for (trajectory, metric), (ls, _) in styles.items():
            part = per_epoch[(per_epoch["run"] == run) & (per_epoch["trajectory"] == trajectory)
                             & (per_epoch["metric"] == metric)]  # fmt: skip
            ax.plot(part["epoch_index"], part["value"], ls, marker="o" if ls == "-" else None,
                    ms=3, color=color, label=f"MLP-{depth}" if ls == "-" else None)  # fmt: skip
        ref = PAPER[(opt, depth)]
        if "band" in ref:
            ax.axhspan(*ref["band"], color=color, alpha=0.15, lw=0)
        else:
            ax.plot(PAPER_EPOCHS, (ref["first"], ref["last"]), "D", mfc="none", color=color, ms=7)
    ax.set(title=f"{'SGD (Nesterov)' if opt == 'sgd' else 'AdamW'}: per-epoch mean α*",
           xlabel="epoch (1-based)", ylabel="α*")  # fmt: skip
    ax.legend(fontsize=8, frameon=False)
fig.suptitle("solid: paper protocol; dashed: gradvar mean on the same run; dotted: plain "
             "optimizer's trajectory; ◇: paper (CIFAR-10)")  # fmt: skip
fig.savefig(out_dir / "per_epoch_alpha.png", dpi=110)

timings["total (this invocation)"] = round(time.perf_counter() - t_start, 1)
timings["torch_threads"] = cfg["threads"]
(out_dir / "timings.json").write_text(json.dumps(timings, indent=2) + "\n")
print(f"done in {timings['total (this invocation)']:.0f} s -> {out_dir}", flush=True)
