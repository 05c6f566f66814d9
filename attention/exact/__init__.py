"""Exact softmax attention: the dense reference, the blockwise (flash) kernel and its tile lists."""
