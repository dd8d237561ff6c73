"""Flower strategies: what is aggregated, and how."""

from strategies.continual import RoundRunner

__all__ = ["RoundRunner"]
