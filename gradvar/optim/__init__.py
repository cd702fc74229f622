"""alpha-SVRG: ``v = g − α_t (h − μ̃)`` replaces the gradient, the base optimizer steps on ``v``.

:class:`AlphaSVRG` wraps any ``torch.optim.Optimizer``; :func:`variance_reduce_` is the same
correction as a function of tensor lists (``torch.compile``-friendly with a tensor alpha).
"""

from gradvar.optim._alpha_svrg import AlphaSVRG
from gradvar.optim._correction import variance_reduce_

__all__ = ["AlphaSVRG", "variance_reduce_"]
