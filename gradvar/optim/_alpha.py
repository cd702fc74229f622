"""Alpha for every parameter: the constructor's spec → one schedule per param group → buckets.

A *bucket* is the set of parameters that share one schedule, so one foreach call per
(bucket, device, dtype) applies the correction. :class:`~gradvar.schedules.PerLayer` groups are
resolved per parameter name; :class:`~gradvar.schedules.Measured` ones are split per measured
layer (parameter, module or the whole model), each with its own alpha.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

from torch import Tensor

from gradvar.errors import InvalidArgumentError
from gradvar.schedules import Measured, PerLayer, Schedule, as_schedule

__all__ = [
    "AlphaSpec",
    "AlphaArg",
    "AlphaBucket",
    "group_schedules",
    "param_names",
    "buckets",
    "measured_layer",
]

AlphaSpec = Union[float, Schedule, Mapping[str, Any]]
"""One alpha: a number (constant), a Schedule, or a dict from ``Schedule.to_dict()``."""
AlphaArg = Union[AlphaSpec, Sequence[AlphaSpec]]
"""``AlphaSVRG``'s ``alpha``: one AlphaSpec for all param groups, or a list with one per group."""


@dataclass(frozen=True)
class AlphaBucket:
    """Parameters (flat indices over all param groups, in order) that share one schedule.

    A :class:`~gradvar.schedules.Measured` schedule gets one bucket per measured ``layer``.
    """

    schedule: Schedule
    indices: tuple[int, ...]
    layer: str | None = None

    @property
    def measured(self) -> bool:
        return isinstance(self.schedule, Measured)

    def alpha(self, step: int, steps_since_snapshot: int | None) -> float:
        """The bucket's alpha at optimizer step ``step``.

        Schedules that decay inside each snapshot interval (``Double``, ``Fitted``) expose
        ``at(step, position)``; they get the true distance to the last snapshot, so irregular
        snapshots keep the sawtooth aligned.
        """
        at = getattr(self.schedule, "at", None)
        if at is not None and steps_since_snapshot is not None:
            return float(at(step, steps_since_snapshot))
        return float(self.schedule(step))


def group_schedules(alpha: AlphaArg, num_groups: int) -> list[Schedule]:
    """One schedule per param group from ``alpha`` (a single spec or one per group)."""
    if isinstance(alpha, (list, tuple)):
        if len(alpha) != num_groups:
            raise InvalidArgumentError(
                f"alpha has {len(alpha)} values but the base optimizer has {num_groups} param "
                f"groups, got alpha={list(alpha)!r}: pass one alpha per param group, or a "
                "single number/Schedule for all of them"
            )
        return [as_schedule(a) for a in alpha]
    schedule = as_schedule(alpha)
    return [schedule] * num_groups


def param_names(
    named_parameters: Mapping[str, Tensor] | Iterable[tuple[str, Tensor]] | None,
    param_groups: Sequence[Mapping[str, Any]],
) -> dict[int, str]:
    """``id(param) → name`` from ``named_parameters`` or else the groups' ``param_names``."""
    names: dict[int, str] = {}
    for group in param_groups:
        for name, p in zip(group.get("param_names", ()), group["params"]):
            names[id(p)] = name
    if named_parameters is not None:
        items = (
            named_parameters.items() if isinstance(named_parameters, Mapping) else named_parameters
        )
        names.update({id(p): name for name, p in items})
    return names


def buckets(
    param_groups: Sequence[Mapping[str, Any]],
    schedules: Sequence[Schedule],
    names: Mapping[int, str],
) -> list[AlphaBucket]:
    """Resolve each parameter's schedule and bucket parameters whose schedules are equal."""
    resolved: list[tuple[Schedule, str | None, list[int]]] = []
    index = 0
    for group_index, (group, schedule) in enumerate(zip(param_groups, schedules)):
        for p in group["params"]:
            own = schedule
            if isinstance(schedule, PerLayer):
                if id(p) not in names:
                    raise InvalidArgumentError(
                        f"param group {group_index} has a PerLayer alpha but parameter #{index} "
                        f"(shape {tuple(p.shape)}) has no name: pass "
                        "named_parameters=model.named_parameters() to AlphaSVRG, or build the "
                        "base optimizer from named parameters"
                    )
                own = schedule.for_layer(names[id(p)])
            layer = measured_layer(own, names.get(id(p), f"param{index}"))
            for known, known_layer, indices in resolved:
                if known == own and known_layer == layer:
                    indices.append(index)
                    break
            else:
                resolved.append((own, layer, [index]))
            index += 1
    return [AlphaBucket(schedule, tuple(indices), layer) for schedule, layer, indices in resolved]


def measured_layer(schedule: Schedule, name: str) -> str | None:
    """The layer a parameter called ``name`` is measured in (None unless ``Measured``)."""
    if not isinstance(schedule, Measured):
        return None
    if schedule.layers == "model":
        return "__all__"
    if schedule.layers == "module":
        return name.rpartition(".")[0] or name
    return name
