"""What makes a records file resumable: a sidecar that keys every run's rows by their settings.

``OUT.json`` beside a records file ``OUT`` holds, per run name and unit, everything that
changes the numbers — the run's identity (its resolved folder; a folder that moved is
recognised by its checkpoints' contents), the pairing, a digest of the probed data
and its n, the probe's settings (unit, layers, policy, seed, alphas, loss, model class,
weights) — and per checkpoint the digest of its weight files and of its snapshot's, plus
the key prefix that was stripped. A re-run reuses a checkpoint's rows only when all of that
is unchanged: a changed checkpoint file is recomputed, and changed settings (or a second run
folder under a taken run name) stop with an error that says how to resume or overwrite.

Updates are read-modify-write under an exclusive lock on the records file
(:func:`gradvar._files.locked`), so several ``analyze`` processes writing different runs
into one file all keep their rows; both files are replaced atomically through uniquely
named temporary files.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from gradvar._files import atomic_path, locked
from gradvar.errors import StaleRecordsError
from gradvar.records import empty_frame, read_records, write_records

__all__ = ["SIDECAR_FORMAT", "sidecar_path", "read_sidecar", "data_digest", "Resume"]

SIDECAR_FORMAT = 2


def sidecar_path(out: Path) -> Path:
    """``records.parquet`` -> ``records.parquet.json``."""
    return out.with_suffix(out.suffix + ".json")


def read_sidecar(out: Path) -> dict[str, Any]:
    """The sidecar as a dict with a ``runs`` entry (empty when absent or from older gradvar)."""
    path = sidecar_path(out)
    try:
        meta = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        meta = {}
    if not isinstance(meta, dict) or meta.get("format") != SIDECAR_FORMAT:
        return {"format": SIDECAR_FORMAT, "runs": {}}
    meta.setdefault("runs", {})
    return meta


def _write_sidecar(out: Path, meta: Mapping[str, Any]) -> None:
    with atomic_path(sidecar_path(out)) as tmp:
        Path(tmp).write_text(json.dumps(meta, indent=2, default=str) + "\n")


def data_digest(batches: Sequence[tuple[Tensor, Tensor]]) -> str:
    """SHA-256 prefix of the probed examples (shapes, dtypes and values, in order)."""
    digest = hashlib.sha256()
    for x, y in batches:
        for tensor in (x, y):
            t = tensor.detach().cpu().contiguous()
            digest.update(f"{tuple(t.shape)}{t.dtype}".encode())
            if t.numel():
                digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def _short(value: Any) -> str:
    text = json.dumps(value, default=str, sort_keys=True)
    return text if len(text) <= 60 else text[:57] + "..."


class Resume:
    """The resume state of one (run, unit) in one records file."""

    def __init__(
        self,
        out: Path,
        run: str,
        unit: str,
        settings: Mapping[str, Any],
        *,
        resume: bool,
        writer: bool = True,
        digests: Mapping[str, str] | None = None,
    ) -> None:
        """``digests``: checkpoint name -> content digest of the files on disk now; a run
        folder that moved (same name, same checkpoint contents) is recognised by them."""
        self.digests = dict(digests or {})
        self.out, self.run, self.unit = out, run, unit
        self.settings = json.loads(json.dumps(dict(settings), default=str))
        self.writer = writer
        self.restart = not resume
        self.done: dict[str, dict[str, Any]] = {}
        if resume and out.exists():
            with locked(out):
                records = read_records(out)
                entry = read_sidecar(out)["runs"].get(run, {}).get("units", {}).get(unit)
            mine = records[(records["run"] == run) & (records["unit"] == unit)]
            self._check(entry, set(mine["checkpoint"].dropna()))

    def _check(self, entry: Mapping[str, Any] | None, names: set[str]) -> None:
        how = (
            "pass resume=False (gradvar analyze --restart) to recompute this run's rows (other "
            "runs' rows are kept), or run='NEW_NAME' (--run NEW_NAME) or another out file to "
            "keep both"
        )
        if entry is None:
            if names:
                raise StaleRecordsError(
                    f"{self.out} holds rows of run {self.run!r} (unit {self.unit}) but no record "
                    f"of the settings they were computed with ({sidecar_path(self.out).name} is "
                    f"missing or from an older gradvar); {how}"
                )
            return
        old = dict(entry.get("settings", {}))
        recorded = entry.get("checkpoints", {})
        moved = bool(recorded) and all(
            self.digests.get(name) == info.get("digest") for name, info in recorded.items()
        )  # same checkpoint contents: the run folder was moved or copied, not replaced
        if moved:
            old["run_dir"] = self.settings.get("run_dir")
        if old.get("run_dir") != self.settings.get("run_dir"):
            raise StaleRecordsError(
                f"run name {self.run!r} in {self.out} belongs to {old.get('run_dir')}, not "
                f"{self.settings.get('run_dir')}, and its checkpoint files differ: two run folders "
                "share the name. Pass "
                f"run='NAME' (--run NAME) to keep both, or resume=False (--restart) to replace "
                "the old rows"
            )
        changed = sorted(
            k for k in set(old) | set(self.settings) if old.get(k) != self.settings.get(k)
        )
        if changed:
            shown = "; ".join(
                f"{k}: {_short(old.get(k))} -> {_short(self.settings.get(k))}" for k in changed
            )
            raise StaleRecordsError(
                f"rows of run {self.run!r} (unit {self.unit}) in {self.out} were computed with "
                f"other settings ({shown}); {how}"
            )
        self.done = {
            name: info for name, info in entry.get("checkpoints", {}).items() if name in names
        }

    def is_done(self, name: str, identity: Mapping[str, Any]) -> bool:
        """True if ``name``'s rows were computed from exactly these files (digests)."""
        info = self.done.get(name)
        return info is not None and all(info.get(k) == v for k, v in identity.items())

    def commit(
        self,
        frame: pd.DataFrame,
        checkpoint: str,
        identity: Mapping[str, Any],
        run_entry: Mapping[str, Any],
    ) -> None:
        """Merge ``frame`` (one checkpoint's rows) into the file and the sidecar, under lock."""
        if not self.writer:
            return
        with locked(self.out):
            records = read_records(self.out) if self.out.exists() else empty_frame()
            mine = (records["run"] == self.run) & (records["unit"] == self.unit)
            stale = mine & (records["checkpoint"] == checkpoint)
            if self.restart:
                stale = mine
            kept = records[~stale.fillna(False).to_numpy(dtype=bool)]
            merged = frame if kept.empty else pd.concat([kept, frame], ignore_index=True)
            write_records(merged, self.out)
            meta = read_sidecar(self.out)
            run = meta["runs"].setdefault(self.run, {})
            units = run.get("units", {})
            run.update(json.loads(json.dumps(dict(run_entry), default=str)))
            unit = units.get(self.unit) if not self.restart else None
            unit = unit or {"checkpoints": {}}
            unit["settings"] = self.settings
            unit["checkpoints"][checkpoint] = dict(identity)
            units[self.unit] = unit
            run["units"] = units
            _write_sidecar(self.out, meta)
            self.restart = False

    def read(self) -> pd.DataFrame:
        """The whole records file, as it is now."""
        with locked(self.out):
            return read_records(self.out) if self.out.exists() else empty_frame()
