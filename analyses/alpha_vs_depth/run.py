"""alpha* vs depth: MLP-1/2/4 on Fashion-MNIST with SGD and AdamW, the paper's sawtooth.

    THP_MEM_ALLOC_ENABLE=1 .venv/bin/python analyses/alpha_vs_depth/run.py [--quick]

1. data: Fashion-MNIST (CIFAR-10, the paper's dataset, is not available offline)
2. train six runs (mlp{1,2,4}-{sgd,adamw}), checkpoints every 1/12 epoch, snapshot = epoch
3. probe every checkpoint against its snapshot (start of its epoch) at two units: mini-batches
   of 128 (the paper's unit) and single examples; records with both alpha* estimators
   3b. zoom: MLP-4 re-trained for 2 epochs, a checkpoint every 3 steps after a snapshot
4. probe-set-size sensitivity of alpha* at a few checkpoints; weight drift from the snapshot
5. per-epoch mean alpha* beside the paper's numbers (METHOD.md §6; CIFAR-10 there)
6. figures: sawtooth, per-epoch alpha* per depth, alpha* vs depth, alpha* vs drift

Re-running resumes: finished runs are not retrained, probed checkpoints are not re-probed.
Settings are in config.py (FULL, or QUICK with --quick, which writes to results-quick/).
"""

from __future__ import annotations

import os

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # before torch is imported
os.environ.setdefault("MPLBACKEND", "Agg")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

import gradvar  # noqa: E402
from gradvar import plots  # noqa: E402
from gradvar.checkpoints import CheckpointSeries  # noqa: E402
from gradvar.records import WHOLE_MODEL, read_records, to_frame, write_records  # noqa: E402
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
out_dir.mkdir(parents=True, exist_ok=True)
seed, batch_size = cfg["seed"], cfg["batch_size"]
timings: dict[str, float] = {}
t_start = time.perf_counter()

# METHOD.md §6 (CIFAR-10, read off the paper's figures, ±0.02): alpha* mean over coordinates,
# mini-batch unit. MLPs: (value at epoch 2, value at epoch 11); logistic: a band "throughout".
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
in_features, num_classes = int(np.prod(x.shape[1:])), int(y.max()) + 1  # 784, 10
steps_per_epoch = len(y) // batch_size  # 468 (full), 16 (quick)
print(f"data {cfg['data']}: x {tuple(x.shape)}, {steps_per_epoch} steps/epoch", flush=True)

# Probe set: one seeded permutation of the training set. The mini-batch probe takes its first
# probe_batches * 128 examples, the per-example probe the first probe_examples of those.
order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed + 1))
n_mb = cfg["probe_batches"] * batch_size
probe_sets = {
    "128": (x[order[:n_mb]], y[order[:n_mb]]),  # [16384, 1, 28, 28], [16384]
    "sample": (x[order[: cfg["probe_examples"]]], y[order[: cfg["probe_examples"]]]),  # [1024, ...]
}
units = {"128": batch_size, "sample": "sample"}

# ----------------------------------------------------------------------------- 2. train
runs = {f"mlp{depth}-{opt}": (depth, opt) for opt in cfg["optimizers"] for depth in cfg["depths"]}
model_kwargs = {"in_features": in_features, "num_classes": num_classes}


def train_run(run: str, run_dir: Path, epochs: int, checkpoint_every: int) -> list[float]:
    """Train (or resume, or find finished) one run; its epoch train losses."""
    depth, opt = runs[run]
    t0 = time.perf_counter()
    train(
        build_model(f"mlp{depth}", seed=seed, **model_kwargs),  # 784-263-88-29-10 for L=4
        dataset,
        run_dir=run_dir,
        optimizer=opt,
        **cfg["optimizers"][opt],
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        checkpoint_every=checkpoint_every,
        resume=True,  # a finished run is a no-op; an interrupted one continues exactly
        progress=False,
        model_spec={"name": f"mlp{depth}", "kwargs": model_kwargs, "seed": seed},
        data_spec={"name": cfg["data"], "n": cfg["n_train"], "seed": seed},
    )
    losses = [v for _, _, m, v in read_metrics(run_dir) if m == "epoch_train_loss"]
    timings[f"train {run_dir.name}"] = time.perf_counter() - t0
    print(f"trained {run_dir.name}: epoch train losses {np.round(losses, 3).tolist()} "
          f"({timings[f'train {run_dir.name}']:.0f} s)", flush=True)  # fmt: skip
    return losses


