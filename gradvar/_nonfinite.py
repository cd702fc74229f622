"""Finding the samples whose gradients are not finite, and naming the first one."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from gradvar.blocks import GradBlock
from gradvar.errors import NonFiniteGradientError

__all__ = ["finite_samples"]


def finite_samples(
    current: Mapping[str, GradBlock],
    snapshot: Mapping[str, GradBlock] | None,
    where: tuple[int, str],
    *,
    skip: bool,
) -> Tensor:
    """Boolean ``[n]``: samples whose gradients are finite under both weight sets.

    Unless ``skip``, the first non-finite sample raises :class:`NonFiniteGradientError` naming
    the layer, the sample (``where``: the chunk's first sample index and what a sample is) and
    the weight set.
    """
    named = [("current", current)] + ([("snapshot", snapshot)] if snapshot else [])
    flags = {(which, name): b.finite() for which, blocks in named for name, b in blocks.items()}
    keep = torch.stack(list(flags.values())).all(0)
    if skip:
        return keep
    offset, what = where
    for (which, name), ok in flags.items():
        if not bool(ok.all()):
            bad = int((~ok).nonzero()[0, 0]) + offset
            raise NonFiniteGradientError(
                f"non-finite gradient in layer {name!r} at {what} {bad} ({which} weights); "
                "check the data and loss, or pass skip_nonfinite=True to drop such samples "
                "(they are counted in the records as 'nonfinite_skipped')"
            )
    return keep
