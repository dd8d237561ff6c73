"""Training losses beyond cross-entropy."""
