"""gradvar: measure the variance of neural-network gradients and turn it into better training."""

__version__ = "0.1.0"
