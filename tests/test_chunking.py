"""A Probe's default chunk: 256 on the CPU; on a GPU 1024, or from free memory when every
parameter is an nn.Linear's (factored per-example gradients)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from gradvar import Probe
from gradvar._chunking import BYTES_PER_FEATURE, default_chunk, materialise_bytes

GIB = 1 << 30


def _mlp() -> nn.Module:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
        nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10),
    )  # fmt: skip


def test_cpu_chunk_and_the_probe_uses_it() -> None:
    assert default_chunk(_mlp(), unit_size=None, free=None) == 256
    assert Probe(_mlp(), F.cross_entropy).chunk == 256


def test_gpu_chunk_of_an_all_linear_model_follows_free_memory() -> None:
    per_sample = BYTES_PER_FEATURE * (784 + 512 + 512 + 512 + 512 + 512 + 512 + 10)
    assert default_chunk(_mlp(), unit_size=None, free=130 * GIB) == 65536  # the cap
    assert 8 * GIB // 4 // per_sample == 4339
    assert default_chunk(_mlp(), unit_size=None, free=8 * GIB) == 4096  # a power of two below
    assert default_chunk(_mlp(), unit_size=None, free=34 * GIB) == 16384
    assert default_chunk(_mlp(), unit_size=None, free=1 << 20) == 4096  # the floor
    assert default_chunk(_mlp(), unit_size=None, free=0) == 4096


def test_gpu_chunk_is_1024_for_other_models_and_for_minibatch_units() -> None:
    conv = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 26 * 26, 10))
    assert default_chunk(conv, unit_size=None, free=130 * GIB) == 1024
    assert default_chunk(_mlp(), unit_size=8, free=130 * GIB) == 1024
    assert default_chunk(nn.Sequential(nn.Embedding(5, 3)), unit_size=None, free=GIB) == 1024


def test_materialise_budget() -> None:
    assert materialise_bytes(None) == 64 << 20
    assert materialise_bytes(8 * GIB) == 2 * GIB
    assert materialise_bytes(139 * GIB) == 16 * GIB
