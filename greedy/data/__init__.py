"""Datasets: loaders, downloads and checks."""
