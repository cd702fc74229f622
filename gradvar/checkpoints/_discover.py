"""Find the checkpoints under a run folder, whatever layout the training code used.

A folder's checkpoint entries are its weight files (``.pt .pth .ckpt .safetensors``) and its
Hugging Face folders (``checkpoint-N/``, see :mod:`._hf_folder`). The search goes down
nested folders (``lightning_logs/version_0/checkpoints/``, ``output/checkpoint-500/``); hidden
entries are ignored, and so are files that hold no weights by their name (``optimizer.pt``,
``scheduler.pt``, ``rng_state.pth``, ``training_args.bin``), which are listed as skipped.
Checkpoints found in two unrelated folders are two runs: the caller is asked to pick one.
"""

from __future__ import annotations

from pathlib import Path

from gradvar.checkpoints._common import listing
from gradvar.checkpoints._hf_folder import HFFolder, is_hf_folder, is_hf_weight_file
from gradvar.checkpoints._names import non_weight_reason
from gradvar.checkpoints._reader import Reader
from gradvar.checkpoints._safetensors_file import SafetensorsFile
from gradvar.checkpoints._torch_file import TorchFile
from gradvar.errors import CheckpointError

__all__ = ["CHECKPOINT_SUFFIXES", "find_readers", "reader_for"]

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".safetensors")
Skipped = list[tuple[str, str]]


def reader_for(path: Path, weights: str = "model") -> Reader:
    """The reader of one checkpoint file or Hugging Face folder."""
    if path.is_dir():
        if is_hf_folder(path):
            return HFFolder(path, weights)
        raise CheckpointError(f"{path} is a folder without Hugging Face weight files")
    if path.suffix == ".safetensors":
        return SafetensorsFile(path, weights)
    return TorchFile(path, weights)


def _entries(folder: Path, root: Path, skipped: Skipped) -> list[Path]:
    """Checkpoint files and HF folders anywhere under ``folder``."""
    found: list[Path] = []
    hf_root = is_hf_folder(folder)  # its own weight files are read as the folder
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith(".") or entry.name == "__pycache__":
            continue
        if hf_root and entry.is_file() and is_hf_weight_file(entry.name):
            continue
        if entry.is_dir():
            found += [entry] if is_hf_folder(entry) else _entries(entry, root, skipped)
        elif entry.suffix in CHECKPOINT_SUFFIXES:
            reason = non_weight_reason(entry.name)
            if reason is None:
                found.append(entry)
            else:
                skipped.append((entry.relative_to(root).as_posix(), f"not weights ({reason})"))
    return found


def find_readers(root: Path, weights: str = "model") -> tuple[list[Reader], Skipped]:
    """Readers for every checkpoint under ``root`` (a file, an HF folder or a run folder)."""
    skipped: Skipped = []
    if (
        root.is_file()
        or is_hf_folder(root)
        and not any(is_hf_folder(p) for p in root.iterdir() if p.is_dir())
    ):
        return [reader_for(root, weights)], skipped
    entries = _entries(root, root, skipped)
    if is_hf_folder(root):  # a Trainer output_dir: the final save_model() beside checkpoint-N/
        entries.append(root)
    homes: dict[Path, list[Path]] = {}
    for entry in entries:
        home = root if entry == root else entry.parent
        homes.setdefault(home, []).append(entry)
    if len(homes) > 1:
        shown = [f"{h.relative_to(root).as_posix() or '.'} ({len(v)})" for h, v in homes.items()]
        raise CheckpointError(
            f"{root} holds checkpoints in {len(homes)} separate folders {listing(shown)}: "
            "they look like separate runs; pass one of those folders"
        )
    return [reader_for(entry, weights) for entry in entries], skipped
