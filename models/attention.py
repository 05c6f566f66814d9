"""Multi-head attention layer (NNX) over any registered mechanism.

Projections `[B, T, D] -> [B, T, N, H]` for queries and `[B, S, K, H]` for
keys and values (MHA when K = N, GQA, MQA when K = 1), optional QK-norm
(RMSNorm of queries and keys per head; Dehghani et al. 2023, arXiv
2302.05442), optional shared-QK (queries are the keys' projection, as in
the Reformer; Kitaev et al. 2020, arXiv 2001.04451), RoPE or ALiBi
positions, logit soft-capping, and the attention itself by registry name:
`attention='blockwise'`, `attention_options={'query_chunk_size': 256}`.

Mechanisms that apply RoPE themselves (`rope_inside`: Infini-attention,
whose memory must see content only, and Transformer-XL, which counts
positions from its cache) get `rope_base` instead of rotated inputs. Their
learned options (Infini-attention's per-head gate) are parameters here,
`[options, N]`, starting at the value the mechanism registered.

Randomised mechanisms get their random option drawn once from the layer's
`params` stream and kept as a `RandomProjection` variable: the Performer's
feature projection, LSH's hashing key. It is not a `nnx.Param`, so
optimizers leave it alone, but it is saved with the model state.
`redraw(rng)` (or `redraw_projections(model, rng)` for a whole model) draws
a new one, as the Performer paper does during training and the Reformer
does at every step.
"""

from __future__ import annotations

from typing import Any, Mapping

from flax import nnx
import jax
import jax.numpy as jnp

import attention as attention_lib
from attention import positional

POSITIONAL_IN_ATTENTION = ('rope', 'alibi', None)


class RandomProjection(nnx.Variable):
  """A random draw (a projection `[F, H]`, a key): state, not trained."""


