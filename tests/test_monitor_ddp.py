"""Monitor under DDP (2 gloo processes): the probe set is split across ranks and the sums
all-reduced, so the records equal one process's; only rank 0 writes the file and logs, and
``every="auto"`` gives every rank the same k (rank 0's, broadcast)."""

from __future__ import annotations

import json
import os
import tempfile

import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel

STEPS, EVERY = 6, 2


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))


def batches(seed: int, n: int = 6, size: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(size, 5, generator=gen), torch.randint(0, 3, (size,), generator=gen))
        for _ in range(n)
    ]


PROBE_SET = batches(9, n=3)
OPTIONS = {"chunk_size": 8, "top_eigenvalue": "lanczos", "lanczos_tol": 1e-12}  # 3 chunks


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    from gradvar import Monitor

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        net = make_model()
        model = DistributedDataParallel(net)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        logged: list[int] = []
        monitor = Monitor(
            net,
            F.cross_entropy,
            PROBE_SET,
            every=EVERY,
            out=os.path.join(out_dir, "records.parquet"),
            log=lambda metrics, step: logged.append(step),
            **OPTIONS,
        )
        auto = Monitor(net, F.cross_entropy, PROBE_SET, every="auto", max_overhead=0.5, **OPTIONS)
        for x, y in batches(seed=rank)[:STEPS]:  # each rank its own half of the global batch
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            monitor.step()
            auto.step(auto._step + 10)  # 10 steps at a time: the first probe comes at 20
        monitor.records.to_pickle(os.path.join(out_dir, f"records{rank}.pkl"))
        state = {k: v.tolist() for k, v in net.state_dict().items()}
        info = {"logged": logged, "every": auto.every, "probes": auto.num_probes, "state": state}
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as handle:
            json.dump(info, handle)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")
def test_ddp_monitor_equals_one_process_and_only_rank_zero_writes() -> None:
    from gradvar import Monitor
    from gradvar.records import read_records

    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(2, os.path.join(tmp, "init"), tmp), nprocs=2, join=True)
        info = [json.load(open(os.path.join(tmp, f"rank{r}.json"))) for r in (0, 1)]
        per_rank = [pd.read_pickle(os.path.join(tmp, f"records{r}.pkl")) for r in (0, 1)]
        on_disk = read_records(os.path.join(tmp, "records.parquet"))
    assert info[0]["logged"] == [2, 4, 6] and info[1]["logged"] == []
    assert info[0]["every"] == info[1]["every"] and info[0]["probes"] == info[1]["probes"] > 0
    pd.testing.assert_frame_equal(on_disk, per_rank[0])
    # One process, the same weights: the global batch is the two ranks' halves together.
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    single = Monitor(model, F.cross_entropy, PROBE_SET, every=EVERY, **OPTIONS)
    halves = zip(batches(seed=0)[:STEPS], batches(seed=1)[:STEPS])
    for (x0, y0), (x1, y1) in halves:
        opt.zero_grad()
        F.cross_entropy(model(torch.cat([x0, x1])), torch.cat([y0, y1])).backward()
        opt.step()
        single.step()
    for name, value in model.state_dict().items():
        torch.testing.assert_close(torch.tensor(info[0]["state"][name]), value)
    for frame in per_rank:
        merged = frame.merge(single.records, on=["step", "layer", "metric", "alpha"])
        assert len(merged) == len(single.records) and (merged["n_x"] == merged["n_y"]).all()
        pd.testing.assert_series_equal(
            merged["value_x"], merged["value_y"], check_names=False, rtol=1e-4, atol=1e-7
        )
