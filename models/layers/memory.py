"""Layers of memory mechanisms (Infini-attention, Transformer-XL).

Both take content queries and keys and apply RoPE themselves, at positions
they know (within a segment, within the cache's window): the layer passes
`rope_base` instead of rotating. Infini-attention's gate, one logit per
query head, is a parameter here.
"""

from __future__ import annotations

from flax import nnx
import jax.numpy as jnp

from efficient_attention.attention.memory import infini
from efficient_attention.models.layers.base import MultiHeadAttention
from efficient_attention.models.layers.registry import register_layer

# Models start learning the gate where the kernel's default is (see there).
INITIAL_GATE_LOGIT = infini.DEFAULT_GATE_LOGIT


class XLAttention(MultiHeadAttention):
  """Transformer-XL attention: RoPE inside, over the segment and its cache."""

  rope_inside = True


class InfiniAttention(MultiHeadAttention):
  """Infini-attention with learned per-head gates `learned [1, N]`."""

  rope_inside = True

  def __init__(self, *args, rngs: nnx.Rngs, **kwargs):
    super().__init__(*args, rngs=rngs, **kwargs)
    self.learned = nnx.Param(jnp.full((1, self.num_heads),
                                      INITIAL_GATE_LOGIT, self.param_dtype))

  def _kernel_arguments(self):
    return {**super()._kernel_arguments(), 'gate_logits': self.learned[0]}


register_layer('xl', XLAttention)
register_layer('infini', InfiniAttention)
