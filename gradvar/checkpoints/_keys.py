"""Match a checkpoint's keys to a model's: strip wrapper prefixes, fill tied weights, check.

Training wrappers rename every key: ``DistributedDataParallel`` adds ``module.``,
``torch.compile`` adds ``_orig_mod.``, a LightningModule holding the network as
``self.model`` adds ``model.``, and they stack (``module._orig_mod.``). :func:`match_keys`
tries the user's prefix first, then every stack of those three, and keeps the first that
turns the checkpoint's keys into exactly the model's; keys outside the prefix (a
LightningModule's loss weights or metrics) are then dropped. Hugging Face safetensors files
leave out tied weights (``lm_head.weight`` = ``embed.weight``); those are filled from the
tensor they are tied to in the model.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from gradvar.checkpoints._checkpoint import Checkpoint
from gradvar.checkpoints._common import StateDict, listing
from gradvar.errors import CheckpointError

__all__ = ["KNOWN_PREFIXES", "match_keys", "check_compatible", "load_into"]

KNOWN_PREFIXES = ("module.", "_orig_mod.", "model.")


def _candidates(prefix: str | None) -> list[str]:
    stacks = [
        "".join(parts)
        for size in (1, 2, 3)
        for parts in itertools.permutations(KNOWN_PREFIXES, size)
    ]
    return ([prefix] if prefix else []) + [p for p in stacks if p != prefix]


def _tied_fill(model: nn.Module, state: Mapping[str, torch.Tensor]) -> StateDict:
    """``state`` plus the model's tied keys it lacks, copied from the key they are tied to."""
    expected = model.state_dict(keep_vars=True)
    by_storage: dict[tuple[int, int], list[str]] = {}
    for key, tensor in expected.items():
        if tensor.numel():
            by_storage.setdefault((tensor.data_ptr(), tensor.numel()), []).append(key)
    filled = dict(state)
    for keys in by_storage.values():
        present = [k for k in keys if k in filled]
        for key in keys:
            if key not in filled and present:
                filled[key] = filled[present[0]]
    return filled


def match_keys(
    model: nn.Module, state: Mapping[str, torch.Tensor], *, prefix: str | None = None
) -> tuple[StateDict, str]:
    """``(state with the model's keys, prefix stripped or "")``.

    With ``prefix`` given it is tried first. If no prefix makes the keys match, ``state``
    comes back unchanged for :func:`check_compatible` to explain the mismatch.
    """
    wanted = set(model.state_dict())
    if set(state) == wanted and not prefix:
        return dict(state), ""
    if set(_tied_fill(model, state)) == wanted and not prefix:
        return _tied_fill(model, state), ""
    for candidate in _candidates(prefix):
        stripped = {k[len(candidate) :]: v for k, v in state.items() if k.startswith(candidate)}
        if stripped and set(_tied_fill(model, stripped)) == wanted:
            return _tied_fill(model, stripped), candidate
    return dict(state), ""


def check_compatible(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], path: Any = None
) -> None:
    """Raise CheckpointError unless ``state_dict`` has exactly ``model``'s keys and shapes."""
    where = f"checkpoint {path}" if path is not None else "state_dict"
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        hint = ""
        heads = sorted({k.split(".")[0] + "." for k in unexpected if "." in k})
        if unexpected and len(heads) == 1 and heads[0] in KNOWN_PREFIXES:
            hint = (
                f" The checkpoint's keys carry the wrapper prefix {heads[0]!r}; load_into and "
                "analyze strip it (match_keys), a plain load_state_dict does not."
            )
        elif unexpected and len(heads) == 1:
            hint = (
                f" The checkpoint's keys start with {heads[0]!r}, which is not a known wrapper "
                f"prefix {list(KNOWN_PREFIXES)}; if the model sits under it, pass "
                f"strip_prefix={heads[0]!r} (--strip-prefix {heads[0]})."
            )
        raise CheckpointError(
            f"{where} does not match the model: {len(missing)} missing key(s) {listing(missing)}, "
            f"{len(unexpected)} unexpected key(s) {listing(unexpected)}.{hint} Build the model "
            "with the same factory and arguments as the run that saved it."
        )
    wrong = [
        f"{k}: checkpoint {list(state_dict[k].shape)} vs model {list(v.shape)}"
        for k, v in expected.items()
        if tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    if wrong:
        raise CheckpointError(
            f"{where} does not match the model: {len(wrong)} shape mismatch(es) {listing(wrong)}. "
            "Build the model with the same arguments (widths, classes, input size) as the run."
        )


def load_into(
    model: nn.Module,
    checkpoint: Checkpoint | str | os.PathLike[str] | Mapping[str, torch.Tensor],
    *,
    strip_prefix: str | None = None,
) -> nn.Module:
    """Match ``checkpoint``'s keys to ``model`` (:func:`match_keys`), check shapes, load it."""
    if isinstance(checkpoint, Mapping):
        state, where = checkpoint, None
    else:
        opened = checkpoint if isinstance(checkpoint, Checkpoint) else Checkpoint.open(checkpoint)
        state, where = opened.load(), opened.path
    state, _ = match_keys(model, state, prefix=strip_prefix)
    check_compatible(model, state, where)
    model.load_state_dict(state, strict=True)
    return model
