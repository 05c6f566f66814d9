"""Attention with a memory across segments: Infini-attention and Transformer-XL."""
