"""SGD vs SVRG vs SVRG with per-coordinate alpha* vs alpha-SVRG: train loss and gradient variance.

    THP_MEM_ALLOC_ENABLE=1 .venv/bin/python analyses/svrg_variance/run.py [--quick]

The paper's Figure (METHOD.md §6): MLP-4, 30 epochs, batch 128, one snapshot per epoch. Does
SVRG lead early and fall behind late, and does alpha-SVRG avoid SVRG's late variance rise?

1. data: Fashion-MNIST (CIFAR-10 cannot be had offline); two fixed, disjoint sets of M
   mini-batches of 128: the metric set and the alpha* set
2. one training loop for the four methods and every seed (per seed: same init and data order
   for all methods), following AlphaSVRG's documented loop; at fixed points of every epoch
   the metrics 1-3 of the gradient each method steps on, over the metric set's mini-batches:
   g_B (SGD) or v_B = g_B - alpha (h_B - mu~) (SVRG variants, alpha the one in force, per
   coordinate for SVRG-alpha*)
3. tables: train loss at epochs 10/20/30 and metric 2 over epochs 20-25 beside the paper's
4. figures: train loss (and its gap to SGD), metrics 1-3 over epochs and metric 2 of v over
   metric 2 of g at the same weights, alpha* used by SVRG-alpha*

Each finished (method, seed) is cached in runs/ (gitignored): a re-run only redoes the tables
and figures. Settings are in config.py (FULL, or QUICK with --quick, which writes to
results-quick/).
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
import torch.nn.functional as F  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

import gradvar  # noqa: E402
from gradvar import grads, recipe  # noqa: E402
from gradvar.metrics import variance_metrics  # noqa: E402
from gradvar.paper_alpha import interval_indices, minibatch_alpha_star  # noqa: E402
from gradvar.schedules import Constant, Linear  # noqa: E402
from gradvar.zoo import build_model, load_dataset  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from config import FULL, HARD, QUICK  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--quick", action="store_true", help="CI settings, writes results-quick/")
parser.add_argument("--hard", action="store_true", help="label noise, batch 64: results-hard/")
args = parser.parse_args()
cfg = QUICK if args.quick else HARD if args.hard else FULL
torch.set_num_threads(cfg["threads"])
out_dir, runs_dir = HERE / cfg["out"], HERE / cfg["runs_dir"]
if args.quick:  # CI's short run starts afresh: nothing an older configuration left stays
    shutil.rmtree(out_dir, ignore_errors=True)
out_dir.mkdir(parents=True, exist_ok=True)
batch_size, epochs = cfg["batch_size"], cfg["epochs"]
t_start = time.perf_counter()

# METHOD.md §6 (CIFAR-10, MLP-4, SGD, batch 128; read off the paper's figures, ±0.02).
METHODS = ("sgd", "svrg", "svrg-alpha*", "alpha-svrg")
PAPER_LOSS = {  # train loss at epochs 10 / 20 / 30
    "sgd": (0.88, 0.40, 0.19),
    "svrg": (0.75, 0.40, 0.26),
    "svrg-alpha*": (0.73, 0.31, 0.15),
    "alpha-svrg": (0.78, 0.37, 0.19),
}
PAPER_M2 = {"sgd": 6.6, "svrg": 10.7, "svrg-alpha*": 7.4, "alpha-svrg": 6.9}  # epochs 20-25
PAPER_EPOCHS, PAPER_WINDOW = (10, 20, 30), (20, 25)

# ----------------------------------------------------------------------------- 1. data
x, y = load_dataset(cfg["data"], split="train", n=cfg["n_train"], seed=0).tensors
if cfg.get("label_noise"):  # a fixed, seeded set of examples gets a uniformly random label
    noise_gen = torch.Generator().manual_seed(7)
    noisy = torch.rand(len(y), generator=noise_gen) < cfg["label_noise"]
    y = torch.where(noisy, torch.randint(10, (len(y),), generator=noise_gen), y)
# x [N, 1, 28, 28] float32 in [0, 1], y [N] int64
in_features, num_classes = int(np.prod(x.shape[1:])), int(y.max()) + 1  # 784, 10
steps_per_epoch = len(y) // batch_size  # 468 (full), 16 (quick); drop_last
total_steps = epochs * steps_per_epoch
print(f"data {cfg['data']}: x {tuple(x.shape)}, {steps_per_epoch} steps/epoch", flush=True)

# A fixed set of mini-batches from one seeded permutation (the same for every training seed:
# it is the measuring instrument).
perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(1))
n_metric = cfg["metric_batches"] * batch_size
metric_x, metric_y = x[perm[:n_metric]], y[perm[:n_metric]]  # [M*128, 1, 28, 28], [M*128]


def epoch_batches(seed: int, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The epoch's mini-batches, in an order that depends on (seed, epoch) only."""
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed * 1000 + epoch))
    return [
        (
            x[order[i * batch_size : (i + 1) * batch_size]],
            y[order[i * batch_size : (i + 1) * batch_size]],
        )
        for i in range(steps_per_epoch)
    ]  # steps_per_epoch × ([128, 1, 28, 28], [128])


