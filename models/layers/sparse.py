"""Layers of sparse mechanisms: Longformer's global projections.

Beltagy et al. 2020 (arXiv 2004.05150), Section 3.1: "we use two sets of
projections, Q_s, K_s, V_s to compute attention scores of sliding window
attention, and Q_g, K_g, V_g to compute attention scores for the global
attention". With `global_projections=True` in its options,
`LongformerAttention` owns a second set of query, key and value projections
(initialised as the first, drawn apart) and passes the global rows' inputs
to `attention.longformer_attention`, which attends from the global
positions with them; every other row attends with the local set, global
keys included, as in the paper's code. The QK-norm and RoPE of the layer
apply to both sets. Without the option the layer is `MultiHeadAttention`.

Decoding takes the local set: a window-only Longformer decodes from its
ring (there are no global rows); one with `global_tokens` and separate
projections does not decode (its step says why).
"""

from __future__ import annotations

from flax import nnx

from efficient_attention.models.layers.base import MultiHeadAttention
from efficient_attention.models.layers.registry import register_layer


class LongformerAttention(MultiHeadAttention):
  """Longformer attention, with the global rows' own projections when its
  options say `global_projections=True`."""

  def __init__(self, model_dim: int, num_heads: int, *, rngs: nnx.Rngs,
               **kwargs):
    super().__init__(model_dim, num_heads, rngs=rngs, **kwargs)
    wanted = self.options.global_projections
    if wanted and self.query is None:
      raise ValueError('global_projections needs separate query '
                       'projections; got shared_qk=True')
    # The same shapes, dtypes and initialisers as the local set.
    copy = lambda dense: nnx.LinearGeneral(
        dense.in_features, dense.out_features, axis=dense.axis,
        use_bias=dense.use_bias, dtype=dense.dtype,
        param_dtype=dense.param_dtype, rngs=rngs) if wanted else None
    self.global_query = copy(self.query)
    self.global_key = copy(self.key)
    self.global_value = copy(self.value)

  def _input_arguments(self, x, context, q_positions, k_positions):
    if self.global_query is None:
      return {}
    query, key, value = self._project(
        x, context, q_positions, k_positions,
        projections=(self.global_query, self.global_key, self.global_value))
    return {'global_query': query, 'global_key': key, 'global_value': value}


register_layer('longformer', LongformerAttention)
