"""analyze() on 2 gloo processes writes the records of one process."""

from __future__ import annotations

import os
import tempfile

import pandas as pd
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from gradvar.cli import main
from gradvar.records import read_records


def _build():
    from gradvar.zoo import build_model

    return build_model("mlp2", in_features=32, num_classes=4, dropout=0.2, seed=0)


def _worker(rank: int, init: str, run_dir: str, out: str) -> None:
    import gradvar
    from gradvar.zoo import load_dataset

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=2)
    try:
        x, y = load_dataset("synthetic", n=80).tensors
        gradvar.analyze(
            run_dir,
            _build,
            (x, y),
            F.cross_entropy,
            out=out,
            run="r",
            progress=False,
            chunk_size=16,
            lanczos_tol=1e-12,
        )
    finally:
        dist.destroy_process_group()


def test_two_processes_write_the_single_process_records() -> None:
    import gradvar
    from gradvar.zoo import load_dataset

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = os.path.join(tmp, "run")
        main(
            f"train --model mlp2 --data synthetic --n 128 --lr 0.2 --batch-size 32 "
            f"--epochs 1 --checkpoint-every 2 --quiet --out {run_dir}".split()
        )
        out = os.path.join(tmp, "two.parquet")
        mp.spawn(_worker, args=(os.path.join(tmp, "init"), run_dir, out), nprocs=2)
        two = read_records(out)
        x, y = load_dataset("synthetic", n=80).tensors
        one = gradvar.analyze(
            run_dir,
            _build,
            (x, y),
            F.cross_entropy,
            run="r",
            progress=False,
            chunk_size=16,
            lanczos_tol=1e-12,
            top_eigenvalue="lanczos",
        )
    pd.testing.assert_frame_equal(
        two.drop(columns="value").reset_index(drop=True),
        one.drop(columns="value").reset_index(drop=True),
    )
    rel = (two["value"] - one["value"]).abs() / one["value"].abs().clip(lower=1e-12)
    assert rel.max() < 1e-6