@torch.no_grad()
def full_train_loss(model: torch.nn.Module) -> float:
    """Mean cross-entropy over the whole training set (the paper's train loss)."""
    total = sum(
        F.cross_entropy(model(x[i : i + 1024]), y[i : i + 1024], reduction="sum").double()
        for i in range(0, len(y), 1024)
    )
    return float(total) / len(y)


def minibatch_rows(engine: grads.GradientEngine, weights: dict[str, torch.Tensor]) -> torch.Tensor:
    """Gradients of the metric set's M mini-batches at ``weights``: [M, d] (d = 232 568)."""
    blocks = engine.blocks(weights, {}, metric_x, metric_y)  # no dropout: current RNG state
    return torch.cat([block.rows().reshape(block.n, -1) for block in blocks.values()], dim=1)


def flat(tensors: list[torch.Tensor] | tuple[torch.Tensor, ...]) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1) for t in tensors])  # [d]


# ----------------------------------------------------------------------------- 2. train
measure_at = {round(f * steps_per_epoch): f for f in cfg["metric_at"]}  # {234: 0.5, 468: 1.0}
alpha_every = steps_per_epoch // cfg["alpha_star_per_epoch"]  # 117: re-estimate alpha*
model_kwargs = {"in_features": in_features, "num_classes": num_classes}


