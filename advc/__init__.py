"""advc: a compiler and runner for adversarial-training objectives."""

__version__ = "0.1.0"
