"""Writing checkpoints gradvar's way: ``step-000123.pt`` (or ``.safetensors``), atomically."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO, Literal

import safetensors.torch
import torch
from torch import nn

from gradvar._files import atomic_path
from gradvar._utils import check_positive
from gradvar.errors import InvalidArgumentError

__all__ = ["save_checkpoint"]


def _atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> Path:
    """Write via a hidden temporary file in the same folder, fsync, then ``os.replace``."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())
    return path


def save_checkpoint(
    run_dir: str | os.PathLike[str],
    model: nn.Module | Mapping[str, torch.Tensor],
    *,
    step: int,
    epoch: float | None = None,
    snapshot_step: int | None = None,
    optimizer: torch.optim.Optimizer | Mapping[str, Any] | None = None,
    format: Literal["pt", "safetensors"] = "pt",
) -> Path:
    """Atomically write ``run_dir/step-{step:06d}.{pt|safetensors}``; returns its path.

    ``optimizer`` (an optimizer or its state_dict) is kept for resuming; only ``.pt`` can hold it.
    """
    check_positive("step", step, allow_zero=True)
    if format not in ("pt", "safetensors"):
        raise InvalidArgumentError(f"format must be 'pt' or 'safetensors', got format={format!r}")
    state = model.state_dict() if isinstance(model, nn.Module) else dict(model)
    fields = {"step": int(step), "epoch": epoch, "snapshot_step": snapshot_step}
    fields = {k: v for k, v in fields.items() if v is not None}
    path = Path(run_dir) / f"step-{step:06d}.{format}"
    if format == "safetensors":
        if optimizer is not None:
            raise InvalidArgumentError(
                "safetensors holds tensors only, so it cannot store optimizer state; "
                "use format='pt' to save optimizer=..."
            )
        tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
        blob = safetensors.torch.save(tensors, metadata={k: str(v) for k, v in fields.items()})
        return _atomic_write(path, lambda handle: handle.write(blob))
    payload: dict[str, Any] = {"model": state, **fields}
    if optimizer is not None:
        payload["optimizer"] = (
            optimizer.state_dict() if isinstance(optimizer, torch.optim.Optimizer) else optimizer
        )
    return _atomic_write(path, lambda handle: torch.save(payload, handle))
