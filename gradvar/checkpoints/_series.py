"""A run's checkpoints, ordered by step, each paired with its snapshot.

Building a series reads every checkpoint's metadata (cheaply), so a damaged or foreign file
fails before any computation. Files are kept, skipped with a reason, or refused:

- the step comes from the file's own fields, then from its name (:mod:`._names`); when no
  file anywhere tells a step but every one tells an epoch, epochs stand in for steps (and
  the series says so in :attr:`CheckpointSeries.notes`);
- a file whose step cannot be told is skipped with a :class:`CheckpointWarning` naming it;
- an alias (``last.ckpt``, ``best.pt``) of another checkpoint is skipped (same step, or the
  same weights when it records no step), and so are byte-identical weights saved twice;
- two different sets of weights at one step are refused (there is no telling which is meant).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, overload

from gradvar.checkpoints._checkpoint import Checkpoint, step_and_epoch
from gradvar.checkpoints._common import listing, weights_digest
from gradvar.checkpoints._discover import CHECKPOINT_SUFFIXES, find_readers
from gradvar.checkpoints._names import parse_name
from gradvar.checkpoints._pairing import Pairing, choose_pairing
from gradvar.checkpoints._run_config import read_run_config
from gradvar.errors import CheckpointError, CheckpointWarning

__all__ = ["CheckpointSeries"]


class _Candidate:
    def __init__(self, checkpoint_args: dict[str, Any], alias: str | None) -> None:
        self.args = checkpoint_args
        self.alias = alias
        self._digest: str | None = None

    @property
    def name(self) -> str:
        return self.args["label"]

    def weights_digest(self) -> str:
        if self._digest is None:
            self._digest = weights_digest(self.build(self.args["step"] or 0).load())
        return self._digest

    def build(self, step: int) -> Checkpoint:
        args = dict(self.args)
        path, meta, epoch = args.pop("path"), args.pop("meta"), args.pop("epoch")
        args.pop("step")
        return Checkpoint.from_metadata(path, meta, step, epoch, **args)


class CheckpointSeries(Sequence[Checkpoint]):
    """The checkpoints of one run, ordered by step, each paired with its snapshot.

    Args:
        path: a run folder (any nesting: Lightning ``checkpoints/``, Trainer
            ``checkpoint-N/`` folders, plain files), one Trainer folder, or one file.
        snapshot_interval: pair step t with the checkpoint at the last multiple of K ≤ t.
        snapshot: pair every checkpoint with this file.
        pairing: ``"auto"`` (default; see :mod:`gradvar.checkpoints._pairing`),
            ``"metadata"``, ``"previous"`` or ``"none"``.
        weights: ``"model"`` (the usual keys), ``"ema"`` (EMA weights), or an exact key.

    Attributes: ``pairing`` (its name), ``pairing_note`` (a sentence for users), ``skipped``
    ((name, reason) of every file left out), ``notes`` (how steps were told), ``run_config``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        snapshot_interval: int | None = None,
        snapshot: str | os.PathLike[str] | Checkpoint | None = None,
        pairing: str = "auto",
        weights: str = "model",
    ) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise CheckpointError(f"checkpoint folder {str(self.path)!r} does not exist")
        self.weights = weights
        run_dir = self.path if self.path.is_dir() else self.path.parent
        self.run_config: dict[str, Any] = read_run_config(run_dir)
        self.skipped: list[tuple[str, str]] = []
        self.notes: list[str] = []
        self._checkpoints = self._read_all()
        self._by_step = {c.step: c for c in self._checkpoints}
        listed = (c.metadata.get("not_loaded", "") for c in self._checkpoints)
        unloaded = sorted({name for names in listed for name in names.split(", ") if name})
        if unloaded:
            self.notes.append(
                f"objects pickled beside the weights were not loaded (never run): "
                f"{', '.join(unloaded)}; the weights are unaffected"
            )
        explicit = (
            snapshot
            if isinstance(snapshot, Checkpoint) or snapshot is None
            else Checkpoint.open(snapshot, weights=weights)
        )
        self._pairing: Pairing = choose_pairing(
            self._checkpoints,
            self.run_config,
            interval=snapshot_interval,
            snapshot=explicit,
            pairing=pairing,
        )

    # ------------------------------------------------------------------ reading
    def _read_all(self) -> list[Checkpoint]:
        readers, self.skipped = find_readers(self.path, self.weights)
        if not readers:
            present = sorted(p.name for p in self.path.iterdir()) if self.path.is_dir() else []
            raise CheckpointError(
                f"no checkpoint files ({', '.join('*' + s for s in CHECKPOINT_SUFFIXES)} or "
                f"Hugging Face checkpoint-N/ folders) in {self.path}; it holds "
                f"{listing(present) if present else 'nothing'}"
            )
        base = self.path if self.path.is_dir() else self.path.parent
        candidates = []
        for reader in readers:
            meta = reader.metadata()
            step, epoch, step_from = step_and_epoch(reader.path, meta)
            # a Trainer output_dir's own final save is named after the folder
            label = reader.path.relative_to(base).as_posix() if reader.path != base else base.name
            args = {"path": reader.path, "meta": meta, "step": step, "epoch": epoch,
                    "step_from": step_from, "label": label, "weights": self.weights}  # fmt: skip
            candidates.append(_Candidate(args, parse_name(reader.path.name).alias))
        kept = self._resolve_steps(candidates)
        checkpoints = self._drop_duplicates(kept)
        if not checkpoints:
            raise CheckpointError(
                f"no usable checkpoint in {self.path}: "
                + "; ".join(f"{name}: {why}" for name, why in self.skipped)
            )
        return checkpoints

    def _skip(self, name: str, reason: str, *, warn: bool) -> None:
        self.skipped.append((name, reason))
        if warn:
            warnings.warn(f"skipped {name}: {reason}", CheckpointWarning, stacklevel=4)

    def _resolve_steps(self, candidates: list[_Candidate]) -> list[tuple[int, _Candidate]]:
        steps = [c for c in candidates if c.args["step"] is not None]
        if not steps and all(c.args["epoch"] is not None for c in candidates if not c.alias):
            if any(not c.alias for c in candidates):
                self.notes.append(
                    "no file records a step, so the step column holds epochs (from the names "
                    "or the files' epoch fields)"
                )
                for c in candidates:
                    if c.args["epoch"] is not None and float(c.args["epoch"]).is_integer():
                        c.args["step"], c.args["step_from"] = int(c.args["epoch"]), "epoch"
        kept: list[tuple[int, _Candidate]] = []
        aliases: list[_Candidate] = []
        for c in candidates:
            if c.args["step"] is not None:
                kept.append((c.args["step"], c))
            elif c.alias:
                aliases.append(c)
            elif c.args["epoch"] is not None:
                self._skip(
                    c.name,
                    f"it tells only its epoch ({c.args['epoch']:g}) while other checkpoints "
                    "tell steps, so it cannot be placed among them (rename it with its step, "
                    "e.g. step-000100.pt)",
                    warn=True,
                )
            else:
                self._skip(
                    c.name,
                    "cannot tell its step: no step/global_step field and no step in its name "
                    "(rename it, e.g. step-000100.pt, or pass it alone with snapshot=)",
                    warn=True,
                )
        named = {step for step, c in kept if not c.alias}
        for step, c in list(kept):
            if c.alias and step in named:
                kept.remove((step, c))
                other = next(o.name for s, o in kept if s == step)
                self._skip(c.name, f"alias ({c.alias}) of {other} (same step {step})", warn=False)
        for c in aliases:
            same = next((o for _, o in kept if o.weights_digest() == c.weights_digest()), None)
            if same is not None:
                self._skip(c.name, f"alias ({c.alias}) of {same.name} (same weights)", warn=False)
            else:
                self._skip(
                    c.name,
                    f"alias name ({c.alias}) that records no step and matches no other "
                    "checkpoint's weights",
                    warn=True,
                )
        return kept

    def _drop_duplicates(self, kept: list[tuple[int, _Candidate]]) -> list[Checkpoint]:
        by_step: dict[int, list[_Candidate]] = {}
        for step, c in kept:
            by_step.setdefault(step, []).append(c)
        checkpoints = []
        for step in sorted(by_step):
            group = sorted(
                by_step[step],
                key=lambda c: (
                    bool(c.alias),
                    c.args["path"] == self.path,
                    parse_name(c.args["path"].name).step != step,  # prefer names telling it
                    len(c.name),
                    c.name,
                ),
            )
            if len(group) > 1:
                digests = {c.weights_digest() for c in group}
                if len(digests) > 1:
                    raise CheckpointError(
                        f"several files claim the same step {step} with different weights: "
                        f"{listing([c.name for c in group])}; keep one (or move the others)"
                    )
                for extra in group[1:]:
                    self._skip(extra.name, f"same weights as {group[0].name} (step {step})",
                               warn=False)  # fmt: skip
            checkpoints.append(group[0].build(step))
        return checkpoints

    # ------------------------------------------------------------------ sequence
    @property
    def pairing(self) -> str:
        """The pairing rule's name: ``metadata``, ``interval:K``, ``explicit:PATH``, ..."""
        return self._pairing.name

    @property
    def pairing_note(self) -> str:
        """A sentence saying how checkpoints are paired with snapshots, and how to change it."""
        return self._pairing.note

    @property
    def steps(self) -> list[int]:
        """The steps on disk, ascending."""
        return [c.step for c in self._checkpoints]

    def __len__(self) -> int:
        return len(self._checkpoints)

    @overload
    def __getitem__(self, index: int) -> Checkpoint: ...
    @overload
    def __getitem__(self, index: slice) -> list[Checkpoint]: ...
    def __getitem__(self, index: int | slice) -> Checkpoint | list[Checkpoint]:
        return self._checkpoints[index]

    def __repr__(self) -> str:
        steps = listing(self.steps)
        return f"CheckpointSeries({str(self.path)!r}, steps={steps}, pairing={self.pairing!r})"

    def at_step(self, step: int) -> Checkpoint:
        """The checkpoint saved at ``step``; CheckpointError listing the steps if there is none."""
        if step not in self._by_step:
            raise CheckpointError(
                f"no checkpoint at step {step} in {self.path}; steps: {listing(self.steps)}"
            )
        return self._by_step[step]

    # ------------------------------------------------------------------ pairing
    def snapshot_for(self, checkpoint: Checkpoint | int) -> Checkpoint | None:
        """The snapshot θ̃ that ``checkpoint`` (or a step) pairs with; None if pairing is "none"."""
        current = checkpoint if isinstance(checkpoint, Checkpoint) else self.at_step(checkpoint)
        rule = self._pairing
        if rule.explicit is not None or rule.name == "none":
            return rule.explicit
        if rule.name == "previous":
            earlier = [c for c in self._checkpoints if c.step < current.step]
            return earlier[-1] if earlier else current
        target = (
            (current.step // rule.interval) * rule.interval
            if rule.interval is not None
            else current.snapshot_step
        )
        if target is None or target > current.step:
            raise CheckpointError(
                f"{current.path}: snapshot_step={target} is after its step {current.step}"
            )
        if target not in self._by_step:
            raise CheckpointError(
                f"{current.name} (step {current.step}) pairs with the snapshot at step {target} "
                f"(pairing {self.pairing}), but {self.path} has no checkpoint at step {target}; "
                f"steps on disk: {listing(self.steps)}. Save a checkpoint at every snapshot, or "
                "pass snapshot_interval= or snapshot= explicitly."
            )
        return self._by_step[target]

    def pairs(self) -> list[tuple[Checkpoint, Checkpoint | None]]:
        """Every (checkpoint, snapshot) pair, resolved up front so a gap fails before any work.

        A pairing under which every checkpoint is its own snapshot is refused: ρ = α* = 1
        there by construction, so the records would say nothing.
        """
        pairs = [(c, self.snapshot_for(c)) for c in self._checkpoints]
        if self.pairing != "none" and all(
            s is not None and s.step == c.step and s.path == c.path for c, s in pairs
        ):
            raise CheckpointError(
                f"every checkpoint of {self.path} is its own snapshot under pairing "
                f"{self.pairing} (steps {listing(self.steps)}), so ρ = α* = 1 by construction "
                "and nothing would be measured. Save checkpoints between snapshots (gradvar "
                "train --checkpoint-every), pair each with the previous one (pairing='previous'"
                ", --pairing previous), or give a snapshot file (snapshot=, --snapshot FILE)"
            )
        return pairs

    def describe(self) -> list[dict[str, Any]]:
        """One row per checkpoint as read: name, layout, step (and its source), epoch, snapshot."""
        rows = []
        for checkpoint in self._checkpoints:
            snapshot = self.snapshot_for(checkpoint)
            rows.append(
                {
                    "checkpoint": checkpoint.name,
                    "layout": checkpoint.layout,
                    "step": checkpoint.step,
                    "step_from": checkpoint.step_from,
                    "epoch": checkpoint.epoch,
                    "snapshot_step": None if snapshot is None else snapshot.step,
                }
            )
        return rows
