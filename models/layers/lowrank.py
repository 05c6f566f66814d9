"""Layers of low-rank mechanisms: Linformer's learned projections.

`LinformerAttention` owns E and F as a parameter, `[2, k, n]` (`[1, k, n]`
with `share_key_value`; `[2 or 1, K, k, n]` without `share_heads`),
initialised as the paper's Gaussian draw with variance 1 / k, and passes
them to `attention.linformer_attention`. Inputs up to n =
`sequence_length` positions are projected with the first S columns. With
`share_layers`, the model's Linformer layers hold one projection (the
paper's layerwise sharing): the stack ties each layer's to the first's
through `share_with`, so one parameter gets every layer's gradient.
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
        share_key_value=options.share_key_value,
        num_kv_heads=None if options.share_heads else self.num_kv_heads))

  def _kernel_arguments(self):
    return {**super()._kernel_arguments(),
            'projection': self.projection[...]}

  def share_with(self, first: MultiHeadAttention) -> None:
    """Takes `first`'s projection when both layers' options share them
    across layers and their shapes agree (else keeps its own)."""
    if (isinstance(first, LinformerAttention) and
        self.options.share_layers and first.options.share_layers):
      if first.projection.shape != self.projection.shape:
        raise ValueError(
            f'share_layers: layers project to different shapes '
            f'{first.projection.shape} and {self.projection.shape}; give '
            'them the same projected_length, sequence_length, '
            'share_key_value and share_heads')
      self.projection = first.projection


register_layer('linformer', LinformerAttention)
