"""Streaming (inputs, targets) data into fixed-size chunks with deterministic randomness."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor

from gradvar._utils import RngState, capture_rng, seeded
from gradvar.errors import InvalidArgumentError

__all__ = ["as_batches", "rechunk", "chunk_rng"]


def as_batches(data: Any) -> Iterable[tuple[Tensor, Tensor]]:
    """Accept one ``(inputs, targets)`` pair of tensors or an iterable of such pairs."""
    if (
        isinstance(data, (tuple, list))
        and len(data) == 2
        and all(isinstance(t, Tensor) for t in data)
    ):
        return [(data[0], data[1])]
    if isinstance(data, Tensor) or not isinstance(data, Iterable):
        raise InvalidArgumentError(
            "data must be an (inputs, targets) pair of tensors or an iterable of such pairs "
            f"(e.g. a DataLoader), got {type(data).__name__}"
        )
    return data


def rechunk(
    batches: Iterable[Any], chunk: int, multiple: int = 1
) -> Iterator[tuple[Tensor, Tensor]]:
    """Re-cut a stream of batches into chunks of exactly ``chunk`` samples (the last shorter).

    ``multiple``: every chunk holds a whole number of mini-batches of that many examples
    (consecutive examples of the stream); a trailing incomplete mini-batch is dropped, like
    ``drop_last``.
    """
    xs: list[Tensor] = []
    ys: list[Tensor] = []
    held = 0
    for batch in batches:
        if not (isinstance(batch, (tuple, list)) and len(batch) >= 2):
            raise InvalidArgumentError(
                f"each batch must be an (inputs, targets) pair, got {type(batch).__name__}"
            )
        x, y = batch[0], batch[1]
        xs.append(x)
        ys.append(y)
        held += x.shape[0]
        while held >= chunk:
            x_all, y_all = torch.cat(xs), torch.cat(ys)
            yield x_all[:chunk], y_all[:chunk]
            xs, ys = [x_all[chunk:]], [y_all[chunk:]]
            held -= chunk
    usable = held - held % multiple
    if usable > 0:
        yield torch.cat(xs)[:usable], torch.cat(ys)[:usable]


def chunk_rng(seed: int, index: int) -> RngState:
    """The random state chunk ``index`` starts from: the same at every checkpoint and pass."""
    with seeded(seed * 1_000_003 + index):
        return capture_rng()
