"""What a checkpoint's file name says: its step or epoch, whether it is an alias, or not weights.

Only explicit conventions count, never "the last integer in the name", because names also
carry metric values (``epoch=2-val_loss=0.47.ckpt``, ``model_epoch01_valacc0.81.pt``):

- step: ``step=N``, ``step-N``, ``step_N``, ``stepN``, ``global_step=N``, ``iter-N``,
  ``checkpoint-N`` (Hugging Face Trainer), ``ckpt-N``; a name that is only a number
  (``1200.pt``); ``model_N`` / ``weights-N`` / ``state_N``;
- epoch: ``epoch=N``, ``epoch_N``, ``epochN``, ``ep-N``;
- Lightning's version suffix ``-vN`` (a second file saved under a taken name) is ignored;
- a number right after a keyword is taken only if it is not the start of a decimal.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["NameInfo", "parse_name", "ALIAS_WORDS", "non_weight_reason"]

_NUMBER = r"[=_-]?(\d+)(?![\d.]|e-?\d)"
_STEP = re.compile(
    r"(?<![a-z0-9])(?:global_step|global-step|steps?|iter(?:ation)?s?|checkpoint|ckpt)" + _NUMBER,
    re.IGNORECASE,
)
_EPOCH = re.compile(r"(?<![a-z0-9])(?:epochs?|ep)" + _NUMBER, re.IGNORECASE)
_BARE = re.compile(r"^(?:(?:model|weights|state|net)[_-]?)?(\d+)$", re.IGNORECASE)
_VERSION = re.compile(r"-v\d+$")
ALIAS_WORDS = ("last", "best", "latest", "final")
_NON_WEIGHTS = {  # name stems (lower case, without suffix) that are never model weights
    "optimizer": "optimizer state",
    "optim": "optimizer state",
    "scheduler": "learning-rate scheduler state",
    "lr_scheduler": "learning-rate scheduler state",
    "scaler": "gradient scaler state",
    "rng_state": "random-number-generator state",
    "training_args": "training arguments",
    "trainer_state": "trainer state",
}


@dataclass(frozen=True)
class NameInfo:
    """Step and epoch read from a name, and whether the name is an alias (last, best, ...)."""

    step: int | None
    epoch: int | None
    alias: str | None


def parse_name(name: str) -> NameInfo:
    """Read ``name`` (a file or folder name, with or without suffix) by the conventions above."""
    stem = name
    for suffix in (".safetensors", ".ckpt", ".pth", ".pt", ".bin"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    stem = _VERSION.sub("", stem)
    step_match = _STEP.search(stem)
    epoch_match = _EPOCH.search(stem)
    bare = _BARE.match(stem)
    step = int(step_match.group(1)) if step_match else int(bare.group(1)) if bare else None
    epoch = int(epoch_match.group(1)) if epoch_match else None
    words = re.split(r"[^a-z]+", stem.lower())
    alias = next((w for w in ALIAS_WORDS if w in words), None)
    if step is not None or epoch is not None:
        alias = None  # "best-epoch=3.ckpt" names its own epoch: a checkpoint, not an alias
    return NameInfo(step, epoch, alias)


def non_weight_reason(name: str) -> str | None:
    """Why a file named ``name`` holds no model weights (optimizer, scheduler, ...), or None."""
    stem = name.lower().split(".")[0]
    for key, reason in _NON_WEIGHTS.items():
        if stem == key or stem.startswith(key + "_") or stem.startswith(key + "-"):
            return reason
    return None
