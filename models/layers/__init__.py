"""Attention layers (NNX): one class per family that needs parameters or
state, picked by mechanism name.

  attention_layer(model_dim, num_heads, attention=spec_or_name, ...)

builds the layer registered for the mechanism (`layer_class(name)`):
`MultiHeadAttention` for exact, linear and masked attention,
`PerformerAttention` and `LSHAttention` (a random draw kept as state),
`InfiniAttention` (learned gates), `XLAttention` (RoPE inside),
`LinformerAttention` (learned sequence projections) and
`LongformerAttention` (the global rows' own projections).
"""

from efficient_attention.attention.spec import AttentionSpec
from efficient_attention.models.layers.base import MultiHeadAttention, make_spec
from efficient_attention.models.layers.lowrank import LinformerAttention
from efficient_attention.models.layers.memory import InfiniAttention, XLAttention
from efficient_attention.models.layers.random_draws import (LSHAttention, PerformerAttention,
                                        RandomDrawAttention, RandomProjection,
                                        redraw_projections)
from efficient_attention.models.layers.registry import register_layer, registered_layer
from efficient_attention.models.layers.sparse import LongformerAttention


def layer_class(name: str) -> type:
  """The layer class of mechanism `name`: the one its family registered,
  else `MultiHeadAttention`."""
  return registered_layer(name) or MultiHeadAttention


def attention_layer(model_dim: int, num_heads: int, *,
                    attention: str | AttentionSpec = 'blockwise',
                    attention_options: dict | None = None,
                    **kwargs) -> MultiHeadAttention:
  """The layer for `attention` (a name or `attention.AttentionSpec`), with
  `MultiHeadAttention`'s arguments."""
  spec = make_spec(attention, attention_options)
  return layer_class(spec.name)(model_dim, num_heads, attention=spec,
                                **kwargs)


__all__ = [
    'InfiniAttention',
    'LSHAttention',
    'LinformerAttention',
    'LongformerAttention',
    'MultiHeadAttention',
    'PerformerAttention',
    'RandomDrawAttention',
    'RandomProjection',
    'XLAttention',
    'attention_layer',
    'layer_class',
    'redraw_projections',
    'register_layer',
    'registered_layer',
]
