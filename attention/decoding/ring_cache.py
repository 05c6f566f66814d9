"""Decoding a causal sliding window from a ring of its last keys.

With `local_window_size=(left, right)` a causal query at position q sees the
keys at `[q - left, q]`, so decoding needs the last `left` keys and values,
never more. `RingCache` holds them, `[B, left, K, H]`, oldest first, and the
tokens each row has seen. A step with L new tokens attends from them over
the ring followed by the new keys, `[B, left + L, K, H]`: in that buffer the
new query t sits at index `left + t`, so causality, the window and ALiBi
distances read the same from indices as from absolute positions (a ring
slot older than the row's first token is masked). Then the ring keeps the
last `left` of the row's tokens. Memory and time per step are constant in
the length of the stream: O(B (left + L) K H) and O(B N L (left + L) H).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from efficient_attention.attention import masks


class RingCache(NamedTuple):
  """The last `left` keys and values `[B, left, K, H]` (oldest first) and
  the tokens each row has seen, `length` int32 `[B]`."""

  key: jax.Array
  value: jax.Array
  length: jax.Array


def init_state(batch_size: int, num_kv_heads: int, head_dim: int, left: int,
               dtype=jnp.float32) -> RingCache:
  shape = (batch_size, left, num_kv_heads, head_dim)
  return RingCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype),
                   jnp.zeros((batch_size,), jnp.int32))


def _keep_last(buffer_BWKH, keep_from_B, size):
  """Rows of `buffer [B, W, ...]` from `keep_from[b]` on, `size` of them."""
  return jax.vmap(lambda row, start: jax.lax.dynamic_slice_in_dim(
      row, start, size, axis=0))(buffer_BWKH, keep_from_B)


def step(state: RingCache, query, key, value, *, attend, left: int,
         num_new=None, alibi_slopes=None, mask=None, **options):
  """L new tokens of each row: `(out [B, L, N, H], new_state)`.

  `mask` (a static `attention.masks` object, optional) is evaluated at the
  buffer's indices, that is relative to the window, not at absolute
  positions; position masks that depend on absolute positions (strided,
  chunked) need the full KV cache instead.
  """
  B, L = query.shape[:2]
  keys = jnp.concatenate([state.key, key.astype(state.key.dtype)], axis=1)
  values = jnp.concatenate([state.value, value.astype(state.value.dtype)],
                           axis=1)
  # Ring slots older than the row's first token hold nothing.
  empty = masks.key_starts(jnp.maximum(left - state.length, 0))
  out = attend(query, keys, values, is_causal=True, query_offset=left,
               local_window_size=(left, 0), alibi_slopes=alibi_slopes,
               mask=empty if mask is None else mask & empty, **options)
  num_new = jnp.full((B,), L, jnp.int32) if num_new is None else num_new
  kept = (_keep_last(keys, num_new, left), _keep_last(values, num_new, left))
  return out, RingCache(*kept, state.length + num_new)
