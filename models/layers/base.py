"""Multi-head attention layer (NNX) over any registered mechanism.

Projections `[B, T, D] -> [B, T, N, H]` for queries and `[B, S, K, H]` for
keys and values (MHA when K = N, GQA, MQA when K = 1), optional QK-norm
(RMSNorm of queries and keys per head; Dehghani et al. 2023, arXiv
2302.05442), optional shared-QK (queries are the keys' projection, as in
the Reformer; Kitaev et al. 2020, arXiv 2001.04451), RoPE or ALiBi
positions, logit soft-capping, and the attention itself as an
`attention.AttentionSpec`: a registry name, its typed options, a mask and
scores (`attention='blockwise'`, `attention_options={'query_chunk_size':
256}` build one).

This class serves every mechanism that needs nothing but projections.
Families that add parameters or state subclass it (`models.layers`):
`layer_class(name)` picks the class registered for a mechanism, and
`attention_layer(...)` builds it. Subclasses override `_kernel_arguments`
(arrays the kernel takes besides the inputs) or `_input_arguments` (arrays
computed from each call's inputs), and set `rope_inside` when the
mechanism applies RoPE itself at positions it knows.
"""

from __future__ import annotations

from typing import Any, Mapping

from flax import nnx
import jax
import jax.numpy as jnp

from efficient_attention.attention import positional
from efficient_attention.attention.spec import AttentionSpec
from efficient_attention.models.layers import registry as layer_registry

POSITIONAL_IN_ATTENTION = ('rope', 'alibi', None)


def make_spec(attention, attention_options=None) -> AttentionSpec:
  """The spec of a name or spec, with `attention_options` merged in."""
  spec = AttentionSpec.create(attention)
  if attention_options:
    spec = AttentionSpec.create(
        spec, options=spec.options.replace(**dict(attention_options)))
  return spec


class MultiHeadAttention(nnx.Module):
  """Self- or cross-attention with N query heads and K key/value heads."""

  # The mechanism takes content queries and keys and `rope_base`, and
  # rotates them at positions it knows (a segment's start, its cache's).
  rope_inside = False

  def __init__(self, model_dim: int, num_heads: int, *,
               num_kv_heads: int | None = None, head_dim: int | None = None,
               context_dim: int | None = None,
               attention: str | AttentionSpec = 'blockwise',
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
    spec = make_spec(attention, attention_options)
    wanted = layer_registry.registered_layer(spec.name)
    if wanted is not None and not isinstance(self, wanted):
      raise ValueError(f'attention {spec.name!r} needs the layer '
                       f'{wanted.__name__}; build it with '
                       'models.attention_layer(...)')
    refused = [name for name, used in [
        ('logits_soft_cap', logits_soft_cap is not None),
        ('alibi_slopes', position == 'alibi')] if used and
               name in spec.mechanism.refuses]
    if refused:
      raise ValueError(f'attention {spec.name!r} does not support '
                       f'{refused[0]} (position={position!r}, logits_soft_cap='
                       f'{logits_soft_cap!r})')
    self.spec = spec
    self.logits_soft_cap = logits_soft_cap
    self.num_heads, self.num_kv_heads = num_heads, num_kv_heads
    self.head_dim, self.position, self.rope_base = head_dim, position, rope_base
    self.dtype, self.param_dtype = dtype, param_dtype
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

  @property
  def attention(self) -> str:
    """The mechanism's registry name."""
    return self.spec.name

  @property
  def options(self):
    """The mechanism's typed options."""
    return self.spec.options

  @property
  def mechanism(self):
    return self.spec.mechanism

  def _kernel_arguments(self) -> dict[str, Any]:
    """Arrays and settings the kernel takes besides its inputs and options:
    what this layer owns (ALiBi slopes, soft cap; subclasses add theirs)."""
    arguments = {}
    if self.position == 'alibi':
      arguments['alibi_slopes'] = positional.alibi_slopes(self.num_heads)
    if self.logits_soft_cap is not None:
      arguments['logits_soft_cap'] = self.logits_soft_cap
    if self.position == 'rope' and self.rope_inside:
      arguments['rope_base'] = self.rope_base
    return arguments

  def _project(self, x, context, q_positions, k_positions,
               projections=None):
    """Queries, keys and values (normed, rotated), from this layer's
    projections or from `projections` (query, key, value modules)."""
    to_query, to_key, to_value = projections or (self.query, self.key,
                                                 self.value)
    key, value = to_key(context), to_value(context)
    if to_query is None:  # shared-QK
      if context is not x:
        raise ValueError('a shared_qk layer does self-attention only, got a '
                         'context')
      query = key
    else:
      query = to_query(x)
    if self.query_norm is not None:
      query, key = self.query_norm(query), self.key_norm(key)
    if self.position == 'rope' and not self.rope_inside:
      query = positional.rope(query, q_positions, base=self.rope_base)
      key = positional.rope(key, k_positions, base=self.rope_base)
    return query, key, value

  def __call__(self, x: jax.Array, context: jax.Array | None = None, *,
               is_causal: bool = False, mask: Any = None,
               key_value_seq_lengths: jax.typing.ArrayLike | None = None,
               positions: jax.typing.ArrayLike | None = None) -> jax.Array:
    """Attends from `x [B, T, D]` over `context [B, S, D']` (default: x).

    Args:
      x: `[B, T, D]` queries' inputs.
      context: optional `[B, S, D']` keys' and values' inputs.
      is_causal: causal self-attention.
      mask: optional bool mask broadcasting to `[B, N, T, S]`, or an
        `attention.masks.Mask` (ANDed with the spec's).
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
    out = self.spec(query, key, value, mask=mask, is_causal=is_causal,
                    key_value_seq_lengths=key_value_seq_lengths,
                    **self._kernel_arguments(),
                    **self._input_arguments(x, context, q_positions,
                                            k_positions))
    return self.out(out)

  def share_with(self, first: 'MultiHeadAttention') -> None:
    """Ties the parameters this layer's options share across a model's
    layers to those of `first`, the model's first attention layer of this
    class; the stack calls it on every later one. None here (Linformer's
    `share_layers` has some)."""
    del first

  def _input_arguments(self, x, context, q_positions, k_positions
                       ) -> dict[str, Any]:
    """Arrays the kernel takes that depend on this call's inputs (the
    global rows' own projections of Longformer); none here."""
    del x, context, q_positions, k_positions
    return {}

  def init_state(self, batch_size: int, max_length: int) -> Any:
    """The mechanism's empty decoding state for this layer."""
    return self.spec.init_state(batch_size, self.num_kv_heads, self.head_dim,
                                max_length=max_length,
                                dtype=self.dtype or jnp.float32,
                                **self._state_arguments())

  def _state_arguments(self) -> dict[str, Any]:
    """Arguments of `init_state` besides the options (a window shapes the
    exact cache into a ring)."""
    return {}

  def step(self, state: Any, x: jax.Array, positions: jax.typing.ArrayLike,
           *, num_new: jax.typing.ArrayLike | None = None
           ) -> tuple[jax.Array, Any]:
    """Causal self-attention of L new tokens `x [B, L, D]` at `positions`.

    Returns:
      `(out [B, L, D], new_state)`.
    """
    query, key, value = self._project(x, x, positions, positions)
    out, state = self.spec.step(state, query, key, value, num_new=num_new,
                                **self._kernel_arguments())
    return self.out(out), state
