"""Settings of analyses/alpha_vs_depth: FULL (the committed results) and QUICK (CI, seconds).

The official recipe (gradvar.recipe, issue 11): SGD is Nesterov momentum 0.9 at lr 0.05, AdamW
lr 4e-3; weight decay 0.05 except on biases and 1-D tensors; per-iteration linear warmup (1/6
of training) and cosine to 1e-6. Scale, for the 2 shared CPU cores: a fixed 30 000-example
subset of Fashion-MNIST (234 steps per epoch at batch 128), 10 epochs, one seed.
"""

from __future__ import annotations

from typing import Any

FULL: dict[str, Any] = {
    "data": "fashion-mnist",
    "n_train": 30_000,
    "epochs": 10,
    "batch_size": 128,
    "depths": (1, 2, 4),
    "optimizers": ("sgd", "adamw"),  # with the recipe's defaults
    # The two trajectories alpha* is logged along: the paper's (SVRG with the per-coordinate
    # alpha*, "svrg-optimal") and the plain optimizer's ("none", against its epoch-start weights).
    "trajectories": ("svrg-optimal", "none"),
    # The protocol (gradvar.paper_alpha): alpha* = 1 at the snapshot, else recomputed every
    # steps_per_epoch // alpha_log_per_epoch steps from alpha_log_batches mini-batches evenly
    # spaced over the epoch (the code: every step, all 234 of them).
    "alpha_log_per_epoch": 12,
    "alpha_log_batches": 32,
    "seed": 0,
    "threads": 1,
    "out": "results",
    "runs_dir": "runs",
}

QUICK: dict[str, Any] = {
    **FULL,
    "n_train": 1024,  # 8 steps per epoch
    "epochs": 2,
    "alpha_log_per_epoch": 4,
    "alpha_log_batches": 4,
    "out": "results-quick",
    "runs_dir": "results-quick/runs",
}
