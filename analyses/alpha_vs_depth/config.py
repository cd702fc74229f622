"""Settings of analyses/alpha_vs_depth: FULL (the committed results) and QUICK (CI, < 2 min).

Learning rates were checked on 3 epochs of MLP-4 / MLP-1 (epoch train losses, full data):
SGD lr 0.05: 0.75 0.62 0.51 vs lr 0.1: 0.60 0.50 0.42 (MLP-4), so SGD uses 0.1 (no momentum,
no weight decay); AdamW lr 1e-3, weight decay 0.05 (the paper's AdamW setups): 0.44 0.41 0.36.
"""

from __future__ import annotations

from typing import Any

OPTIMIZERS: dict[str, dict[str, float]] = {
    "sgd": {"lr": 0.1, "weight_decay": 0.0},
    "adamw": {"lr": 1e-3, "weight_decay": 0.05},
}

FULL: dict[str, Any] = {
    "data": "fashion-mnist",
    "n_train": None,  # all 60 000 training examples: 468 steps per epoch at batch 128
    "epochs": 10,
    "batch_size": 128,
    "checkpoint_every": 39,  # 468 / 12: 12 checkpoints per epoch, the first at the snapshot
    "depths": (1, 2, 4),
    "optimizers": OPTIMIZERS,
    "seed": 0,
    # Probe set: a fixed random subset of the training set, the same for every checkpoint.
    # 128 mini-batches of 128 (16 384 examples) for the paper's unit: in a pilot at an early
    # checkpoint, 32 / 64 mini-batches gave alpha* 0.12 / 0.08 below all 468, 128 was within
    # 0.01 (the sensitivity table in README.md has the committed checks); per example, 1024
    # examples (nested in the same subset).
    "probe_batches": 128,
    "probe_examples": 1024,
    # Sensitivity of alpha* to the probe-set size, at a few checkpoints (run, epoch fraction).
    "sensitivity_runs": ("mlp4-sgd", "mlp4-adamw"),
    "sensitivity_at": (1.5, 8.5),
    "sensitivity_batches": (16, 32, 64, 128, 256, 468),
    "sensitivity_examples": (256, 1024, 4096),
    # Zoom on the start of epoch 2: checkpoint every zoom_every steps, probe zoom_steps steps.
    "zoom_runs": ("mlp4-sgd", "mlp4-adamw"),
    "zoom_every": 3,
    "zoom_steps": 117,  # a quarter of an epoch: 40 checkpoints
    "threads": 1,
    "out": "results",
    "runs_dir": "runs",
}

QUICK: dict[str, Any] = {
    **FULL,
    "n_train": 2048,  # 16 steps per epoch
    "epochs": 2,
    "checkpoint_every": 4,
    "probe_batches": 4,
    "probe_examples": 128,
    "sensitivity_runs": ("mlp4-sgd",),
    "sensitivity_at": (1.5,),
    "sensitivity_batches": (4, 16),
    "sensitivity_examples": (128, 512),
    "zoom_runs": ("mlp4-sgd",),
    "zoom_every": 1,
    "zoom_steps": 8,
    "threads": 2,
    "out": "results-quick",
    "runs_dir": "results-quick/runs",
}
