"""Launchers, configs, training and benchmarks (absl, ml_collections)."""
