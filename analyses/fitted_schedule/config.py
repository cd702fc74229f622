"""Settings of analyses/fitted_schedule: FULL (the committed results) and QUICK (CI, < 90 s).

Training is analyses/alpha_vs_depth's mlp4-sgd setup (its config.py): MLP-4 on all of
Fashion-MNIST, SGD lr 0.1 without momentum or weight decay, batch 128, 10 epochs, one snapshot
per epoch. The seed sets both the initialisation and the data order; the data set is fixed.
"""

from __future__ import annotations

from typing import Any

FULL: dict[str, Any] = {
    "data": "fashion-mnist",
    "n_train": None,  # all 60 000 training examples: 468 steps per epoch
    "epochs": 10,
    "batch_size": 128,
    "optimizer": {"optimizer": "sgd", "lr": 0.1, "weight_decay": 0.0},
    "seeds": (0, 1, 2),
    "alpha0": 0.75,  # the linear default: Linear(0.75 -> 0) across the snapshot intervals
    # alpha* records of analyses/alpha_vs_depth: the first file that exists is used.
    "records": (
        "../alpha_vs_depth/results/records.csv",
        "../alpha_vs_depth/results-quick/records.csv",
    ),
    "fit_run": "mlp4-sgd",
    "fit_unit": "128",  # the paper's mini-batch unit
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
