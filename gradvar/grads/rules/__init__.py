"""Per-layer rules: one small module per layer kind, registered by module type.

Built in: ``nn.Linear`` (any leading shape), transformers' ``Conv1D``, ``nn.Conv1d/2d/3d``,
``nn.Embedding``, ``nn.LayerNorm``, ``nn.RMSNorm``, ``nn.GroupNorm``, BatchNorm and
InstanceNorm (affine, under the BatchNorm policy), and direct broadcasting uses of a
parameter (:mod:`~gradvar.grads.rules.direct`). Register your own with :func:`register_rule`.
"""

from gradvar.grads.rules import (  # noqa: F401  (each registers itself)
    batch_norm,
    conv,
    conv1d_transformers,
    embedding,
    group_norm,
    layer_norm,
    linear,
    rms_norm,
)
from gradvar.grads.rules._base import (
    Call,
    NotApplicable,
    Rule,
    register_rule,
    registered_rules,
    rule_for,
)
from gradvar.grads.rules.direct import DirectUse, DirectUses

__all__ = [
    "Call",
    "NotApplicable",
    "Rule",
    "register_rule",
    "registered_rules",
    "rule_for",
    "DirectUse",
    "DirectUses",
]
