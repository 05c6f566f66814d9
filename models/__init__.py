"""Flax NNX modules that take any `attention` mechanism by registry name."""

from efficient_attention.models.layers import (MultiHeadAttention, RandomProjection,
                           attention_layer, redraw_projections)
from efficient_attention.models.block import Block, Mlp
from efficient_attention.models.config import TransformerConfig
from efficient_attention.models.generate import generate, sample
from efficient_attention.models.transformer import (DecoderLM, Encoder, EncoderDecoder,
                                cache_overflow, reset_rows)

__all__ = [
    'Block',
    'DecoderLM',
    'Encoder',
    'EncoderDecoder',
    'Mlp',
    'MultiHeadAttention',
    'RandomProjection',
    'TransformerConfig',
    'attention_layer',
    'cache_overflow',
    'generate',
    'redraw_projections',
    'reset_rows',
    'sample',
]
