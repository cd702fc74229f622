"""One saved training state: its step, epoch, snapshot step, where it is and how to read it."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gradvar.checkpoints._common import StateDict, number
from gradvar.checkpoints._discover import reader_for
from gradvar.checkpoints._names import parse_name
from gradvar.checkpoints._reader import Reader
from gradvar.errors import CheckpointError

__all__ = ["Checkpoint", "step_and_epoch"]

_STEP_FIELDS = ("step", "global_step", "iteration", "iter")


def step_and_epoch(path: Path, meta: dict[str, Any]) -> tuple[int | None, float | None, str]:
    """``(step, epoch, where the step came from)``: the file's own fields first, then its name.

    The step is the first of the fields ``step``, ``global_step``, ``iteration``, ``iter``;
    else a step written in the name by an explicit convention (:mod:`._names`). The epoch is
    the ``epoch`` field, else one written in the name. Metric values in names never count.
    """
    info = parse_name(path.name)
    epoch = number(meta, "epoch", float, path)
    if epoch is None and info.epoch is not None:
        epoch = float(info.epoch)
    for key in _STEP_FIELDS:
        step = number(meta, key, int, path)
        if step is not None:
            return step, epoch, f"metadata:{key}"
    if info.step is not None:
        return info.step, epoch, "name"
    return None, epoch, ""


@dataclass(frozen=True)
class Checkpoint:
    """One saved training state: its step, epoch, snapshot step, file and scalar metadata.

    ``path`` is a weight file or a Hugging Face ``checkpoint-N/`` folder; ``label`` is the
    ``checkpoint`` column of the records (the path relative to the series folder; the file
    name by default); ``step_from`` says where the step came from (``metadata:global_step``,
    ``name``, ``epoch``).
    """

    step: int
    epoch: float | None
    snapshot_step: int | None
    path: Path
    metadata: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    label: str = field(default="", compare=False)
    step_from: str = field(default="", compare=False)
    weights: str = field(default="model", compare=False)

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, weights: str = "model") -> Checkpoint:
        """Read ``path``'s metadata (not its weights); the step is the file's own ``step`` (or
        ``global_step``) field, else a step written in its name (``step-100.pt``)."""
        path = Path(path)
        if not path.exists():
            raise CheckpointError(f"no checkpoint file at {str(path)!r}")
        meta = reader_for(path, weights).metadata()
        step, epoch, step_from = step_and_epoch(path, meta)
        if step is None:
            raise CheckpointError(
                f"cannot tell the step of {path}: no 'step' or 'global_step' field and no step in "
                "its name; rename it (e.g. step-000100.pt) or save it with gradvar's "
                "save_checkpoint"
            )
        return cls.from_metadata(path, meta, step, epoch, step_from=step_from, weights=weights)

    @classmethod
    def from_metadata(
        cls,
        path: Path,
        meta: dict[str, Any],
        step: int,
        epoch: float | None,
        *,
        step_from: str = "",
        label: str = "",
        weights: str = "model",
    ) -> Checkpoint:
        snapshot_step = number(meta, "snapshot_step", int, path)
        return cls(step, epoch, snapshot_step, path, meta, label, step_from, weights)

    @property
    def name(self) -> str:
        """The ``checkpoint`` column of the records."""
        return self.label or self.path.name

    @property
    def layout(self) -> str:
        """The layout the weights were read as (``torch``, ``lightning``, ``hf-trainer``, ...)."""
        return str(self.metadata.get("layout") or self.reader().layout)

    def reader(self) -> Reader:
        """The layout reader for this checkpoint."""
        return reader_for(self.path, self.weights)

    def load(self) -> StateDict:
        """The weights as a state_dict of CPU tensors (never unpickles arbitrary objects)."""
        return self.reader().load()

    def digest(self) -> str:
        """Content identity: SHA-256 prefix of the weight files' bytes."""
        return self.reader().digest()

    def optimizer_state(self) -> dict[str, Any] | None:
        """The ``optimizer`` entry of a ``.pt`` checkpoint (for resuming), or None."""
        return self.reader().optimizer_state()
