"""Clustering and statistics of patches: k-means, patch preprocessing, divergence estimators."""
