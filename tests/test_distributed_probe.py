"""The probe on 2 gloo processes gives the records of one process on the union of the data."""

from __future__ import annotations

import os
import sys
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    sys.path.insert(0, os.path.dirname(__file__))
    from architectures import make, perturbed

    from gradvar import Probe

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model, x, y = make("dropout")
        probe = Probe(model, F.cross_entropy, chunk_size=5, lanczos_tol=1e-12, progress=False)
        result = probe.run((x, y), snapshot=perturbed(model))
        torch.save(
            {"values": result.values, "n": result.n, "config": result.config},
            os.path.join(out_dir, f"rank{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")
def test_two_gloo_processes_equal_one_process() -> None:
    from architectures import make, perturbed

    from gradvar import Probe

    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(2, os.path.join(tmp, "init"), tmp), nprocs=2, join=True)
        ranks = [torch.load(os.path.join(tmp, f"rank{r}.pt"), weights_only=False) for r in (0, 1)]
    model, x, y = make("dropout")
    single = Probe(model, F.cross_entropy, chunk_size=5, lanczos_tol=1e-12).run(
        (x, y), snapshot=perturbed(model)
    )
    for got in ranks:
        assert got["n"] == single.n
        assert got["config"]["world_size"] == 2
        assert got["config"]["top_eigenvalue"] == "lanczos"
        for key, value in single.values.items():
            assert got["values"][key] == pytest.approx(value, rel=1e-6, abs=1e-12), key