train_loss = {run: train_run(run, runs_dir / run, cfg["epochs"], cfg["checkpoint_every"])
              for run in runs}  # fmt: skip
pd.DataFrame(train_loss, index=pd.RangeIndex(1, cfg["epochs"] + 1, name="epoch")).to_csv(
    out_dir / "train_loss.csv"
)


# ----------------------------------------------------------------------------- 3. probe
def reference_rows(result: gradvar.ProbeResult) -> list[dict]:
    """The reference code's estimator: plain mean of clamped alpha*_k over *all* coordinates.

    gradvar's alpha_star_mean skips 0/0 coordinates (e.g. weights of pixels that are zero in
    every probe example, dead ReLU units); the reference code's mean counts them as 0.
    """
    alpha = result.optimal_alpha()  # {param: alpha*_k clamped to [-2, 2], shaped like param}
    flat = {name: a.flatten() for name, a in alpha.items()}
    flat[WHOLE_MODEL] = torch.cat(list(flat.values()))  # [num_params]
    rows = []
    for layer, a in flat.items():
        rows.append({"layer": layer, "metric": "alpha_star_mean_ref", "value": float(a.mean())})
        zero = float((a == 0).double().mean())  # exactly 0: Cov_k = 0, i.e. the 0/0 coordinates
        rows.append({"layer": layer, "metric": "alpha_star_zero_fraction", "value": zero})
    return rows


def probe_run(run: str, run_dir: Path, unit_name: str, steps: range | None = None) -> Path:
    """Probe every checkpoint of ``run_dir`` (within ``steps``) against its snapshot.

    Records go to run_dir/records-unit-<unit>.parquet, rewritten after each checkpoint, so an
    interruption loses one checkpoint and a re-run skips those already there.
    """
    t0 = time.perf_counter()
    series = CheckpointSeries(run_dir)  # pairing "interval:468" from run.json
    model = build_model(f"mlp{runs[run][0]}", **model_kwargs)
    probe = gradvar.Probe(model, F.cross_entropy, unit=units[unit_name], top_eigenvalue="none",
                          seed=seed, progress=False)  # fmt: skip
    table_path = run_dir / f"records-unit-{unit_name}.parquet"
    table = read_records(table_path) if table_path.exists() else None
    done = set() if table is None else set(table["checkpoint"].dropna())
    todo = [(c, s) for c, s in series.pairs() if steps is None or c.step in steps]
    for checkpoint, snapshot in todo:
        if checkpoint.name in done:
            continue
        model.load_state_dict(checkpoint.load())
        result = probe.run(probe_sets[unit_name], snapshot=snapshot.load())
        meta = {"run": run_dir.name, "checkpoint": checkpoint.name, "step": checkpoint.step,
                "epoch": checkpoint.epoch, "snapshot_step": snapshot.step}  # fmt: skip
        extra = to_frame({**meta, **row, "n": result.n, "unit": result.unit}
                         for row in reference_rows(result))  # fmt: skip
        table = pd.concat([t for t in (table, result.to_frame(**meta), extra) if t is not None],
                          ignore_index=True)  # fmt: skip
        write_records(table, table_path)  # atomic
    key = f"probe {run_dir.name} unit={unit_name}"
    timings[key] = time.perf_counter() - t0
    print(f"{key}: {len(todo)} checkpoints ({timings[key]:.0f} s)", flush=True)
    return table_path


tables = [read_records(probe_run(run, runs_dir / run, unit)) for run in runs for unit in units]
everything = pd.concat(tables, ignore_index=True)
is_ref = everything["metric"].isin(["alpha_star_mean_ref", "alpha_star_zero_fraction"])
records = everything[~is_ref].reset_index(drop=True)  # DESIGN.md metrics only
reference = everything[is_ref].reset_index(drop=True)
# Committed CSVs, kept small: the alpha* and rho metrics (everything the probe measured is in
# runs/*/records-unit-*.parquet), values rounded to 6 decimals (they are O(1)).
kept = ["alpha_star_mean", "alpha_star_layer", "rho_mean"]
slim = records[records["metric"].isin(kept)].round({"value": 6, "epoch": 6})
write_records(slim, out_dir / "records.csv")
write_records(reference.round({"value": 6, "epoch": 6}), out_dir / "alpha_star_ref.csv")

