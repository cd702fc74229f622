"""The official training recipe of the α-SVRG code (davidyyd/alpha-SVRG, METHOD.md §9).

- Parameter groups (``optim_factory.py``): no weight decay on biases, on every 1-D tensor
  (norm weights) and on the names a model lists in ``no_weight_decay()``; decay on the rest.
- ``"sgd"``: SGD with **Nesterov** momentum 0.9. ``"adamw"``: AdamW, betas (0.9, 0.999),
  eps 1e-8. Default weight decay 0.05 for both.
- Default learning rate: the code's single ``--lr`` default, 4e-3, is AdamW's (the paper's
  ConvNeXt/ViT commands). The code has no separate SGD default; :data:`DEFAULT_LR` uses 0.05
  for SGD, the step size at which MLP-4's α* on Fashion-MNIST lands in the paper's range
  (issue 11) — a choice, not a value read from the code.
- Learning rate: per-iteration cosine with linear warmup (:class:`WarmupCosine`):
  ``lr_t = start + (base − start)·t/(W−1)`` for ``t < W`` (``np.linspace`` including both
  ends, start 0), then ``lr_t = min + (base − min)/2 · (1 + cos(π (t−W)/(T−W)))``, floor
  ``min = 1e-6``. The code's default warmup is 50 of 300 epochs; :func:`default_warmup_steps`
  keeps that fraction (1/6 of training) for shorter runs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from gradvar._utils import check_positive
from gradvar.errors import InvalidArgumentError

__all__ = [
    "DEFAULT_LR",
    "DEFAULT_WEIGHT_DECAY",
    "MIN_LR",
    "MOMENTUM",
    "WARMUP_FRACTION",
    "WarmupCosine",
    "base_optimizer",
    "default_warmup_steps",
    "lr_at",
    "official_optimizer",
    "param_groups",
]

DEFAULT_LR: dict[str, float] = {"sgd": 0.05, "adamw": 4e-3}
DEFAULT_WEIGHT_DECAY = 0.05
MOMENTUM = 0.9
MIN_LR = 1e-6
WARMUP_FRACTION = 50 / 300  # the code's --warmup_epochs 50 of --epochs 300


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two groups as the official code builds them: ``[decay, no_decay]``.

    A parameter goes to ``no_decay`` (weight_decay 0) when it is 1-D, its name ends in
    ``.bias`` (or is ``bias``), or it is named by ``model.no_weight_decay()`` (timm's hook for
    position embeddings and class tokens). Groups carry ``param_names`` (torch ≥ 2.6), so
    ``AlphaSVRG`` and ``PerLayer`` schedules see the names. Empty groups are dropped.
    """
    check_positive("weight_decay", weight_decay, allow_zero=True)
    skip: set[str] = set()
    hook = getattr(model, "no_weight_decay", None)
    if callable(hook):
        skip = set(hook())
    decay: tuple[list[nn.Parameter], list[str]] = ([], [])
    no_decay: tuple[list[nn.Parameter], list[str]] = ([], [])
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        exempt = p.ndim <= 1 or name.endswith(".bias") or name == "bias" or name in skip
        target = no_decay if exempt else decay
        target[0].append(p)
        target[1].append(name)
    groups = [
        {"params": params, "param_names": names, "weight_decay": wd}
        for (params, names), wd in ((decay, weight_decay), (no_decay, 0.0))
        if params
    ]
    if not groups:
        raise InvalidArgumentError(
            f"{type(model).__name__} has no trainable parameters (requires_grad=True)"
        )
    return groups


def official_optimizer(
    model: nn.Module,
    name: str,
    *,
    lr: float | None = None,
    weight_decay: float | None = None,
) -> torch.optim.Optimizer:
    """The official base optimizer over :func:`param_groups`.

    ``name``: ``"sgd"`` (Nesterov, momentum 0.9) or ``"adamw"`` (eps 1e-8). ``lr`` defaults to
    :data:`DEFAULT_LR` [name], ``weight_decay`` to 0.05.
    """
    if name not in DEFAULT_LR:
        raise InvalidArgumentError(
            f"the official recipe has optimizers {sorted(DEFAULT_LR)}, got optimizer={name!r}"
        )
    lr = DEFAULT_LR[name] if lr is None else lr
    weight_decay = DEFAULT_WEIGHT_DECAY if weight_decay is None else weight_decay
    check_positive("lr", lr)
    groups = param_groups(model, weight_decay)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=MOMENTUM, nesterov=True)
    return torch.optim.AdamW(groups, lr=lr, eps=1e-8)


def default_warmup_steps(total_steps: int) -> int:
    """The official warmup fraction (50 of 300 epochs) of ``total_steps``, rounded."""
    check_positive("total_steps", total_steps)
    return round(total_steps * WARMUP_FRACTION)


