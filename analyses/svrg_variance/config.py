"""Settings of analyses/svrg_variance: FULL (the committed results) and QUICK (CI, < 90 s).

The paper's setup (METHOD.md §6): MLP-4, SGD, batch 128, 30 epochs, one snapshot per epoch,
with the official recipe (gradvar.recipe): Nesterov momentum 0.9, lr 0.05, weight decay 0.05
except biases and 1-D tensors, per-iteration warmup (1/6 of training) + cosine to 1e-6. Here
on Fashion-MNIST (CIFAR-10 cannot be had offline). Scale, for the 2 shared CPU cores: a fixed
12 800-example subset (100 steps per epoch), 30 epochs, 3 seeds.
"""

from __future__ import annotations

from typing import Any

FULL: dict[str, Any] = {
    "data": "fashion-mnist",
    "n_train": 12_800,  # 100 steps per epoch at batch 128
    "epochs": 30,
    "batch_size": 128,
    "lr": 0.05,  # the recipe's SGD default (Nesterov, momentum 0.9)
    "seeds": (0, 1, 2),  # each sets the initialisation and the data order
    "alpha0": 0.75,  # alpha-SVRG: Linear(0.75 -> 0) across the 30 snapshot intervals
    # Metric set: M fixed mini-batches of 128 (M * 128 examples of one seeded permutation),
    # the same at every measurement and for every method.
    "metric_batches": 32,
    # Measurements per epoch, as fractions of the snapshot interval (1.0 = the epoch's last
    # step, right before the next snapshot): the epoch's value is their mean.
    "metric_at": (0.5, 1.0),
    # SVRG with per-coordinate alpha* (the paper's protocol, gradvar.paper_alpha): alpha* = 1
    # at the snapshot, re-estimated at every further quarter of the epoch from alpha_star_batches
    # of the epoch's own mini-batches, evenly spaced (the code: every step, all of them).
    "alpha_star_per_epoch": 4,
    "alpha_star_batches": 32,
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

# A harder task, to look for the paper's regime of growing gradient variance (issue 11):
# 20 % of the training labels replaced by random ones (fixed, seeded), batch 64, no weight
# decay (so the network can fit the noise), a smaller set so 30 epochs fit the CPU budget.
HARD: dict[str, Any] = {
    **FULL,
    "n_train": 6_400,  # 100 steps per epoch at batch 64
    "batch_size": 64,
    "label_noise": 0.2,
    "weight_decay": 0.0,
    "metric_batches": 32,
    "out": "results-hard",
    "runs_dir": "runs-hard",
}
