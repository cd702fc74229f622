"""Which snapshot θ̃ each checkpoint is measured against, and a sentence saying so.

Rules, first that applies (recorded as ``CheckpointSeries.pairing``):

- ``explicit:PATH`` — ``snapshot=`` a file: every checkpoint against it;
- ``interval:K`` — ``snapshot_interval=K`` steps: step t against the checkpoint at the last
  multiple of K ≤ t (gradvar's own runs give K in ``run.json``);
- ``metadata`` — every file records its ``snapshot_step`` (gradvar's alpha-SVRG runs);
- ``previous`` — no snapshot information anywhere: each checkpoint against the one saved
  before it (the snapshot interval is then the save interval; the first checkpoint is its
  own snapshot);
- ``none`` — asked for (``pairing="none"``), or a single checkpoint with nothing to pair:
  current-gradient metrics only, no ρ or α*.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gradvar._utils import check_positive
from gradvar.checkpoints._checkpoint import Checkpoint
from gradvar.checkpoints._common import listing
from gradvar.errors import CheckpointError, InvalidArgumentError

__all__ = ["Pairing", "choose_pairing", "PAIRINGS"]

PAIRINGS = ("auto", "metadata", "previous", "none")


@dataclass(frozen=True)
class Pairing:
    """A pairing rule: its name (``interval:K`` ...), a sentence for users, and its data."""

    name: str
    note: str
    interval: int | None = None
    explicit: Checkpoint | None = None


def _interval(value: Any, source: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidArgumentError(f"{source} must be an int (steps), got {value!r}")
    check_positive(source, value)
    return value


def choose_pairing(
    checkpoints: Sequence[Checkpoint],
    run_config: Mapping[str, Any],
    *,
    interval: int | None,
    snapshot: Checkpoint | None,
    pairing: str,
) -> Pairing:
    """The pairing rule for ``checkpoints`` (see the module docstring)."""
    if pairing not in PAIRINGS:
        raise InvalidArgumentError(f"pairing must be one of {PAIRINGS}, got pairing={pairing!r}")
    given = [name for name, v in (("snapshot", snapshot), ("snapshot_interval", interval)) if v]
    if len(given) + (pairing != "auto") > 1:
        raise InvalidArgumentError(
            "give only one of snapshot=, snapshot_interval= and pairing= (not both); got "
            f"snapshot={snapshot!r}, snapshot_interval={interval!r}, pairing={pairing!r}"
        )
    if snapshot is not None:
        return Pairing(f"explicit:{snapshot.path}", f"every checkpoint against {snapshot.path}",
                       explicit=snapshot)  # fmt: skip
    if interval is not None:
        k = _interval(interval, "snapshot_interval")
        return Pairing(f"interval:{k}", f"snapshot every {k} steps (as given)", interval=k)
    with_meta = [c.snapshot_step is not None for c in checkpoints]
    if pairing == "none":
        return Pairing("none", "no snapshot (asked for): no ρ or α*")
    if pairing == "previous":
        return Pairing("previous", "each checkpoint against the previous one (as asked)")
    if all(with_meta):
        return Pairing("metadata", "snapshot steps recorded in the checkpoint files")
    if pairing == "metadata":
        lacking = [c.name for c, has in zip(checkpoints, with_meta) if not has]
        raise CheckpointError(f"pairing='metadata' but {listing(lacking)} record no snapshot_step")
    if run_config.get("snapshot_interval") is not None:
        k = _interval(run_config["snapshot_interval"], "run.json snapshot_interval")
        return Pairing(f"interval:{k}", f"snapshot every {k} steps (from run.json)", interval=k)
    if any(with_meta):
        lacking = [c.name for c, has in zip(checkpoints, with_meta) if not has]
        raise CheckpointError(
            f"some checkpoints record a snapshot_step and {listing(lacking)} do not; pass "
            "snapshot_interval= (--snapshot-every STEPS) or snapshot= (--snapshot FILE) to pair "
            "them all one way"
        )
    if len(checkpoints) < 2:
        return Pairing(
            "none",
            "a single checkpoint and no snapshot information: no ρ or α* (pass snapshot= / "
            "--snapshot FILE to measure against another state)",
        )
    return Pairing(
        "previous",
        "no snapshot information in the files or run.json, so each checkpoint is measured "
        "against the previous one (snapshot interval = save interval; the first checkpoint "
        "is its own snapshot). Pass snapshot_interval= (--snapshot-every STEPS) or snapshot= "
        "(--snapshot FILE) to choose otherwise",
    )
