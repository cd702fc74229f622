"""Checkpoint series on disk: read saved states as users have them, pair them with snapshots.

One small reader per layout (:mod:`._torch_file`: plain state_dicts, dicts under the usual
keys, Lightning ``.ckpt``; :mod:`._safetensors_file`; :mod:`._hf_folder`: Hugging Face
Trainer ``checkpoint-N/`` folders, sharded or not), found anywhere under a run folder
(:mod:`._discover`); steps from the files' own fields, then explicit name conventions, never
metric values (:mod:`._names`); aliases and non-weight files skipped (:mod:`._series`);
pairing with snapshots stated in words (:mod:`._pairing`); wrapper key prefixes matched
against the model's keys (:mod:`._keys`).

Loading never executes pickled code: ``torch.load(..., weights_only=True)`` and safetensors;
objects pickled beside the weights (Lightning's ``hyper_parameters``) become inert stand-ins
(:mod:`._inert`) rather than a refusal of the file.
gradvar's own runs are ``step-000123.pt`` files (a dict with ``model``, ``step``, ``epoch``
and, for alpha-SVRG runs, ``snapshot_step``) or ``.safetensors`` with those fields in the
header, plus ``run.json``.
"""

from gradvar.checkpoints._checkpoint import Checkpoint
from gradvar.checkpoints._discover import CHECKPOINT_SUFFIXES
from gradvar.checkpoints._keys import KNOWN_PREFIXES, check_compatible, load_into, match_keys
from gradvar.checkpoints._pairing import PAIRINGS
from gradvar.checkpoints._run_config import RUN_CONFIG, read_run_config, write_run_config
from gradvar.checkpoints._save import save_checkpoint
from gradvar.checkpoints._series import CheckpointSeries

__all__ = [
    "CHECKPOINT_SUFFIXES",
    "KNOWN_PREFIXES",
    "PAIRINGS",
    "RUN_CONFIG",
    "Checkpoint",
    "CheckpointSeries",
    "check_compatible",
    "load_into",
    "match_keys",
    "read_run_config",
    "save_checkpoint",
    "write_run_config",
]
