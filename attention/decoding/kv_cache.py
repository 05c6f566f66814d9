"""Decoding with exact attention: a fixed-size key/value cache.

The decoding contract of every causal mechanism is::

  state = init_state(batch_size, num_kv_heads, head_dim, **options)
  out, state = step(state, query, key, value, **options)

with `query [B, L, N, H]` for L new tokens. For exact attention the state is
this cache: `[B, max_length, K, H]` keys and values (K heads, never N) and the
number of tokens each row holds. `step` writes the new keys and values at
each row's own length, then lets the new queries attend causally over the
cache. Rows may hold different lengths (batched prompts of different
lengths): `num_new` says how many of the L new tokens are real in each row;
the rest are written past the row's length and overwritten by its next
tokens before any query can see them.

The new queries attend with `is_causal=True` from `query_offset = length`:
with `blockwise`, which skips tiles by position, a step at position p costs
O(B N L p H) and forms nothing of the cache's size (`dot_product`, the
dense reference, still costs O(max_length)). The cache is a pytree of
arrays, so it can be carried by `jax.jit`, `lax.scan` and saved by orbax.
"""

from __future__ import annotations

import functools
import inspect
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from efficient_attention.attention import arguments
from efficient_attention.attention.types import (Any, ArrayLike, DTypeLike, Output,
                                               PrecisionLike)
from efficient_attention.attention import options as options_lib
from efficient_attention.attention.decoding import ring_cache
from efficient_attention.attention import scores
from efficient_attention.attention import shapes



class KVCache(NamedTuple):
  """Keys and values `[B, max_length, K, H]`; `length` int32 `[B]`."""

  key: jax.Array
  value: jax.Array
  length: jax.Array


def init_state(batch_size: int, num_kv_heads: int, head_dim: int, *,
               max_length: int, dtype: DTypeLike = jnp.float32,
               local_window_size: int | tuple[int, int] | None = None) -> Output:
  """An empty cache for `max_length` tokens per row.

  With `local_window_size=(left, right)` and `left < max_length`, a ring of
  the last `left` tokens instead (`attention.decoding.ring_cache`): constant memory,
  however long the stream.
  """
  for name, value in [('batch_size', batch_size),
                      ('num_kv_heads', num_kv_heads), ('head_dim', head_dim),
                      ('max_length', max_length)]:
    if not isinstance(value, int) or value < 1:
      raise ValueError(f'{name} must be a positive int, got {value!r}')
  window = arguments.window_pair(local_window_size)
  if window is not None and window[0] < max_length:
    return ring_cache.init_state(batch_size, num_kv_heads, head_dim,
                                 window[0], dtype)
  shape = (batch_size, max_length, num_kv_heads, head_dim)
  return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype),
                 jnp.zeros((batch_size,), jnp.int32))


def overflowed(state) -> jax.Array | None:
  """bool `[B]`: rows that ran past the cache's max_length (their outputs
  from then on are NaN); None for a state that is not a `KVCache` (ring
  caches and memories never overflow)."""
  if not isinstance(state, KVCache):
    return None
  return state.length > state.key.shape[1]


def check_room(state, num_new_B) -> None:
  """ValueError if concrete lengths would run past the cache (before any
  step runs); traced values are not checked (see `overflowed`)."""
  if not isinstance(state, KVCache):
    return
  length, num_new = shapes.concrete(state.length), shapes.concrete(num_new_B)
  if length is None or num_new is None:
    return
  length = length + num_new
  max_length = state.key.shape[1]
  if (length > max_length).any():
    raise ValueError(f'the decoding cache holds max_length={max_length} '
                     f'tokens per row; these tokens would take rows to '
                     f'{length.tolist()}: make the cache with a larger '
                     'max_length')


def write_rows(cache_BLKH, new_BLKH, start_B):
  """Writes row b of `new [B, L, ...]` into row b of the cache at `start[b]`."""
  return jax.vmap(lambda c, x, s: lax.dynamic_update_slice_in_dim(
      c, x, s, axis=0))(cache_BLKH, new_BLKH.astype(cache_BLKH.dtype), start_B)