def run_method(method: str, seed: int) -> dict[str, list[dict]]:
    """Train one method from seed's init and data order; measurements, losses, alpha*."""
    measurements, losses, alpha_stars = [], [], []
    model = build_model("mlp4", seed=seed, **model_kwargs)  # 784-263-88-29-10, same per seed
    names = [n for n, _ in model.named_parameters()]
    base = recipe.official_optimizer(  # Nesterov; weight decay (0.05) on weights only
        model, "sgd", lr=cfg["lr"], weight_decay=cfg.get("weight_decay")
    )
    alpha = {
        "sgd": None,
        "svrg": Constant(1.0),
        "svrg-alpha*": Constant(1.0),
        "alpha-svrg": Linear(cfg["alpha0"], total_steps=total_steps, hold=steps_per_epoch),
    }[method]
    opt = (
        base
        if alpha is None
        else gradvar.AlphaSVRG(
            base,
            alpha=alpha,
            snapshot_interval=steps_per_epoch,
            named_parameters=model.named_parameters(),
        )
    )
    scheduler = recipe.WarmupCosine(opt, total_steps, recipe.default_warmup_steps(total_steps))
    engine = grads.GradientEngine(model, F.cross_entropy, names, unit_size=batch_size)
    # the optimizer's parameter order (decay group, then no-decay group) → names
    by_id = {id(p): n for n, p in model.named_parameters()}
    opt_names = [by_id[id(p)] for group in opt.param_groups for p in group["params"]]

    def named(tensors: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        return dict(zip(opt_names, tensors))
    coordinate: dict[str, torch.Tensor] | None = None  # per-coordinate alpha* (SVRG-alpha*)
    tag = {"method": method, "seed": seed}

    def measure(epoch: int, step: int, fraction: float) -> None:
        """Metrics 1-3 of g_B and of the stepped-on v_B over the metric set's mini-batches."""
        current = {n: p.detach() for n, p in model.named_parameters()}
        g = minibatch_rows(engine, current)  # [M, d]
        row = {**tag, "epoch": epoch + 1, "step": step, "fraction": fraction}
        row.update({f"g_{k}": v for k, v in variance_metrics(g).items()})
        if alpha is None:  # SGD steps on g itself
            row.update({f"v_{k}": v for k, v in variance_metrics(g).items()})
            row["alpha"] = 0.0
        else:
            h = minibatch_rows(engine, named(opt.snapshot))  # [M, d] at θ̃
            mean_grad = flat([named(opt.mean_grad)[n] for n in names])  # [d], μ̃ of the epoch
            alpha_t = float(alpha(opt.snapshot_step))  # constant inside the interval
            scale = alpha_t * (flat([coordinate[n] for n in names]) if coordinate else 1.0)
            v = g - scale * (h - mean_grad)  # [M, d]: the gradient the optimizer steps on
            row.update({f"v_{k}": val for k, val in variance_metrics(v).items()})
            row["alpha"] = float(torch.as_tensor(scale).mean())
        measurements.append(row)

    step = 0
    for epoch in range(epochs):
        batches = epoch_batches(seed, epoch)
        if alpha is not None:
            opt.refresh_snapshot(model, batches, F.cross_entropy)  # θ̃ ← θ, μ̃ over the epoch
        batch_losses = []
        for i, (xb, yb) in enumerate(batches):
            if (
                method == "svrg-alpha*"
                and i % alpha_every == 0
                and i < alpha_every * cfg["alpha_star_per_epoch"]
            ):
                if i == 0:
                    coordinate = None  # θ = θ̃ right after the snapshot: alpha* = 1 exactly
                else:  # the paper's protocol from the epoch's own mini-batches
                    chosen = interval_indices(steps_per_epoch, cfg["alpha_star_batches"])
                    result = minibatch_alpha_star(model, F.cross_entropy,
                                                  [batches[j] for j in chosen],
                                                  named(opt.snapshot), seed=seed)  # fmt: skip
                    coordinate = {n: a.float() for n, a in result.alpha.items()}
                    alpha_stars.append(
                        {
                            **tag,
                            "step": step,
                            "epoch": step / steps_per_epoch,
                            "alpha_star_mean": result.mean,
                            "alpha_star_mean_ref": result.mean_ref,
                        }
                    )
                opt.set_coordinate_alpha(coordinate)
            opt.zero_grad()  # AlphaSVRG: also records the RNG state for at_snapshot
            loss = F.cross_entropy(model(xb), yb)  # g
            loss.backward()
            if alpha is not None:
                with opt.at_snapshot(model):  # θ̃: h, folded into .grad as g − α h
                    F.cross_entropy(model(xb), yb).backward()
            opt.step()  # SGD on v = g − α (h − μ̃)
            scheduler.step()  # per-iteration warmup + cosine
            batch_losses.append(loss.item())
            step += 1
            if i + 1 in measure_at:
                measure(epoch, step, measure_at[i + 1])
        losses.append(
            {
                **tag,
                "epoch": epoch + 1,
                "train_loss": full_train_loss(model),
                "minibatch_loss": float(np.mean(batch_losses)),
            }
        )
        print(
            f"{method:12s} seed {seed} epoch {epoch + 1:2d}  loss {losses[-1]['train_loss']:.4f}  "
            f"m2(v) {measurements[-1]['v_m2_total_variance']:.4g}",
            flush=True,
        )
    return {"measurements": measurements, "losses": losses, "alpha_stars": alpha_stars}


# Each finished (method, seed) is cached, so an interrupted run resumes where it stopped; a
# cache made with other settings is recomputed.
runs_dir.mkdir(parents=True, exist_ok=True)
settings = json.loads(
    json.dumps({k: v for k, v in cfg.items() if k not in ("seeds", "threads", "out", "runs_dir")})
)
parts: dict[str, list[dict]] = {"measurements": [], "losses": [], "alpha_stars": []}
timings: dict[str, float] = {}
for seed in cfg["seeds"]:
    for method in METHODS:
        cache = runs_dir / f"{method}-s{seed}.json"
        result = json.loads(cache.read_text()) if cache.exists() else {}
        if result.get("settings") != settings:
            t0 = time.perf_counter()
            result = run_method(method, seed)
            result["seconds"] = round(time.perf_counter() - t0, 1)
            result["settings"] = settings
            cache.write_text(json.dumps(result))
        timings[f"{method}-s{seed}"] = result["seconds"]
        for key in parts:
            parts[key] += result[key]

# ----------------------------------------------------------------------------- 3. tables
metrics = pd.DataFrame(parts["measurements"])
# at the same weights: how much the correction removes (< 1) or adds (> 1) to the variance
metrics["vr_ratio_m2"] = metrics["v_m2_total_variance"] / metrics["g_m2_total_variance"]
loss_table = pd.DataFrame(parts["losses"])
metrics.to_csv(out_dir / "metrics.csv", index=False)
loss_table.to_csv(out_dir / "train_loss.csv", index=False)
pd.DataFrame(parts["alpha_stars"]).to_csv(out_dir / "alpha_star.csv", index=False)

# The paper's epochs scaled to this run's length (identity for 30 epochs).
at_epochs = [max(1, round(e * epochs / 30)) for e in PAPER_EPOCHS]
lo, hi = (max(1, round(e * epochs / 30)) for e in PAPER_WINDOW)
# per (method, seed, epoch): mean of the epoch's measurement points
per_epoch = (
    metrics.groupby(["method", "seed", "epoch"], sort=False).mean(numeric_only=True).reset_index()
)
loss_seed = loss_table.pivot(index="epoch", columns=["method", "seed"], values="train_loss")
m2_seed = per_epoch.pivot(index="epoch", columns=["method", "seed"], values="v_m2_total_variance")
loss_at, m2_at = (
    loss_seed.T.groupby(level="method").mean().T,
    m2_seed.T.groupby(level="method").mean().T,
)
summary = []
for method in METHODS:
    ahead = loss_at[method] < loss_at["sgd"]  # on the seed-mean curves
    above = m2_at[method] > m2_at["sgd"]
    row = {"method": method}
    for e, paper in zip(at_epochs, PAPER_LOSS[method]):
        row[f"loss_ep{e}_mean"] = loss_seed.loc[e, method].mean()
        row[f"loss_ep{e}_std"] = loss_seed.loc[e, method].std(ddof=1)
        row[f"paper_loss_ep{e}"] = paper
    window = m2_seed.loc[lo:hi, method].mean()  # per seed: mean over the window's epochs
    sgd_window = m2_seed.loc[lo:hi, "sgd"].mean()
    row[f"m2_ep{lo}-{hi}_mean"], row[f"m2_ep{lo}-{hi}_std"] = window.mean(), window.std(ddof=1)
    row["paper_m2_ep20-25"] = PAPER_M2[method]
    row["m2_ratio_to_sgd"] = window.mean() / sgd_window.mean()
    row["paper_m2_ratio_to_sgd"] = PAPER_M2[method] / PAPER_M2["sgd"]
    in_window = per_epoch[(per_epoch["method"] == method) & per_epoch["epoch"].between(lo, hi)]
    row[f"g_m2_ep{lo}-{hi}_mean"] = in_window["g_m2_total_variance"].mean()  # raw g_B, own run
    row[f"vr_ratio_ep{lo}-{hi}_mean"] = in_window["vr_ratio_m2"].mean()  # m2(v) / m2(g)
    row["vr_ratio_max"] = metrics.loc[metrics["method"] == method, "vr_ratio_m2"].max()
    # first epoch from which the method stays behind SGD in loss / above SGD in metric 2
    behind_from = [e for e in loss_at.index if not ahead.loc[e:].any()]
    above_from = [e for e in m2_at.index if above.loc[e:].all()]
    row["behind_sgd_from_epoch"] = behind_from[0] if behind_from and method != "sgd" else None
    row["m2_above_sgd_from_epoch"] = above_from[0] if above_from and method != "sgd" else None
    row["epochs_ahead_of_sgd"] = int(ahead.sum())
    row["epochs_m2_above_sgd"] = int(above.sum())
    summary.append(row)
summary = pd.DataFrame(summary)
summary.to_csv(out_dir / "summary.csv", index=False)
print(summary.to_string(index=False), flush=True)

# ----------------------------------------------------------------------------- 4. figures
colors = {"sgd": "#444444", "svrg": "#d62728", "svrg-alpha*": "#2ca02c", "alpha-svrg": "#1f77b4"}
n_seeds = len(cfg["seeds"])


def band(ax, frame: pd.DataFrame, method: str, **kwargs) -> None:
    """Mean over seeds (line) ± one std (band) of ``frame[method]`` ([epoch, seed])."""
    mean, std = frame[method].mean(axis=1), frame[method].std(axis=1, ddof=1).fillna(0.0)
    ax.plot(mean.index, mean, color=colors[method], label=method, **kwargs)
    ax.fill_between(mean.index, mean - std, mean + std, color=colors[method], alpha=0.15, lw=0)


fig = Figure(figsize=(11.0, 3.8), dpi=110, layout="constrained")
ax, diff_ax = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
gap = loss_seed.sub(loss_seed["sgd"], level="seed")  # method − SGD, paired by seed
for method in METHODS:
    band(ax, loss_seed, method)
    band(diff_ax, gap, method)
ax.set(xlabel="epoch", ylabel="train loss (full pass)", yscale="log", title="train loss")
diff_ax.axhline(0.0, color="0.6", lw=0.8)
diff_ax.set(xlabel="epoch", ylabel="loss − SGD's loss (same seed)", title="gap to SGD (< 0: ahead)")
ax.legend(frameon=False)
fig.suptitle(
    f"MLP-4, Fashion-MNIST, Nesterov SGD lr {cfg['lr']} (cosine), batch {batch_size}: "
    f"mean ± std over {n_seeds} seeds"
)
fig.savefig(out_dir / "train_loss.png")

fig = Figure(figsize=(13.0, 3.6), dpi=110, layout="constrained")
panels = (
    ("v_m1_cosine", "metric 1: directional"),
    ("v_m2_total_variance", "metric 2: total"),
    ("v_m3_top_eigenvalue", "metric 3: top eigenvalue"),
    ("vr_ratio_m2", "metric 2 of v / of g (same weights)"),
)
for k, (column, title) in enumerate(panels):
    ax = fig.add_subplot(1, 4, k + 1)
    for method in METHODS:
        band(ax, per_epoch.pivot(index="epoch", columns=["method", "seed"], values=column), method)
    ax.set(xlabel="epoch", title=title, yscale="log" if k in (1, 2) else "linear")
    if k == 3:
        ax.axhline(1.0, color="0.6", lw=0.8)
    if k == 1:
        ax.axvspan(lo, hi, color="0.9", zorder=0)
fig.axes[0].legend(frameon=False, fontsize=8)
fig.suptitle(
    f"variance of the stepped-on mini-batch gradient (b = {batch_size}, "
    f"M = {cfg['metric_batches']} fixed mini-batches, mean of {len(measure_at)} "
    f"points/epoch; mean ± std over {n_seeds} seeds)"
)
fig.savefig(out_dir / "metrics.png")

if parts["alpha_stars"]:
    stars = pd.DataFrame(parts["alpha_stars"])
    fig = Figure(figsize=(6.4, 3.2), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    for seed, rows in stars.groupby("seed"):
        ax.plot(rows["epoch"], rows["alpha_star_mean"], ".-", ms=2, lw=0.7, label=f"seed {seed}")
    ax.set(
        xlabel="epoch",
        ylabel="mean per-coordinate alpha*",
        title="alpha* used by SVRG-alpha* (1 at every snapshot, not drawn)",
    )
    ax.legend(frameon=False, fontsize=8)
    fig.savefig(out_dir / "alpha_star.png")

timings["total (this invocation)"] = round(time.perf_counter() - t_start, 1)
timings["torch_threads"] = cfg["threads"]
(out_dir / "timings.json").write_text(json.dumps(timings, indent=2) + "\n")
print(f"done in {time.perf_counter() - t_start:.0f} s -> {out_dir}", flush=True)