class MultiHeadAttention(nnx.Module):
  """Self- or cross-attention with N query heads and K key/value heads."""

  def __init__(self, model_dim: int, num_heads: int, *,
               num_kv_heads: int | None = None, head_dim: int | None = None,
               context_dim: int | None = None, attention: str = 'blockwise',
               attention_options: Mapping[str, Any] | None = None,
               position: str | None = 'rope', rope_base: float = 10000.0,
               qk_norm: bool = False, shared_qk: bool = False,
               logits_soft_cap: float | None = None,
               use_bias: bool = False, dtype=None, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    num_kv_heads = num_kv_heads or num_heads
    head_dim = head_dim or model_dim // num_heads
    if num_heads % num_kv_heads:
      raise ValueError(f'num_heads={num_heads} must be a multiple of '
                       f'num_kv_heads={num_kv_heads}')
    if shared_qk and num_kv_heads != num_heads:
      raise ValueError(f'shared_qk needs num_kv_heads = num_heads, got '
                       f'{num_kv_heads} and {num_heads}')
    if position not in POSITIONAL_IN_ATTENTION:
      raise ValueError(f'position must be one of {POSITIONAL_IN_ATTENTION}, '
                       f'got {position!r}')
    mechanism = attention_lib.get(attention)  # Unknown names fail here.
    self.attention = attention
    options = dict(attention_options or {})
    if logits_soft_cap is not None:
      options['logits_soft_cap'] = logits_soft_cap
    refused = [name for name, used in [
        ('logits_soft_cap', logits_soft_cap is not None),
        ('alibi_slopes', position == 'alibi')] if used and
               name in mechanism.refuses]
    if refused:
      raise ValueError(f'attention {attention!r} does not support '
                       f'{refused[0]} (position={position!r}, logits_soft_cap='
                       f'{logits_soft_cap!r})')
    self.options = tuple(sorted(options.items()))  # hashable, static
    self.num_heads, self.num_kv_heads = num_heads, num_kv_heads
    self.head_dim, self.position, self.rope_base = head_dim, position, rope_base
    self.dtype = dtype
    dense = lambda i, o, **kw: nnx.LinearGeneral(
        i, o, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype,
        rngs=rngs, **kw)
    context_dim = context_dim or model_dim
    # Shared-QK (Kitaev et al. 2020): queries are the keys' projection.
    self.query = None if shared_qk else dense(model_dim, (num_heads, head_dim))
    self.key = dense(context_dim, (num_kv_heads, head_dim))
    self.value = dense(context_dim, (num_kv_heads, head_dim))
    self.out = dense((num_heads, head_dim), model_dim, axis=(-2, -1))
    norm = lambda: nnx.RMSNorm(head_dim, dtype=dtype, param_dtype=param_dtype,
                               rngs=rngs) if qk_norm else None
    self.key_norm = norm()
    self.query_norm = self.key_norm if shared_qk else norm()
    self.projection = RandomProjection(
        self._draw(rngs.params())) if mechanism.draw_projection else None
    initial = [value for _, value in mechanism.learned_options]
    self.learned = nnx.Param(jnp.broadcast_to(
        jnp.asarray(initial, param_dtype)[:, None], (len(initial), num_heads))
                             ) if initial else None

  def _draw(self, rng):
    mechanism = self.mechanism
    return mechanism.draw_projection(
        rng, self.head_dim, **{**dict(mechanism.defaults), **dict(self.options)})

  def redraw(self, rng):
    """Draws a new random-feature projection (no-op without one)."""
    if self.projection is not None:
      self.projection[...] = self._draw(rng)

  @property
  def mechanism(self) -> attention_lib.Mechanism:
    return attention_lib.get(self.attention)

  def _options(self):
    """The mechanism's options (plain Python on the module; arrays here)."""
    options = dict(self.options)
    if self.position == 'alibi':
      options['alibi_slopes'] = positional.alibi_slopes(self.num_heads)
    if self.projection is not None:
      options[self.mechanism.projection_option] = self.projection[...]
    if self.position == 'rope' and self.mechanism.rope_inside:
      options['rope_base'] = self.rope_base
    for i, (name, _) in enumerate(self.mechanism.learned_options):
      options[name] = self.learned[i]
    return options

  def _project(self, x, context, q_positions, k_positions):
    key, value = self.key(context), self.value(context)
    if self.query is None:  # shared-QK
      if context is not x:
        raise ValueError('a shared_qk layer does self-attention only, got a '
                         'context')
      query = key
    else:
      query = self.query(x)
    if self.query_norm is not None:
      query, key = self.query_norm(query), self.key_norm(key)
    if self.position == 'rope' and not self.mechanism.rope_inside:
      query = positional.rope(query, q_positions, base=self.rope_base)
      key = positional.rope(key, k_positions, base=self.rope_base)
    return query, key, value

  def __call__(self, x, context=None, *, is_causal: bool = False, mask=None,
               key_value_seq_lengths=None, positions=None):
    """Attends from `x [B, T, D]` over `context [B, S, D']` (default: x).

    Args:
      x: `[B, T, D]` queries' inputs.
      context: optional `[B, S, D']` keys' and values' inputs.
      is_causal: causal self-attention.
      mask: optional bool mask broadcasting to `[B, N, T, S]`.
      key_value_seq_lengths: optional int `[B]`: context lengths.
      positions: optional int `[B, T]` positions of x (RoPE); default
        `0..T-1`. Context positions are `0..S-1`.

    Returns:
      `[B, T, D]`.
    """
    self_attention = context is None
    context = x if self_attention else context
    T, S = x.shape[1], context.shape[1]
    q_positions = jnp.arange(T) if positions is None else positions
    k_positions = q_positions if self_attention else jnp.arange(S)
    query, key, value = self._project(x, context, q_positions, k_positions)
    out = self.mechanism(query, key, value, mask=mask, is_causal=is_causal,
                         key_value_seq_lengths=key_value_seq_lengths,
                         **self._options())
    return self.out(out)

  def init_state(self, batch_size: int, max_length: int):
    """The mechanism's empty decoding state for this layer."""
    if not self.mechanism.decodable:
      raise ValueError(f'attention {self.mechanism.name!r} has no decoding '
                       'form (init_state/step)')
    return self.mechanism.init_state(
        batch_size, self.num_kv_heads, self.head_dim, max_length=max_length,
        dtype=self.dtype or jnp.float32, **self._options())

  def step(self, state, x, positions, *, num_new=None):
    """Causal self-attention of L new tokens `x [B, L, D]` at `positions`.

    Returns:
      `(out [B, L, D], new_state)`.
    """
    query, key, value = self._project(x, x, positions, positions)
    out, state = self.mechanism.step(state, query, key, value,
                                     num_new=num_new, **self._options())
    return self.out(out), state


def redraw_projections(model: nnx.Module, rng) -> None:
  """Redraws the projection of every random-feature layer in `model`.

  Layer i (in graph order) draws from `fold_in(rng, i)`.
  """
  layers = [m for _, m in nnx.iter_modules(model)
            if isinstance(m, MultiHeadAttention) and m.projection is not None]
  for i, layer in enumerate(layers):
    layer.redraw(jax.random.fold_in(rng, i))
