"""Figures of analyses/modern_nets over several calls (``run.py --combine``).

- loss_gap.png: full-pass train loss minus the baseline's (same net, lr schedule, run length and
  seed) after every epoch, mean ± std over seeds, one panel per (net, lr schedule, run length).
- alpha_star.png: alpha* logged on the seed-0 baselines (gradvar's estimator, points off the
  snapshot) against the epoch, with the schedule fit_schedule fitted to it, one panel per net.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from tables import schedule_key

from gradvar import schedules

COLORS = {"svrg": "C1", "alpha-svrg": "C2", "alpha-svrg-fitted": "C3"}


def loss_gap_figure(epochs: pd.DataFrame, path: Path) -> None:
    """Train loss minus the paired baseline's, per epoch (see the module docstring)."""
    groups = list(epochs.groupby(["net", "lr", "epochs"], sort=False))
    if not groups:
        return
    nets = list(dict.fromkeys(g[0][0] for g in groups))
    settings = list(dict.fromkeys(g[0][1:] for g in groups))  # (lr, epochs): one row each
    fig = Figure(figsize=(4.2 * len(nets), 2.6 * len(settings)), dpi=110, layout="constrained")
    for (net, lr, n_epochs), part in groups:
        index = settings.index((lr, n_epochs)) * len(nets) + nets.index(net) + 1
        ax = fig.add_subplot(len(settings), len(nets), index)
        table = part.pivot_table(index="epoch", columns=["method", "seed"], values="train_loss")
        if "baseline" not in table.columns.get_level_values(0):
            continue
        base = table["baseline"]
        for method, color in COLORS.items():
            if method not in table.columns.get_level_values(0):
                continue
            gap = table[method].sub(base).dropna(axis=1, how="all")
            mean, std = gap.mean(axis=1), gap.std(axis=1, ddof=1).fillna(0.0)
            ax.plot(mean.index, mean, color=color, lw=1.2, label=method)
            ax.fill_between(mean.index, mean - std, mean + std, color=color, alpha=0.2, lw=0)
        ax.axhline(0.0, color="0.5", lw=0.8)
        ax.set(xlabel="epoch", title=f"{net}, lr {lr}, {n_epochs} epochs")
    fig.supylabel("full-pass train loss − baseline's (paired by seed; mean ± std)")
    fig.axes[0].legend(frameon=False, fontsize=7)
    fig.savefig(path)


def _fitted(folder: Path) -> dict:
    path = folder / "fitted_schedules.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def alpha_figure(folders: list[Path], path: Path) -> None:
    """alpha* on the seed-0 baselines and the fitted schedules (see the module docstring)."""
    curves = []
    for folder in folders:
        file = folder / "alpha_star.csv"
        if not file.is_file() or file.stat().st_size < 10:
            continue
        rows = pd.read_csv(file)
        if rows.empty:
            continue
        rows = rows[rows["metric"] == "alpha_star_mean"]
        lr_col = rows["lr"] if "lr" in rows else pd.Series("cosine", index=rows.index)
        fits = _fitted(folder)
        for (net, lr), part in rows.assign(lr=lr_col).groupby(["net", "lr"], sort=False):
            schedule = fits.get(schedule_key(net, lr), {}).get("schedule")
            curves.append((net, f"{folder.name} ({lr})", part, schedule))
    nets = list(dict.fromkeys(c[0] for c in curves))
    if not nets:
        return
    fig = Figure(figsize=(6.0 * len(nets), 3.4), dpi=110, layout="constrained")
    axes = {net: fig.add_subplot(1, len(nets), k + 1) for k, net in enumerate(nets)}
    for k, (net, label, part, schedule) in enumerate(curves):
        ax, color = axes[net], f"C{k % 10}"
        steps_per_epoch = float((part["step"] / part["epoch"]).dropna().median())
        off = part[np.round(part["epoch"] % 1.0, 9) != 0.0]  # 1 at every snapshot: not drawn
        ax.plot(off["epoch"], off["value"], ".", ms=3, color=color, label=f"alpha*, {label}")
        if schedule is not None:
            steps = np.arange(schedule.get("total_steps") or int(part["step"].max()) + 1)
            value = schedules.from_dict(schedule)(steps)
            ax.plot(steps / steps_per_epoch, value, lw=0.8, color=color, label=f"fit, {label}")
    for net, ax in axes.items():
        ax.set(xlabel="epoch", ylabel="alpha* (mean over coordinates)", title=net)
        ax.legend(frameon=False, fontsize=7)
    fig.savefig(path)
