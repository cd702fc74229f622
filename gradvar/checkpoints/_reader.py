"""The interface every checkpoint layout implements: files, scalar metadata, weights."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

from gradvar.checkpoints._common import StateDict, file_digest

__all__ = ["Reader"]


class Reader(ABC):
    """One saved training state on disk, in one layout (a file, or a Trainer folder).

    ``metadata()`` is cheap (headers, memory-mapped loads) and is called for every checkpoint
    when a series is built, so a damaged file fails before any work; ``load()`` reads the
    weights. ``weights`` picks the weights inside a file that holds several (``"model"``, the
    usual keys; ``"ema"``; or an exact key).
    """

    layout: ClassVar[str]

    def __init__(self, path: Path, weights: str = "model") -> None:
        self.path = path
        self.weights = weights

    @property
    @abstractmethod
    def files(self) -> tuple[Path, ...]:
        """The files whose bytes make up the weights (for the content digest)."""

    @abstractmethod
    def metadata(self) -> dict[str, Any]:
        """Scalar fields saved with the weights (step, global_step, epoch, snapshot_step, ...)."""

    @abstractmethod
    def load(self) -> StateDict:
        """The weights as a state_dict of CPU tensors (never unpickles arbitrary objects)."""

    def optimizer_state(self) -> dict[str, Any] | None:
        """The saved optimizer state, if this layout keeps it beside the weights."""
        return None

    def digest(self) -> str:
        """Content identity of the weight files (SHA-256 prefix of their bytes)."""
        return file_digest(self.files)
