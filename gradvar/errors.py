"""Exceptions raised by gradvar.

Every error names the offending value and, where there is one, the fix. All derive from
:class:`GradvarError` so a caller can catch the library's errors in one clause, and from the
closest built-in (``ValueError``, ``FileNotFoundError``, ...) so generic handlers still work.
"""

from __future__ import annotations

__all__ = [
    "GradvarError",
    "InvalidArgumentError",
    "CheckpointError",
    "NonFiniteGradientError",
    "UnsupportedModelError",
    "DataNotFoundError",
    "MemoryBudgetError",
    "OptimizerStateError",
    "StaleRecordsError",
    "GradvarWarning",
    "CheckpointWarning",
]


class GradvarError(Exception):
    """Base class of every error gradvar raises on purpose."""


class InvalidArgumentError(GradvarError, ValueError):
    """An argument has a value gradvar cannot use; the message names it and echoes it."""


class CheckpointError(GradvarError):
    """A checkpoint file or series cannot be used (missing, corrupt, foreign, mismatched)."""


class NonFiniteGradientError(GradvarError, FloatingPointError):
    """A per-example gradient contains NaN or Inf; the message names the layer and example."""


class UnsupportedModelError(GradvarError, TypeError):
    """The model contains a construct the chosen policy refuses (e.g. BatchNorm with 'refuse')."""


class DataNotFoundError(GradvarError, FileNotFoundError):
    """A dataset is not on disk; the message says how to get it."""


class MemoryBudgetError(GradvarError, MemoryError):
    """A requested mode would exceed its memory budget; the message gives the estimate."""


class OptimizerStateError(GradvarError, RuntimeError):
    """An optimizer method was called out of order (e.g. step() with no snapshot gradient)."""


class StaleRecordsError(GradvarError):
    """A records file holds rows computed with other settings; the message says how to resume."""


class GradvarWarning(UserWarning):
    """Base class of every warning gradvar issues on purpose."""


class CheckpointWarning(GradvarWarning):
    """A file in a run folder was skipped (its step cannot be told, ...); the message names it."""
