"""Settings of analyses/measured_alpha: FULL (the committed results) and QUICK (CI, < 2 min).

Training is analyses/fitted_schedule's setup: MLP-4 on all of Fashion-MNIST, SGD lr 0.1
without momentum or weight decay, batch 128, 10 epochs, one snapshot per epoch, seeds 0-2
(the seed sets the initialisation and the data order; the data set is fixed). The fitted
schedule is the one analyses/fitted_schedule trained with at the time (SGD, before the official
recipe), kept here as results/fitted_schedule_used.json: fitted_schedule itself now uses the
official AdamW recipe, so its current schedule belongs to a different training set-up.
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
    "alpha0": 0.75,  # the linear default
    "fitted": "results/fitted_schedule_used.json",
    # Measured(): prior 0.75, shrinkage 8 pairs, clamp (0, 1), no decay, one alpha per tensor
    "measured": {"kind": "measured"},
    # the diagnostic run: seed 0, own loop with gradvar.Monitor, the measured alpha per layer
    "diagnostic_epochs": 3,
    "probe_examples": 1024,
    "threads": 1,
    "out": "results",
    "runs_dir": "runs",
}

QUICK: dict[str, Any] = {
    **FULL,
    "n_train": 1024,  # 8 steps per epoch: the fitted schedule is mapped onto this grid
    "epochs": 2,
    "seeds": (0, 1),
    "diagnostic_epochs": 1,
    "probe_examples": 256,
    "threads": 2,
    "out": "results-quick",
    "runs_dir": "results-quick/runs",
}