# ----------------------------------------------------------------------------- 3b. zoom
# The first steps after a snapshot, which the 1/12-epoch checkpoints do not resolve: the same
# runs (same seed and data order, so the same trajectory) for 2 epochs, a checkpoint every
# few steps, probed over the start of epoch 2 at the paper's unit.
zoom = []
for run in cfg["zoom_runs"]:
    zoom_dir = runs_dir / f"{run}-zoom"
    train_run(run, zoom_dir, epochs=2, checkpoint_every=cfg["zoom_every"])
    window = range(steps_per_epoch, steps_per_epoch + cfg["zoom_steps"] + 1)
    zoom.append(read_records(probe_run(run, zoom_dir, "128", steps=window)))
zoom = pd.concat(zoom, ignore_index=True)
zoom = zoom[zoom["metric"].isin(kept + ["alpha_star_mean_ref"])]
write_records(zoom.round({"value": 6, "epoch": 6}), out_dir / "zoom_records.csv")
# Same trajectory: at the steps both series hold, alpha* must agree (bit-identical training).
shared = zoom.assign(run=zoom["run"].str.removesuffix("-zoom")).merge(
    records, on=["run", "step", "layer", "metric", "unit"], suffixes=("_zoom", "")
)
mismatch = float((shared["value_zoom"] - shared["value"]).abs().max())
print(f"zoom vs main runs at {shared['step'].nunique()} shared steps: max |diff| {mismatch:.2e}")


# ----------------------------------------------------------------------------- 4. sensitivity
def probe_size_sensitivity() -> pd.DataFrame:
    """alpha* at a few checkpoints with nested probe sets of growing size (both units)."""
    rows = []
    for run in cfg["sensitivity_runs"]:
        series = CheckpointSeries(runs_dir / run)
        model = build_model(f"mlp{runs[run][0]}", **model_kwargs)
        for at in cfg["sensitivity_at"]:
            checkpoint = min(series, key=lambda c: abs(c.step - at * steps_per_epoch))
            snapshot = series.snapshot_for(checkpoint)
            model.load_state_dict(checkpoint.load())
            sizes = [(batch_size, b * batch_size) for b in cfg["sensitivity_batches"]]
            sizes += [("sample", n) for n in cfg["sensitivity_examples"]]
            for unit, n in sizes:
                if n > len(y):
                    continue
                probe = gradvar.Probe(
                    model, F.cross_entropy, unit=unit, top_eigenvalue="none", seed=seed,
                    progress=False,
                )  # fmt: skip
                # the same permutation as the probe sets: every set nests in the larger ones
                result = probe.run((x[order[:n]], y[order[:n]]), snapshot=snapshot.load())
                alpha = torch.cat([a.flatten() for a in result.optimal_alpha().values()])
                rows.append(
                    {
                        "run": run,
                        "step": checkpoint.step,
                        "epoch": checkpoint.epoch,
                        "unit": str(unit),
                        "samples": result.n,
                        "examples": n,
                        "alpha_star_mean": result.value("alpha_star_mean"),
                        "alpha_star_mean_ref": float(alpha.mean()),
                        "alpha_star_layer": result.value("alpha_star_layer"),
                    }
                )
    return pd.DataFrame(rows)


t0 = time.perf_counter()
sensitivity_path = out_dir / "probe_size_sensitivity.csv"  # delete it to recompute
if sensitivity_path.exists():
    sensitivity = pd.read_csv(sensitivity_path)
else:
    sensitivity = probe_size_sensitivity()
    sensitivity.to_csv(sensitivity_path, index=False)
timings["sensitivity"] = time.perf_counter() - t0
print(sensitivity.to_string(float_format=lambda v: f"{v:.3f}"), flush=True)

