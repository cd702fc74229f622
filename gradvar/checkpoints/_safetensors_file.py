"""``.safetensors`` files: tensors plus a string-to-string metadata header."""

from __future__ import annotations

from typing import Any

import safetensors.torch
from safetensors import safe_open

from gradvar.checkpoints._common import StateDict
from gradvar.checkpoints._reader import Reader
from gradvar.errors import CheckpointError

__all__ = ["SafetensorsFile", "read_header"]


def read_header(path: Any) -> dict[str, str]:
    """The metadata header of a safetensors file (only the header is read)."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except Exception as exc:
        raise CheckpointError(f"cannot read safetensors checkpoint {path}: {exc}") from exc


def load_tensors(path: Any) -> StateDict:
    """Every tensor of a safetensors file, on the CPU."""
    try:
        return safetensors.torch.load_file(str(path), device="cpu")
    except Exception as exc:
        raise CheckpointError(f"cannot read safetensors file {path}: {exc}") from exc


class SafetensorsFile(Reader):
    """One ``.safetensors`` file; step, epoch and snapshot_step may be in its header."""

    layout = "safetensors"

    @property
    def files(self) -> tuple:
        return (self.path,)

    def metadata(self) -> dict[str, Any]:
        if self.weights not in ("model",):
            raise CheckpointError(
                f"{self.path} is a safetensors file: it holds one set of weights, so "
                f"weights={self.weights!r} cannot pick another; save the EMA weights as their "
                "own file"
            )
        return {**read_header(self.path), "layout": "safetensors"}

    def load(self) -> StateDict:
        return load_tensors(self.path)
