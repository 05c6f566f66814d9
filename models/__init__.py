"""Flax NNX modules that take any `attention` mechanism by registry name."""

from models.layers import (MultiHeadAttention, RandomProjection,
                           attention_layer, redraw_projections)
from models.block import Block, Mlp
from models.config import TransformerConfig
from models.generate import generate, sample
from models.transformer import (DecoderLM, Encoder, EncoderDecoder,
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
