"""Settings of analyses/svrg_variance: FULL (the committed results) and QUICK (CI, < 90 s).

The paper's setup (METHOD.md §6): MLP-4, SGD, batch 128, 30 epochs, one snapshot per epoch.
Here on Fashion-MNIST (CIFAR-10 cannot be had offline), SGD lr 0.1 without momentum or weight
decay, the learning rate analyses/alpha_vs_depth chose for MLP-4 (see its config.py).
"""

from __future__ import annotations

from typing import Any

FULL: dict[str, Any] = {
    "data": "fashion-mnist",
    "n_train": None,  # all 60 000 training examples: 468 steps per epoch at batch 128
    "epochs": 30,
    "batch_size": 128,
    "lr": 0.1,
    "seeds": (0, 1, 2),  # each sets the initialisation and the data order
    "alpha0": 0.75,  # alpha-SVRG: Linear(0.75 -> 0) across the 30 snapshot intervals
    # Metric set: M fixed mini-batches of 128 (M * 128 examples of one seeded permutation),
    # the same at every measurement and for every method.
    "metric_batches": 64,
    # Measurements per epoch, as fractions of the snapshot interval (1.0 = the epoch's last
    # step, right before the next snapshot): the epoch's value is their mean.
    "metric_at": (0.5, 1.0),
    # SVRG with per-coordinate alpha*: re-estimated this many times per epoch (after the
    # snapshot, where alpha* = 1 exactly, and at every further quarter) on its own M mini-batches,
    # disjoint from the metric set so the measured variance is out-of-sample.
    "alpha_star_per_epoch": 4,
    "alpha_star_batches": 64,
    "threads": 1,
    "out": "results",
    "runs_dir": "runs",  # per-(method, seed) caches (gitignored)
}

QUICK: dict[str, Any] = {
    **FULL,
    "n_train": 1024,  # 8 steps per epoch
    "epochs": 3,
    "metric_batches": 4,
    "alpha_star_batches": 4,
    "seeds": (0, 1),
    "threads": 2,
    "out": "results-quick",
    "runs_dir": "results-quick/runs",
}
