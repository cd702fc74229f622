"""Does an α that AlphaSVRG measures itself help? MLP-4, Fashion-MNIST, SGD, 3 seeds.

    THP_MEM_ALLOC_ENABLE=1 .venv/bin/python analyses/measured_alpha/run.py [--quick]

1. train SGD, α-SVRG with the linear default, with the fitted schedule of
   analyses/fitted_schedule, and with alpha="measured" (gradvar.train; seeds 0, 1, 2)
2. final train loss (full pass) mean ± std over seeds, paired differences; seconds per epoch
3. diagnostic (seed 0, a few epochs, its own loop): AlphaSVRG(alpha="measured") with a
   gradvar.Monitor, so the measured α of every layer and step sits in the records beside the
   probed per-layer α* (same layer, probe set of fixed examples)
4. figures: train loss curves; measured α against probed α*

Re-running resumes: finished runs are not retrained (--quick starts afresh). Settings:
config.py (FULL, or QUICK).
"""

from __future__ import annotations

import os

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # before torch is imported
os.environ.setdefault("MPLBACKEND", "Agg")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

import gradvar  # noqa: E402
from gradvar import schedules  # noqa: E402
from gradvar.zoo import build_model, load_dataset  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # config.py; the shared _mlp4_run.py
from _mlp4_run import train_mlp4  # noqa: E402
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
batch_size, epochs = cfg["batch_size"], cfg["epochs"]
timings: dict[str, float] = {}
t_start = time.perf_counter()

# ----------------------------------------------------------------------------- 1. train
dataset = load_dataset(cfg["data"], split="train", n=cfg["n_train"], seed=0)  # fixed data
x, y = dataset.tensors  # x [N, 1, 28, 28], y [N]
model_kwargs = {"in_features": int(np.prod(x.shape[1:])), "num_classes": int(y.max()) + 1}
steps_per_epoch = len(y) // batch_size  # 468 (full), 8 (quick)
total_steps = epochs * steps_per_epoch

fitted_source = schedules.load(HERE / cfg["fitted"])
fields = {f.name for f in dataclasses.fields(fitted_source)}
# Mapped by fraction of training (the interval grid's fractions), as analyses/fitted_schedule
# does; unchanged on the full grid (468 steps per epoch, 10 epochs).
fitted = dataclasses.replace(
    fitted_source,
    **{k: v for k, v in (("total_steps", total_steps), ("hold", steps_per_epoch)) if k in fields},
)
measured = schedules.as_schedule(cfg["measured"])
methods = {
    "sgd": ("none", None),
    "alpha-svrg-linear": (
        "alpha-svrg",
        schedules.Linear(cfg["alpha0"], total_steps=total_steps, hold=steps_per_epoch),
    ),
    "alpha-svrg-fitted": ("alpha-svrg", fitted),
    "alpha-svrg-measured": ("alpha-svrg", measured),
}
losses = []
for seed in cfg["seeds"]:
    for method, (vr, alpha) in methods.items():
        run_dir = runs_dir / f"{method}-s{seed}"
        timings[f"train {run_dir.name}"], epoch_losses = train_mlp4(
            run_dir, dataset, cfg=cfg, model_kwargs=model_kwargs, seed=seed, vr=vr, alpha=alpha
        )
        losses += [
            {"method": method, "seed": seed, "epoch": e + 1, "train_loss": v}
            for e, v in enumerate(epoch_losses)
        ]
        print(
            f"{run_dir.name:26s} final train loss {epoch_losses[-1]:.4f} "
            f"[{timings[f'train {run_dir.name}']:.0f} s]",
            flush=True,
        )

# ----------------------------------------------------------------------------- 2. tables
loss_table = pd.DataFrame(losses)
loss_table.to_csv(out_dir / "train_loss.csv", index=False)
final = loss_table[loss_table["epoch"] == epochs].pivot(
    index="seed", columns="method", values="train_loss"
)
seconds = pd.DataFrame(
    [
        {"method": m, "seed": s, "seconds": timings[f"train {m}-s{s}"]}
        for s in cfg["seeds"]
        for m in methods
    ]
).pivot(index="seed", columns="method", values="seconds")
summary = pd.DataFrame(
    {
        "method": list(methods),
        "final_mean": [final[m].mean() for m in methods],
        "final_std": [final[m].std(ddof=1) for m in methods],  # sample std over seeds
        "per_seed": [" ".join(f"{v:.4f}" for v in final[m]) for m in methods],
        "minus_sgd_mean": [(final[m] - final["sgd"]).mean() for m in methods],
        "minus_linear_mean": [(final[m] - final["alpha-svrg-linear"]).mean() for m in methods],
        "minus_linear_std": [(final[m] - final["alpha-svrg-linear"]).std(ddof=1) for m in methods],
        "minus_fitted_mean": [(final[m] - final["alpha-svrg-fitted"]).mean() for m in methods],
        "wins_vs_linear": [int((final[m] < final["alpha-svrg-linear"]).sum()) for m in methods],
        "wins_vs_fitted": [int((final[m] < final["alpha-svrg-fitted"]).sum()) for m in methods],
        # wall seconds per epoch (median over seeds; 2 shared cores, so only roughly)
        "seconds_per_epoch": [float(seconds[m].median()) / epochs for m in methods],
    }
)
summary.to_csv(out_dir / "final_loss.csv", index=False)
print(summary.to_string(index=False), flush=True)