def lr_at(
    step: int | Iterable[int],
    base_lr: float,
    total_steps: int,
    warmup_steps: int,
    min_lr: float = MIN_LR,
    start_lr: float = 0.0,
) -> Any:
    """The official per-iteration value at update ``step`` (0-based); a list for many steps.

    Warmup ``lr_t = start + (base − start)·t/(W−1)`` for ``t < W`` (W = 1 gives ``start``,
    as ``np.linspace`` does), then ``min + (base − min)·(1 + cos(π (t − W)/(T − W)))/2``; steps
    past ``T`` hold the last value.
    """
    if not isinstance(step, int):
        return [lr_at(s, base_lr, total_steps, warmup_steps, min_lr, start_lr) for s in step]
    step = min(max(step, 0), total_steps - 1)
    if step < warmup_steps:
        if warmup_steps == 1:  # np.linspace(start, base, 1) is [start]
            return start_lr
        return start_lr + (base_lr - start_lr) * step / (warmup_steps - 1)
    span = total_steps - warmup_steps
    return min_lr + 0.5 * (base_lr - min_lr) * (
        1.0 + math.cos(math.pi * (step - warmup_steps) / span)
    )


class WarmupCosine(LRScheduler):
    """Per-iteration linear warmup + cosine to ``min_lr``: the official schedule (:func:`lr_at`).

    Call ``scheduler.step()`` after every ``optimizer.step()``. Every param group follows the
    same curve scaled to its own initial lr (the code multiplies one curve by ``lr_scale``,
    1 unless layer decay is used, with ``min_lr`` the same absolute floor for each group).
    A resumed run passes ``last_epoch=step - 1`` (the optimizer's param groups hold
    ``initial_lr`` once a scheduler has been attached, so a loaded optimizer state resumes).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        total_steps: int,
        warmup_steps: int,
        min_lr: float = MIN_LR,
        last_epoch: int = -1,
    ) -> None:
        check_positive("total_steps", total_steps)
        check_positive("warmup_steps", warmup_steps, allow_zero=True)
        check_positive("min_lr", min_lr, allow_zero=True)
        if warmup_steps >= total_steps:
            raise InvalidArgumentError(
                f"warmup_steps={warmup_steps} must be below total_steps={total_steps}"
            )
        self.total_steps, self.warmup_steps, self.min_lr = total_steps, warmup_steps, min_lr
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:  # type: ignore[override]
        """The lr of every group at update ``self.last_epoch``."""
        return [
            lr_at(self.last_epoch, base, self.total_steps, self.warmup_steps, self.min_lr)
            for base in self.base_lrs
        ]


def base_optimizer(
    name: str,
    model: nn.Module,
    recipe: str,
    lr: float | None,
    weight_decay: float | None,
    momentum: float | None,
) -> tuple[torch.optim.Optimizer, dict[str, Any]]:
    """The base optimizer of ``gradvar.train`` and its run.json entry (the values used).

    ``recipe="official"``: :func:`official_optimizer` (momentum must be left unset).
    ``recipe="plain"``: torch's SGD/AdamW on ``model.parameters()`` with ``lr`` (required),
    ``weight_decay`` and ``momentum`` (default 0) on every parameter.
    """
    if recipe not in ("plain", "official"):
        raise InvalidArgumentError(f"recipe must be 'plain' or 'official', got recipe={recipe!r}")
    if recipe == "official":
        if momentum:
            raise InvalidArgumentError(
                f"recipe='official' fixes SGD's momentum (Nesterov, {MOMENTUM}); "
                f"drop momentum={momentum}"
            )
        opt = official_optimizer(model, name, lr=lr, weight_decay=weight_decay)
        lr = opt.defaults["lr"]
        weight_decay = DEFAULT_WEIGHT_DECAY if weight_decay is None else weight_decay
        momentum = MOMENTUM if name == "sgd" else 0.0
    else:
        if lr is None:
            raise InvalidArgumentError(
                "lr is required with recipe='plain' (recipe='official' has defaults)"
            )
        check_positive("lr", lr)
        weight_decay, momentum = weight_decay or 0.0, momentum or 0.0
        if name == "sgd":
            opt = torch.optim.SGD(
                model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay
            )
        elif momentum:
            raise InvalidArgumentError(
                "momentum applies to optimizer='sgd' only; AdamW has betas, "
                f"got momentum={momentum}"
            )
        else:
            opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    entry = {"name": name, "lr": lr, "weight_decay": weight_decay, "momentum": momentum}
    if recipe == "official":
        entry["nesterov"] = name == "sgd"
        entry["no_decay"] = "biases and 1-D tensors"
    return opt, entry
