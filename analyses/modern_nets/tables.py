"""Tables of analyses/modern_nets: per-run rows from the run directories, and summary.md.

A job is (net, method, lr schedule, seed); ``lr`` is "cosine" (the official warmup + cosine to
1e-6) or "constant" (the same warmup, then the base lr held: the control that separates the
cosine decay's effect on alpha* and on the methods). Differences are paired by seed against the
baseline with the same net and lr schedule; "fitted minus linear" pairs alpha-svrg-fitted with
alpha-svrg.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from gradvar.train import read_metrics

METHODS = ("baseline", "svrg", "alpha-svrg", "alpha-svrg-fitted")
LR_SCHEDULES = ("cosine", "constant")
KEY = ["net", "method", "lr", "epochs", "seed"]  # one run; epochs: the run length


def run_label(net: str, method: str, lr: str, seed: int) -> str:
    """Run directory name: ``convnext-svrg-s0`` (cosine), ``convnext-svrg-constant-s0``."""
    return f"{net}-{method}{'' if lr == 'cosine' else '-' + lr}-s{seed}"


def schedule_key(net: str, lr: str) -> str:
    """Key of a fitted schedule in fitted_schedules.json: ``vit`` (cosine), ``vit-constant``."""
    return net if lr == "cosine" else f"{net}-{lr}"


def collect(
    runs: Path, jobs: list[tuple[str, str, str, int]], epochs: int, steps: int, call: str
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(summary, per-epoch losses, alpha* rows) of ``jobs`` from their run directories."""
    summary, epoch_rows, alpha_rows = [], [], []
    for net, method, lr, seed in jobs:
        run_dir = runs / run_label(net, method, lr, seed)
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
        key = {"net": net, "method": method, "lr": lr, "epochs": epochs, "seed": seed}
        epoch_rows += [
            {**key, "epoch": e, "train_loss": v, "minibatch_loss": mb_epoch.get(e, np.nan)}
            for e, v in enumerate(epoch_loss, start=1)
        ]
        alpha_rows += [
            {"net": net, "lr": lr, "step": s, "epoch": s / steps, "metric": m, "value": v}
            for s, _, m, v in rows
            if m.startswith("alpha_star")
        ]
        result_file = run_dir / "result.json"
        result = json.loads(result_file.read_text()) if result_file.exists() else {}
        summary.append(
            {
                **key,
                "call": call,
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
    return pd.DataFrame(summary), pd.DataFrame(epoch_rows), pd.DataFrame(alpha_rows)


def read_call(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(summary, epoch losses) of one call's results folder. Files from before the ``lr``,
    ``call`` and per-epoch ``epochs`` columns: the cosine schedule, the folder's name, the
    summary's run length."""
    summary = pd.read_csv(folder / "summary.csv")
    epochs = pd.read_csv(folder / "epoch_losses.csv")
    for frame in (summary, epochs):
        if "lr" not in frame:
            frame["lr"] = "cosine"
    if "call" not in summary:
        summary["call"] = folder.name
    if "epochs" not in epochs:
        epochs["epochs"] = int(summary["epochs"].max())
    return summary, epochs


def _mean_std(values: pd.Series, digits: int = 4) -> str:
    values = values.dropna()
    if len(values) == 0:
        return "—"
    spread = f" ± {values.std(ddof=1):.{digits}f}" if len(values) > 1 else ""
    return f"{values.mean():.{digits}f}{spread}"


def _paired(a: pd.Series, b: pd.Series) -> str:
    """``mean ± std (k/n lower)`` of a − b, paired by the index (seed)."""
    diff = (a - b).dropna()
    if len(diff) == 0:
        return "—"
    spread = f" ± {diff.std(ddof=1):.4f}" if len(diff) > 1 else ""
    mean = f"{diff.mean():+.4f}".replace("-", "−")
    return f"{mean}{spread} ({int((diff < 0).sum())}/{len(diff)} lower)"


def markdown(summary: pd.DataFrame, title: str) -> str:
    """summary.md: one table per (net, lr schedule, run length) with paired differences to the
    baseline of the same three."""
    summary = summary.drop_duplicates(subset=KEY, keep="last")
    lines = [f"# {title}", ""]
    for (net, lr, epochs), part in summary.groupby(["net", "lr", "epochs"], sort=False):
        base = part[part["method"] == "baseline"].set_index("seed")["final_train_loss"]
        params = int(part["params"].max()) if part["params"].notna().any() else "?"
        lines += [
            f"## {net}, lr {lr}, {epochs} epochs ({params} params)",
            "",
            "| method | final train loss (full pass) | last-epoch mini-batch loss | "
            "minus baseline (paired) | test acc | s/epoch (shared GPU) | finished | call |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for method in METHODS:
            rows = part[part["method"] == method].set_index("seed")
            if rows.empty:
                continue
            loss = rows["final_train_loss"]
            diff = _paired(loss, base) if method != "baseline" else "—"
            lines.append(
                f"| {method} | {_mean_std(loss)} | "
                f"{_mean_std(rows['last_epoch_minibatch_loss'])} | {diff} | "
                f"{_mean_std(rows['test_acc'])} | {_mean_std(rows['s_per_epoch'], 1)} | "
                f"{int(rows['finished'].sum())}/{len(rows)} | "
                f"{', '.join(sorted(set(rows['call'].astype(str))))} |"
            )
        series = {
            m: part[part["method"] == m].set_index("seed")["final_train_loss"]
            for m in ("alpha-svrg", "alpha-svrg-fitted")
        }
        if all(len(s) for s in series.values()):
            lines += [
                "",
                "fitted minus linear (paired): "
                + _paired(series["alpha-svrg-fitted"], series["alpha-svrg"]),
            ]
        lines.append("")
    return "\n".join(lines) + "\n"