# How far the weights have moved from the snapshot: |θ_t − θ̃| / |θ̃| over all parameters.
drift = []
for run in runs:
    series = CheckpointSeries(runs_dir / run)
    for checkpoint, snapshot in series.pairs():
        theta, theta_snap = checkpoint.load(), snapshot.load()
        moved = sum(float((theta[k] - theta_snap[k]).double().square().sum()) for k in theta)
        size = sum(float(theta_snap[k].double().square().sum()) for k in theta)
        drift.append({"run": run, "step": checkpoint.step, "drift": (moved / size) ** 0.5})
drift = pd.DataFrame(drift)
drift.to_csv(out_dir / "weight_drift.csv", index=False)

# ----------------------------------------------------------------------------- 5. per-epoch table
# Mean over the checkpoints strictly inside each epoch: at the snapshot alpha* = 1 exactly.
whole = everything[
    (everything["layer"] == WHOLE_MODEL)
    & everything["metric"].isin(["alpha_star_mean", "alpha_star_mean_ref"])
]
whole = whole[whole["step"] != whole["snapshot_step"]].copy()
whole["epoch_index"] = (whole["step"] // steps_per_epoch + 1).astype(int)  # 1-based
per_epoch = (
    whole.groupby(["run", "unit", "metric", "epoch_index"])["value"]
    .mean()
    .rename("alpha_star")
    .reset_index()
)
per_epoch.to_csv(out_dir / "per_epoch_alpha.csv", index=False)


def epoch_table(unit: str, metric: str) -> pd.DataFrame:
    """Runs × epochs of per-epoch mean alpha* (one unit, one estimator)."""
    part = per_epoch[(per_epoch["unit"] == unit) & (per_epoch["metric"] == metric)]
    table = part.pivot(index="run", columns="epoch_index", values="alpha_star")
    return table.reindex(list(runs)).rename(columns=lambda e: f"ep{e}")


def markdown(table: pd.DataFrame) -> str:
    """A GitHub-markdown table (pandas' to_markdown needs tabulate, not a dependency)."""
    cells = [
        [f"{v:.3f}" if isinstance(v, float) else str(v) for v in row] for row in table.itertuples()
    ]
    header = [table.index.name or "", *map(str, table.columns)]
    rows = [header, ["---"] * len(header), *cells]
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def paper_text(opt: str, depth: int) -> str:
    ref = PAPER[(opt, depth)]
    if "band" in ref:
        return f"{ref['band'][0]:.2f}–{ref['band'][1]:.2f}"
    return f"{ref['first']:.2f} → {ref['last']:.2f}"


# Summary beside the paper: epochs 2 and last (the paper's range is epochs 2-11), the mean over
# epochs 2..last and the least-squares trend per epoch over them.
summary = {"paper (CIFAR-10), ep 2 → 11": [paper_text(runs[r][1], runs[r][0]) for r in runs]}
for unit, metric, label in [
    ("128", "alpha_star_mean", "b=128"),
    ("128", "alpha_star_mean_ref", "b=128 ref. mean"),
    ("sample", "alpha_star_mean", "per example"),
]:
    table = epoch_table(unit, metric)
    later = table[[f"ep{e}" for e in range(2, cfg["epochs"] + 1)]]  # [runs, epochs 2..last]
    slope = [np.polyfit(np.arange(2, cfg["epochs"] + 1), v, 1)[0] if len(v) > 1 else np.nan
             for v in later.to_numpy()]  # fmt: skip
    summary[f"{label}: ep 2 → {cfg['epochs']}"] = [
        f"{a:.2f} → {b:.2f}" for a, b in zip(later.iloc[:, 0], later.iloc[:, -1])
    ]
    summary[f"{label}: mean ep 2-{cfg['epochs']}"] = later.mean(axis=1).round(3).tolist()
    summary[f"{label}: trend / epoch"] = [f"{v:+.3f}" for v in slope]
summary = pd.DataFrame(summary, index=pd.Index(list(runs), name="run"))
lines = ["### summary: whole-model alpha* (mean over coordinates), per-epoch means", "",
         markdown(summary), ""]  # fmt: skip
for unit, metric, title in [
    ("128", "alpha_star_mean", "mini-batch unit b=128, gradvar estimator (0/0 skipped)"),
    ("128", "alpha_star_mean_ref", "mini-batch unit b=128, reference estimator (0/0 as 0)"),
    ("sample", "alpha_star_mean", "per-example unit, gradvar estimator"),
    ("sample", "alpha_star_mean_ref", "per-example unit, reference estimator"),
]:
    table = epoch_table(unit, metric)
    table.insert(
        0, "paper (CIFAR-10, ep 2→11)", [paper_text(runs[r][1], runs[r][0]) for r in table.index]
    )
    lines += [f"### {title}", "", markdown(table), ""]
off = drift[drift["step"] % steps_per_epoch != 0]  # snapshots are at whole epochs
off = off.assign(epoch_index=off["step"] // steps_per_epoch + 1)
drift_table = off.pivot_table(index="run", columns="epoch_index", values="drift")
drift_table = drift_table.reindex(list(runs)).rename(columns=lambda e: f"ep{e}")
lines += ["### mean weight drift |θ_t − θ̃| / |θ̃| inside each epoch", "", markdown(drift_table), ""]
(out_dir / "per_epoch_alpha.md").write_text("\n".join(lines))
print("\n".join(lines), flush=True)

# ----------------------------------------------------------------------------- 6. figures
t0 = time.perf_counter()


def save(fig: Figure, name: str) -> None:
    plots.save_figure(fig, out_dir / name, formats=("png",), dpi=110)


# The sawtooth: whole-model alpha* over steps, one panel per run (paper's unit).
save(plots.alpha_star_over_steps(records, layers=WHOLE_MODEL, unit="128"), "sawtooth")
save(
    plots.alpha_star_over_steps(records, layers=WHOLE_MODEL, unit="sample"),
    "sawtooth_per_example",
)
save(plots.alpha_star_over_steps(zoom, layers=WHOLE_MODEL, unit="128"), "sawtooth_zoom")
# Per layer, MLP-4: the sawtooth of every weight and bias tensor.
mlp4 = [r for r in runs if runs[r][0] == max(cfg["depths"])]
save(plots.alpha_star_over_steps(records, runs=mlp4, unit="128"), "sawtooth_layers_mlp4")
# alpha* against the depth of the layer inside each model (gradvar's per-layer view).
save(plots.alpha_star_vs_depth(records, unit="128"), "alpha_vs_layer_depth")

# Per-epoch mean alpha*: epochs on x, one line per depth; paper's endpoints as open markers.
colors = {1: "tab:blue", 2: "tab:orange", 4: "tab:green"}
variants = [  # (unit, metric, line style, marker, legend text)
    ("128", "alpha_star_mean", "-", "o", "ours, b=128"),
    ("128", "alpha_star_mean_ref", ":", None, "ours, b=128, reference mean (0/0 as 0)"),
    ("sample", "alpha_star_mean", "--", "s", "ours, per example"),
]
fig = Figure(figsize=(11, 4.2), layout="constrained")
axes = np.atleast_1d(fig.subplots(1, len(cfg["optimizers"]), sharey=True))
for ax, opt in zip(axes, cfg["optimizers"]):
    for depth in cfg["depths"]:
        run, color = f"mlp{depth}-{opt}", colors.get(depth, "k")
        for unit, metric, ls, marker, _ in variants:
            part = per_epoch[
                (per_epoch["run"] == run)
                & (per_epoch["unit"] == unit)
                & (per_epoch["metric"] == metric)
            ]
            ax.plot(
                part["epoch_index"],
                part["alpha_star"],
                ls=ls,
                marker=marker,
                color=color,
                ms=3.5,
                lw=1.8 if ls == "-" else 1.0,
            )
        ref = PAPER.get((opt, depth))
        if ref and "band" in ref:
            ax.axhspan(*ref["band"], color=color, alpha=0.15, lw=0)
        elif ref:
            ax.plot(
                PAPER_EPOCHS,
                (ref["first"], ref["last"]),
                "D",
                mfc="none",
                color=color,
                ms=7,
                mew=1.6,
            )
            ax.plot(PAPER_EPOCHS, (ref["first"], ref["last"]), color=color, lw=0.6, alpha=0.5)
    ax.set(
        title=f"{'SGD' if opt == 'sgd' else 'AdamW'}: per-epoch mean α* (whole model)",
        xlabel="epoch (1-based)",
        ylabel="α* (mean over coordinates)",
    )
    ax.set_xticks(range(1, max(cfg["epochs"], PAPER_EPOCHS[1]) + 1))
handles = [Line2D([], [], color=colors[d], lw=3, label=f"MLP-{d}") for d in cfg["depths"]]
handles += [
    Line2D([], [], color="0.3", ls=ls, marker=marker, label=text)
    for _, _, ls, marker, text in variants
]
handles += [
    Line2D([], [], color="0.3", ls="", marker="D", mfc="none", label="paper, epochs 2 and 11"),
    Patch(color="0.3", alpha=0.2, label="paper, MLP-1 band"),
]
fig.legend(
    handles=handles,
    loc="outside right upper",
    fontsize="small",
    frameon=False,
    title="Fashion-MNIST (ours) vs\nCIFAR-10 (paper)",
)
save(fig, "per_epoch_alpha")

# alpha* against model depth: mean over epochs 2-3 and over the last two epochs.
fig = Figure(figsize=(9, 3.8), layout="constrained")
axes = fig.subplots(1, len(cfg["optimizers"]), sharey=True)
last = cfg["epochs"]
# epoch 1 is the transient from initialisation; the paper's range starts at epoch 2
spans = [((min(2, last), min(3, last)), "tab:purple"), ((max(1, last - 1), last), "tab:red")]
for ax, opt in zip(np.atleast_1d(axes), cfg["optimizers"]):
    for (lo, hi), color in spans:
        for unit, style in [("128", "-o"), ("sample", "--s")]:
            part = per_epoch[
                (per_epoch["unit"] == unit)
                & (per_epoch["metric"] == "alpha_star_mean")
                & per_epoch["epoch_index"].between(lo, hi)
            ]
            means = [
                part[part["run"] == f"mlp{d}-{opt}"]["alpha_star"].mean() for d in cfg["depths"]
            ]
            ax.plot(
                cfg["depths"],
                means,
                style,
                color=color,
                ms=4,
                label=f"ours, epochs {lo}-{hi}, {'b=128' if unit == '128' else 'per example'}",
            )
    for key, color, label in [
        ("first", "tab:purple", "paper, epoch 2"),
        ("last", "tab:red", "paper, epoch 11"),
    ]:
        values = [
            np.mean(PAPER[(opt, d)]["band"]) if "band" in PAPER[(opt, d)] else PAPER[(opt, d)][key]
            for d in cfg["depths"]
        ]
        ax.plot(cfg["depths"], values, "D", mfc="none", color=color, ms=7, label=label)
    ax.set(
        title="SGD" if opt == "sgd" else "AdamW",
        xlabel="MLP depth L",
        ylabel="per-epoch mean α*",
        xticks=list(cfg["depths"]),
    )
handles, labels = np.atleast_1d(axes)[0].get_legend_handles_labels()
fig.legend(handles, labels, loc="outside right upper", fontsize="small", frameon=False)
save(fig, "alpha_vs_depth")
# alpha* against the distance from the snapshot, every off-snapshot checkpoint (b=128).
points = whole[(whole["unit"] == "128") & (whole["metric"] == "alpha_star_mean")]
points = points.merge(drift, on=["run", "step"])
fig = Figure(figsize=(6.5, 4.2), layout="constrained")
ax = fig.subplots()
for run, (depth, opt) in runs.items():
    part = points[points["run"] == run]
    ax.scatter(part["drift"], part["value"], s=10, color=colors.get(depth, "k"),
               marker="o" if opt == "sgd" else "^", alpha=0.6, label=run)  # fmt: skip
ax.set(xscale="log", xlabel="|θ_t − θ̃| / |θ̃| (distance from the snapshot)",
       ylabel="α* (mean over coordinates, b=128)",
       title="α* falls as the weights move away from the snapshot")  # fmt: skip
ax.legend(fontsize="small", ncol=2)
save(fig, "alpha_vs_drift")
timings["figures"] = time.perf_counter() - t0

timings["total"] = time.perf_counter() - t_start
(out_dir / "timings.json").write_text(
    json.dumps(
        {k: round(v, 1) for k, v in timings.items()} | {"torch_threads": cfg["threads"]}, indent=2
    )
)
print(f"done in {timings['total']:.0f} s -> {out_dir}", flush=True)