def step(state: KVCache, query: ArrayLike, key: ArrayLike, value: ArrayLike, *,
         attend: Callable[..., Any], num_new: ArrayLike | None = None,
         local_window_size: int | tuple[int, int] | None = None,
         alibi_slopes: ArrayLike | None = None,
         self_logit: float | None = None, **options) -> tuple[jax.Array, KVCache]:
  """Appends L tokens to the cache and attends from their queries.

  Args:
    state: the cache.
    query: `[B, L, N, H]`, at positions `state.length[b] + i`.
    key: `[B, L, K, H]`, appended to the cache.
    value: `[B, L, K, H]`, appended to the cache.
    attend: the exact attention function to use over the cache.
    num_new: optional int `[B]`: real tokens among the L of each row
      (default L); the cache length of row b grows by `num_new[b]`.
    local_window_size: int or `(left, right)`; with causal decoding only
      `left` matters.
    alibi_slopes: optional `[N]` ALiBi slopes.
    self_logit: optional; added to each query's logit for its own key
      (Reformer's shared-QK self-mask: a large negative number).
    **options: passed to `attend` (scale, logits_soft_cap, chunk sizes...).

  Returns:
    `(out [B, L, N, H], new_state)`. A row whose tokens would run past
    `max_length` gets NaN outputs rather than overwriting its cache.
  """
  if isinstance(state, ring_cache.RingCache):
    window = arguments.window_pair(local_window_size)
    left = state.key.shape[1]
    if window is None or window[0] != left or self_logit is not None:
      raise ValueError(f'a ring cache of {left} tokens decodes a causal '
                       f'window of left={left} only, got local_window_size='
                       f'{local_window_size!r}, self_logit={self_logit!r}')
    return ring_cache.step(state, query, key, value, attend=attend,
                           left=left, num_new=num_new,
                           alibi_slopes=alibi_slopes, **options)
  B, L, N, H = query.shape
  _, max_length, K, _ = state.key.shape
  for name, x in (('key', key), ('value', value)):
    if x.shape != (B, L, K, H):
      raise ValueError(f'{name} must be [B, L, K, H] = {(B, L, K, H)} to fit '
                       f'the cache, got {x.shape}')
  if L > max_length:
    raise ValueError(f'query holds {L} tokens, more than the cache\'s '
                     f'max_length={max_length}')
  new_key = write_rows(state.key, key, state.length)
  new_value = write_rows(state.value, value, state.length)
  if self_logit is not None:  # LSH's own-key logit, as a score modifier
    options['score'] = scores.chain(scores.self_logit(self_logit),
                                    options.get('score'))
  # Causal from each row's length on: keys not yet written lie after every
  # query, and a kernel that skips tiles by position visits only the
  # written ones (no [B, L, max_length] mask or bias is formed).
  out = attend(query, new_key, new_value, is_causal=True,
               query_offset=state.length,
               local_window_size=local_window_size,
               alibi_slopes=alibi_slopes, **options)
  num_new = jnp.full((B,), L, jnp.int32) if num_new is None else num_new
  overflow = state.length + L > max_length
  out = jnp.where(overflow[:, None, None, None], jnp.nan, out)
  return out, KVCache(new_key, new_value, state.length + num_new)


def decoding_pair(attend):
  """`(init_state, step)` of an exact mechanism `attend` over this cache.

  `attend` is decorated with `options.takes`: `init_state` accepts (and
  checks) its options, which do not shape the cache, so a model passes one
  options object to both; `step` passes them on to `attend`, which checks
  them too.
  """

  def init_state_(batch_size: int, num_kv_heads: int, head_dim: int, *,
                  max_length: int, dtype: DTypeLike = jnp.float32,
                  local_window_size: int | tuple[int, int] | None = None
                  ) -> KVCache | ring_cache.RingCache:
    return init_state(batch_size, num_kv_heads, head_dim,
                      max_length=max_length, dtype=dtype,
                      local_window_size=local_window_size)

  init_state_.__name__ = init_state_.__qualname__ = 'init_state'
  init_state_.__module__ = attend.__module__  # errors name the mechanism
  init_state_.__doc__ = init_state.__doc__
  @functools.wraps(step)
  def step_(state, query, key, value, **arguments):
    return step(state, query, key, value, attend=attend, **arguments)

  step_.__signature__ = _without_attend(step)
  return options_lib.takes(attend.options_type)(init_state_), step_


def _without_attend(fn) -> inspect.Signature:
  """`fn`'s signature less its `attend` keyword (bound by `decoding_pair`)."""
  signature = inspect.signature(fn)
  return signature.replace(parameters=[
      p for p in signature.parameters.values() if p.name != 'attend'])