# ----------------------------------------------------------------------------- 3. diagnostic
# Its own loop (gradvar.train builds its optimizer inside, so its measured alphas are not
# reachable): the same model, data order per epoch from a seeded generator, SGD lr 0.1.
t0 = time.perf_counter()
model = build_model("mlp4", seed=0, **model_kwargs)
opt = gradvar.AlphaSVRG(
    torch.optim.SGD(model.parameters(), lr=cfg["optimizer"]["lr"]),
    measured,
    snapshot_interval=steps_per_epoch,
    named_parameters=model.named_parameters(),
)
gen = torch.Generator().manual_seed(1)
probe_index = torch.randperm(len(y), generator=gen)[: cfg["probe_examples"]]
monitor = gradvar.Monitor(
    model,
    F.cross_entropy,
    (x[probe_index], y[probe_index]),
    every=max(steps_per_epoch // 6, 1),  # 6 probes per epoch
    optimizer=opt,
    run="mlp4-measured-s0",
    steps_per_epoch=steps_per_epoch,
    top_eigenvalue="none",
)
torch.manual_seed(0)
for _ in range(cfg["diagnostic_epochs"]):
    order = torch.randperm(len(y), generator=gen)
    batches = [
        (x[order[i : i + batch_size]], y[order[i : i + batch_size]])
        for i in range(0, steps_per_epoch * batch_size, batch_size)
    ]
    opt.refresh_snapshot(model, batches, F.cross_entropy)
    for xb, yb in batches:
        opt.zero_grad()
        F.cross_entropy(model(xb), yb).backward()
        with opt.at_snapshot(model):
            F.cross_entropy(model(xb), yb).backward()
        opt.step()
        monitor.step()
if monitor.records["step"].max() != opt.step_count:
    monitor.probe_now(opt.step_count)  # the last steps' measured alphas
records = monitor.records
records.to_csv(out_dir / "diagnostic_records.csv", index=False)
timings["diagnostic"] = round(time.perf_counter() - t0, 1)
timings["diagnostic probe overhead"] = round(monitor.overhead, 3)
weights = [n for n, _ in model.named_parameters() if n.endswith("weight")]
alpha_rows = records[records["metric"] == "alpha_measured"]
star_rows = records[records["metric"] == "alpha_star_layer"]
star_rows = star_rows[star_rows["step"] != star_rows["snapshot_step"]]
per_epoch = (
    alpha_rows.assign(epoch=alpha_rows["step"] // steps_per_epoch + 1)
    .groupby(["epoch", "layer"])["value"]
    .mean()
    .unstack("layer")[weights]
)
per_epoch_star = (
    star_rows.assign(epoch=(star_rows["step"] - 1) // steps_per_epoch + 1)
    .groupby(["epoch", "layer"])["value"]
    .mean()
    .unstack("layer")[weights]
)
diag = pd.concat({"measured_alpha": per_epoch, "probed_alpha_star_layer": per_epoch_star})
diag.to_csv(out_dir / "diagnostic_per_epoch.csv")
print(diag.round(3).to_string(), flush=True)

# ----------------------------------------------------------------------------- 4. figures
colors = {
    "sgd": "#444444",
    "alpha-svrg-linear": "#d62728",
    "alpha-svrg-fitted": "#1f77b4",
    "alpha-svrg-measured": "#2ca02c",
}
fig = Figure(figsize=(6.4, 4.0), dpi=110, layout="constrained")
ax = fig.add_subplot()
for method in methods:
    curve = loss_table[loss_table["method"] == method].groupby("epoch")["train_loss"]
    mean, std = curve.mean(), curve.std(ddof=1).fillna(0.0)
    ax.plot(mean.index, mean, color=colors[method], label=method)
    ax.fill_between(mean.index, mean - std, mean + std, color=colors[method], alpha=0.2, lw=0)
ax.set(
    xlabel="epoch",
    ylabel="train loss (full pass)",
    yscale="log",
    title=f"MLP-4, Fashion-MNIST, SGD lr 0.1: mean ± std over {len(cfg['seeds'])} seeds",
)
ax.legend(frameon=False, fontsize=8)
fig.savefig(out_dir / "train_loss.png")

fig = Figure(figsize=(7.2, 3.8), dpi=110, layout="constrained")
ax = fig.add_subplot()
palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"]
for layer, color in zip(weights, palette):
    rows = alpha_rows[alpha_rows["layer"] == layer].sort_values("step")
    ax.plot(rows["step"] / steps_per_epoch, rows["value"], color=color, lw=1, label=layer)
    stars = star_rows[star_rows["layer"] == layer].sort_values("step")
    ax.plot(stars["step"] / steps_per_epoch, stars["value"], "o", ms=3, color=color)
ax.set(
    xlabel="epoch",
    ylabel="alpha",
    ylim=(-0.05, 1.25),
    title="seed 0: measured α (lines) and probed α*_layer (dots; epoch 1 partly above 1.25)",
)
ax.legend(frameon=False, fontsize=8, loc="lower left", ncols=2)
fig.savefig(out_dir / "measured_alpha.png")

timings["total (this invocation)"] = round(time.perf_counter() - t_start, 1)
timings["torch_threads"] = cfg["threads"]
(out_dir / "timings.json").write_text(json.dumps(timings, indent=2) + "\n")
print(f"done in {time.perf_counter() - t_start:.0f} s -> {out_dir}", flush=True)
