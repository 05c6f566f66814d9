"""Decoding state shared by mechanisms: the KV cache, the ring cache, segment-wise steps."""
