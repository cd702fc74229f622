"""A Probe's default chunk size and recompute budget, from the model and free GPU memory."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["default_chunk", "free_bytes", "materialise_bytes"]

CPU_CHUNK = 256
GPU_CHUNK = 1024
OUTER_CHUNK_RANGE = (4096, 65536)
# Per sample and per input/output feature of every nn.Linear, for both weight sets: the model's
# activations and output gradients, their float64 factors, and the moments' weighted copies.
BYTES_PER_FEATURE = 128


def free_bytes(device: torch.device) -> int | None:
    """Free memory of a CUDA ``device`` (None for any other device)."""
    if device.type != "cuda":
        return None
    return int(torch.cuda.mem_get_info(device)[0])


def default_chunk(model: nn.Module, *, unit_size: int | None, free: int | None) -> int:
    """Samples per chunk when the caller gives none.

    256 on the CPU (``free`` None). On a GPU 1024, or, when every parametrised module is an
    ``nn.Linear`` and the unit is the sample (per-example gradients stay factored: nothing of
    size |θ| per example is formed), as many samples as a quarter of the ``free`` bytes holds at
    ``BYTES_PER_FEATURE`` per Linear feature — a power of two within ``OUTER_CHUNK_RANGE`` —
    so that a large probe set is one or a few chunks (the per-chunk cost is mostly kernel
    launches). A chunk that does not fit after all is split and retried by the probe.
    """
    if free is None:
        return CPU_CHUNK
    modules = [m for m in model.modules() if next(m.parameters(False), None) is not None]
    if unit_size is not None or not all(isinstance(m, nn.Linear) for m in modules):
        return GPU_CHUNK
    per_sample = BYTES_PER_FEATURE * sum(m.in_features + m.out_features for m in modules)
    fit = free // 4 // max(per_sample, 1)
    low, high = OUTER_CHUNK_RANGE
    return int(min(high, max(low, 2 ** math.floor(math.log2(max(fit, 1))))))


def materialise_bytes(free: int | None) -> int:
    """How much of a chunk's recomputed blocks to hold at once (see GradientSums.update):
    64 MiB on the CPU, a quarter of the free GPU memory (at most 16 GiB) on a GPU."""
    if free is None:
        return 64 << 20
    return int(min(free // 4, 16 << 30))
