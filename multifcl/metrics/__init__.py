"""Continual-learning metrics and per-round cost accounting."""

from multifcl.metrics.accuracy_history import AccuracyHistory
from multifcl.metrics.continual import ContinualMetrics, summarize
from multifcl.metrics.rounds import RoundRecord

__all__ = ["AccuracyHistory", "ContinualMetrics", "RoundRecord", "summarize"]
