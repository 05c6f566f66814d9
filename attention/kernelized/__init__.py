"""Kernelized attention in O(N): a chunked feature-map kernel, linear attention and the Performer."""
