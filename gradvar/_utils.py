"""Small shared helpers: RNG capture/replay, dtype handling, argument checks."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from gradvar.errors import InvalidArgumentError

__all__ = ["RngState", "capture_rng", "restore_rng", "replay_rng", "seeded", "check_positive"]


@dataclass(frozen=True)
class RngState:
    """Every random state a forward pass may draw from: torch CPU and CUDA, numpy, Python."""

    torch_cpu: torch.Tensor
    torch_cuda: tuple[torch.Tensor, ...]
    numpy: Any
    python: Any


def capture_rng(*, torch_only: bool = False) -> RngState:
    """Snapshot all global random states (CUDA only if it is already initialised).

    ``torch_only``: only torch's generators (what a forward pass draws dropout from); about
    20× cheaper than including numpy's and Python's, for per-step use.
    """
    cuda: tuple[torch.Tensor, ...] = ()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        cuda = tuple(torch.cuda.get_rng_state_all())
    if torch_only:
        return RngState(torch.get_rng_state(), cuda, None, None)
    return RngState(torch.get_rng_state(), cuda, np.random.get_state(), random.getstate())


def restore_rng(state: RngState) -> None:
    """Put every global random state back to ``state``."""
    torch.set_rng_state(state.torch_cpu)
    if state.torch_cuda:
        torch.cuda.set_rng_state_all(list(state.torch_cuda))
    if state.numpy is not None:
        np.random.set_state(state.numpy)
    if state.python is not None:
        random.setstate(state.python)


@contextlib.contextmanager
def replay_rng(state: RngState) -> Iterator[None]:
    """Run the block from ``state`` (so its draws repeat an earlier block's), then restore.

    Used for "transform locking": the snapshot weights see exactly the dropout masks and
    augmentations the current weights saw.
    """
    outer = capture_rng(torch_only=state.numpy is None)
    restore_rng(state)
    try:
        yield
    finally:
        restore_rng(outer)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block with every global RNG seeded to ``seed``; restore the outer states after."""
    outer = capture_rng()
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
    try:
        yield
    finally:
        restore_rng(outer)


def check_positive(name: str, value: int | float, *, allow_zero: bool = False) -> None:
    """Raise InvalidArgumentError naming ``name`` unless ``value`` is > 0 (or >= 0)."""
    ok = value >= 0 if allow_zero else value > 0
    if not ok:
        bound = "non-negative" if allow_zero else "positive"
        raise InvalidArgumentError(f"{name} must be {bound}, got {name}={value!r}")
