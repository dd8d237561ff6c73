"""Continual-learning metrics and per-round cost accounting."""

from multifcl.metrics.continual import ContinualMetrics, summarize
from multifcl.metrics.rounds import RoundRecord

__all__ = ["ContinualMetrics", "RoundRecord", "summarize"]
