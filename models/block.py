"""Transformer block: attention and MLP on the residual stream.

Pre-norm (Xiong et al. 2020, arXiv 2002.04745): `x + f(norm(x))` for each of
self-attention, optional cross-attention and the MLP. Post-norm (Vaswani et
al. 2017): `norm(x + f(x))`. MLP: GELU, or SwiGLU (Shazeer 2020, arXiv
2002.05202).
"""

from __future__ import annotations

from flax import nnx
import jax

from efficient_attention.attention.spec import AttentionSpec
from efficient_attention.models import layers
from efficient_attention.models.config import TransformerConfig


def make_norm(config: TransformerConfig, rngs):
  cls = nnx.RMSNorm if config.norm == 'rms' else nnx.LayerNorm
  return cls(config.model_dim, dtype=config.dtype, rngs=rngs)


class Mlp(nnx.Module):
  """`[B, T, D] -> [B, T, D]` through `mlp_dim` hidden units."""

  def __init__(self, config: TransformerConfig, rngs: nnx.Rngs):
    d, f = config.model_dim, config.mlp_dim
    dense = lambda i, o: nnx.Linear(i, o, use_bias=False, dtype=config.dtype,
                                    rngs=rngs)
    self.gated = config.mlp == 'swiglu'
    self.up = dense(d, f)
    self.gate = dense(d, f) if self.gated else None
    self.down = dense(f, d)

  def __call__(self, x):
    if self.gated:
      return self.down(jax.nn.silu(self.gate(x)) * self.up(x))
    return self.down(jax.nn.gelu(self.up(x)))


class Block(nnx.Module):
  """One layer: self-attention, optional cross-attention, MLP."""

  def __init__(self, config: TransformerConfig, *, layer: int = 0,
               cross_attention=False, rngs: nnx.Rngs):
    """Layer `layer` of a stack: its attention is `config.layer_spec(layer)`
    (a mechanism with a random draw, BigBird's, draws with `seed + layer`:
    one fixed draw per layer, the same in training and evaluation)."""
    self.config = config
    spec = config.layer_spec(layer)
    if getattr(spec.options, 'draws_per_layer', False):
      spec = AttentionSpec.create(spec, options=spec.options.replace(
          seed=spec.options.seed + layer))
    make_attention = lambda shared_qk: layers.attention_layer(
        config.model_dim, config.num_heads, num_kv_heads=config.num_kv_heads,
        head_dim=config.head_dim, attention=spec,
        position=config.attention_position, qk_norm=config.qk_norm,
        shared_qk=shared_qk, logits_soft_cap=config.logits_soft_cap,
        dtype=config.dtype, rngs=rngs)
    self.attention = make_attention(config.shared_qk)
    self.attention_norm = make_norm(config, rngs)
    self.cross = make_attention(False) if cross_attention else None
    self.cross_norm = make_norm(config, rngs) if cross_attention else None
    self.mlp = Mlp(config, rngs)
    self.mlp_norm = make_norm(config, rngs)
    self.dropout = nnx.Dropout(config.dropout_rate, rngs=rngs)

  def _residual(self, x, norm, fn, deterministic):
    if self.config.post_norm:
      return norm(x + self.dropout(fn(x), deterministic=deterministic))
    return x + self.dropout(fn(norm(x)), deterministic=deterministic)

  def _cross_and_mlp(self, x, context, context_lengths, deterministic):
    if self.cross is not None:
      x = self._residual(x, self.cross_norm, lambda h: self.cross(
          h, context, key_value_seq_lengths=context_lengths), deterministic)
    return self._residual(x, self.mlp_norm, self.mlp, deterministic)

  def __call__(self, x, *, is_causal=False, lengths=None, positions=None,
               context=None, context_lengths=None, mask=None,
               deterministic=True):
    """`x [B, T, D]` -> `[B, T, D]`; `lengths [B]` masks padded keys,
    `mask` (an `attention.masks` object: packed documents) more."""
    x = self._residual(x, self.attention_norm, lambda h: self.attention(
        h, is_causal=is_causal, key_value_seq_lengths=lengths,
        positions=positions, mask=mask), deterministic)
    return self._cross_and_mlp(x, context, context_lengths, deterministic)

  def step(self, state, x, positions, *, num_new=None, context=None,
           context_lengths=None):
    """Decodes L new tokens `x [B, L, D]`; returns `(y, new_state)`."""
    out = {}

    def attend(h):
      y, out['state'] = self.attention.step(state, h, positions,
                                            num_new=num_new)
      return y

    x = self._residual(x, self.attention_norm, attend, True)
    return self._cross_and_mlp(x, context, context_lengths, True), out['state']
