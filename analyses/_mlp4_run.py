"""The (method, seed) training run the MLP-4 analyses share (fitted_schedule, measured_alpha).

Imported by their run.py scripts (this folder is put on ``sys.path``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from torch.utils.data import TensorDataset

from gradvar.train import read_metrics, train
from gradvar.zoo import build_model

WALL_FILE = "wall_seconds.json"


def train_mlp4(
    run_dir: Path,
    dataset: TensorDataset,
    *,
    cfg: dict[str, Any],
    model_kwargs: dict[str, int],
    seed: int,
    vr: str,
    alpha: Any,
) -> tuple[float, list[float]]:
    """Train ``build_model("mlp4", seed=seed, **model_kwargs)`` into ``run_dir`` with ``cfg``'s
    optimizer, epochs and batch size, or resume it (a finished run is a no-op).

    Returns the training's own wall seconds (kept in ``run_dir/wall_seconds.json``, so a
    resumed run reports its first timing) and its per-epoch full-pass train losses.
    """
    t0 = time.perf_counter()
    train(
        build_model("mlp4", seed=seed, **model_kwargs),
        dataset,
        run_dir=run_dir,
        **cfg["optimizer"],
        epochs=cfg["epochs"],
        batch_size=cfg["batch_size"],
        seed=seed,
        vr=vr,
        alpha=alpha if alpha is not None else 0.0,
        resume=True,
        progress=False,
        model_spec={"name": "mlp4", "kwargs": model_kwargs, "seed": seed},
        data_spec={"name": cfg["data"], "n": cfg["n_train"], "seed": 0},
    )
    wall_file = run_dir / WALL_FILE
    if not wall_file.exists():
        wall_file.write_text(json.dumps(round(time.perf_counter() - t0, 1)))
    epoch_losses = [v for _, _, m, v in read_metrics(run_dir) if m == "epoch_train_loss"]
    return json.loads(wall_file.read_text()), epoch_losses
