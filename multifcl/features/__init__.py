"""Features computed once per frozen encoder and reused: the client and evaluation caches."""

from multifcl.features.cache import (
    CACHE_HITS,
    CACHE_MISSES,
    FeatureCache,
    FeatureKey,
    counting_lookups,
    encoder_fingerprint,
    feature_cache_for,
    remove_spilled_features,
)
from multifcl.features.split import FeatureSplit

__all__ = [
    "CACHE_HITS",
    "CACHE_MISSES",
    "FeatureCache",
    "FeatureKey",
    "FeatureSplit",
    "counting_lookups",
    "encoder_fingerprint",
    "feature_cache_for",
    "remove_spilled_features",
]
