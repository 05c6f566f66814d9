"""Layers of low-rank mechanisms: Linformer's learned projections.

`LinformerAttention` owns E and F (`[2, k, n]`, or `[1, k, n]` with
`share_key_value`) as parameters, initialised as the paper's Gaussian draw
with variance 1 / k, and passes them to `attention.linformer_attention`.
Inputs up to n = `sequence_length` positions are projected with the first
S columns. To share one pair across layers (the paper's layerwise
sharing), share the layer's `projection` parameter between blocks.
"""

from __future__ import annotations

from flax import nnx

from efficient_attention.attention.lowrank import linformer
from efficient_attention.models.layers.base import MultiHeadAttention
from efficient_attention.models.layers.registry import register_layer


class LinformerAttention(MultiHeadAttention):
  """Linformer attention with learned sequence projections E and F."""

  def __init__(self, *args, rngs: nnx.Rngs, **kwargs):
    super().__init__(*args, rngs=rngs, **kwargs)
    options = self.options
    self.projection = nnx.Param(linformer.draw_projection(
        rngs.params(), options.projected_length, options.sequence_length,
        share_key_value=options.share_key_value))

  def _kernel_arguments(self):
    return {**super()._kernel_arguments(),
            'projection': self.projection[...]}


register_layer('linformer', LinformerAttention)
