"""Features computed once per frozen encoder and reused: the client and evaluation caches."""

from multifcl.features.cache import (
    FeatureCache,
    FeatureKey,
    encoder_fingerprint,
    feature_cache_for,
    remove_spilled_features,
)
from multifcl.features.split import FeatureSplit

__all__ = [
    "FeatureCache",
    "FeatureKey",
    "FeatureSplit",
    "encoder_fingerprint",
    "feature_cache_for",
    "remove_spilled_features",
]
