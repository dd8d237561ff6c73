"""Flower strategies: what is aggregated, and how."""

from strategies.continual import ContinualStrategy

__all__ = ["ContinualStrategy"]
