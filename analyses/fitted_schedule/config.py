"""Settings of analyses/fitted_schedule: FULL (the committed results) and QUICK (CI, < 90 s).

Training is analyses/alpha_vs_depth's mlp4-adamw setup (its config.py): MLP-4 on the same fixed
30 000-example subset of Fashion-MNIST, the official AdamW recipe (lr 4e-3, weight decay 0.05
except biases and 1-D tensors, per-iteration warmup + cosine to 1e-6; gradvar.recipe), batch
128, 10 epochs, one snapshot per epoch. AdamW rather than SGD: it is the recipe of the paper's
headline, and the recipe's weight decay 0.05 is decoupled there (with SGD it is a strong L2
term that holds MLP-4's train loss near 0.77). The seed sets the initialisation and the data
order; the data set is fixed.
"""

from __future__ import annotations

from typing import Any

FULL: dict[str, Any] = {
    "data": "fashion-mnist",
    "n_train": 30_000,  # 234 steps per epoch
    "epochs": 10,
    "batch_size": 128,
    "optimizer": {"optimizer": "adamw", "recipe": "official"},
    "seeds": (0, 1, 2),
    "alpha0": 0.75,  # the linear default: Linear(0.75 -> 0) across the snapshot intervals
    # alpha* of analyses/alpha_vs_depth (the paper's protocol): the first file that exists
    "records": (
        "../alpha_vs_depth/results/alpha_star.csv",
        "../alpha_vs_depth/results-quick/alpha_star.csv",
    ),
    "fit_run": "mlp4-adamw",
    "fit_trajectory": "none",  # alpha* measured on the baseline, as a user would
    "fit_metric": "alpha_star_mean",  # gradvar's estimator (0/0 coordinates skipped)
    "threads": 1,
    "out": "results",
    "runs_dir": "runs",
}

QUICK: dict[str, Any] = {
    **FULL,
    "n_train": 1024,  # 8 steps per epoch: the fitted schedule is mapped onto this grid
    "epochs": 2,
    "seeds": (0, 1),
    "threads": 2,
    "out": "results-quick",
    "runs_dir": "results-quick/runs",
}
