"""Flax NNX modules that take any `attention` mechanism by registry name."""
