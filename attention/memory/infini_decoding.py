"""Decoding with Infini-attention: the memory plus the unfinished segment.

The state holds the compressive `Memory` of the finished segments and the
keys and values (content, un-rotated) of the segment being written, `fill`
tokens of it per row. Each new token attends causally to that segment
(RoPE at positions from the segment's start, as in `infini.segment_step`)
and reads the memory; when a row's segment reaches `segment_size` tokens it
is written to the memory in one update (the delta rule retrieves with the
memory from before the segment, as the parallel form does) and emptied.
So decoding token by token gives the outputs of one `infini_attention`
call over the whole sequence.

A step of L tokens is a `lax.scan` over them: O(L (segment_size + H) H)
per head, and the state is O(K H (H + segment_size)) whatever the length.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from efficient_attention.attention import arguments
from efficient_attention.attention.types import (Any, ArrayLike, DTypeLike, Output,
                                               PrecisionLike)
from efficient_attention.attention import options as options_lib
from efficient_attention.attention.memory import infini
from efficient_attention.attention.decoding import kv_cache
from efficient_attention.attention import positional
from efficient_attention.attention.exact import reference
from efficient_attention.attention import registry
from efficient_attention.attention.decoding import segment_steps


class State(NamedTuple):
  """Infini-attention's decoding state (a pytree of arrays)."""

  memory: infini.Memory
  key: jax.Array  # [B, L, K, H]: keys of the unfinished segment
  value: jax.Array  # [B, L, K, H]
  fill: jax.Array  # int32 [B]: tokens in the unfinished segment


@options_lib.takes(infini.InfiniOptions)
def init_state(batch_size: int, num_kv_heads: int, head_dim: int, *,
               segment_size: int, max_length: int | None = None,
               dtype: DTypeLike = jnp.float32) -> State:
  """An empty state: the memory and one segment's keys and values.

  `max_length` (the decoding contract's) does not shape it: the memory
  holds any number of tokens.
  """
  del max_length
  for name, value in [('batch_size', batch_size),
                      ('num_kv_heads', num_kv_heads), ('head_dim', head_dim)]:
    arguments.check_positive_int(name, value)
  shape = (batch_size, segment_size, num_kv_heads, head_dim)
  return State(infini.init_memory(batch_size, num_kv_heads, head_dim),
               jnp.zeros(shape, dtype), jnp.zeros(shape, dtype),
               jnp.zeros((batch_size,), jnp.int32))


def _local(state: State, query_B1NH, scale, rope_base):
  """Causal attention of one query per row over its unfinished segment."""
  L = state.key.shape[1]
  slots = jnp.arange(L)
  query, key = query_B1NH, state.key
  if rope_base is not None:
    query = positional.rope(query, state.fill[:, None], base=rope_base)
    key = positional.rope(key, slots, base=rope_base)
  seen_B11L = (slots[None, :] <= state.fill[:, None])[:, None, None, :]
  return reference.dot_product_attention(query, key, state.value,
                                         mask=seen_B11L, scale=scale)


def _token(state: State, query, key, value, real_B, *, gate, update, scale,
           rope_base):
  """One token per row (`[B, 1, ...]`); rows with `real` False keep state."""
  B, _, N, H = query.shape
  L, K = state.key.shape[1], state.key.shape[2]
  state = state._replace(
      key=kv_cache.write_rows(state.key, key, state.fill),
      value=kv_cache.write_rows(state.value, value, state.fill))
  local = _local(state, query, scale, rope_base)
  recalled = infini.retrieve(
      infini._sigma(query).reshape(B, 1, K, N // K, H), state.memory)
  out = infini.mix(gate, recalled, local).astype(query.dtype)
  fill = state.fill + real_B.astype(jnp.int32)
  full_B = fill == L
  # Writing costs O(L K H^2): only when some row's segment is complete.
  memory = lax.cond(
      jnp.any(full_B),
      lambda m: infini.write(m, state.key, state.value,
                             jnp.broadcast_to(full_B[:, None], (B, L)), update),
      lambda m: m, state.memory)
  return out, State(memory, state.key, state.value,
                    jnp.where(full_B, 0, fill))


@options_lib.takes(infini.InfiniOptions)
def step(state: State, query: ArrayLike, key: ArrayLike, value: ArrayLike, *,
         num_new: ArrayLike | None = None,
         gate_logits: ArrayLike | None = None, update: str,
         scale: float | None = None, rope_base: float | None = None,
         segment_size: int, chunk_size: int) -> tuple[jax.Array, State]:
  """Causal Infini-attention of L new tokens on top of `state`.

  Args:
    state: from `init_state` or a previous `step`.
    query: `[B, L, N, H]`; key, value: `[B, L, K, H]` (content, no RoPE).
    num_new: optional int `[B]`: real tokens among the L of each row; the
      others leave the state as it was.
    gate_logits, update, scale, rope_base: as in `infini_attention`.
    segment_size: that of `init_state` (the same options go to both).
    chunk_size: tile size of the parallel form's local attention.

  Returns:
    `(out [B, L, N, H], new_state)`. Whole segments (L a multiple of the
    segment, no `num_new`) from a segment's start go through the parallel
    form (`infini.scan_segments`): that is how a model streams a long
    input. Otherwise tokens go one at a time (a `lax.scan`), as in
    generation.
  """
  N, segment = query.shape[2], state.key.shape[1]
  if segment_size != segment:
    raise ValueError(f'segment_size={segment_size} differs from the '
                     f'state\'s segment of {segment} tokens: pass the same '
                     'options to init_state and step')
  gate = infini.check_options(update, segment, gate_logits, N)
  args = arguments.parse_step('infini_attention', query, key, value,
                              scale=scale)
  token = functools.partial(_token, gate=gate, update=update,
                            scale=args.scale, rope_base=rope_base)

  def whole(state, query, key, value):
    out, memory = infini.scan_segments(
        query, key, value, state.memory, gate, segment_size=segment,
        update=update, scale=args.scale, rope_base=rope_base,
        chunk_size=chunk_size)
    return out, state._replace(memory=memory)

  return segment_steps.step(state, query, key, value, num_new=num_new,
                            segment_size=segment, token=token, whole=whole)


registry.register('infini', infini.infini_attention, init_state=init_state,
                  step=step, options=infini.InfiniOptions, exact=False,
                  refuses=arguments.LOGIT_OPTIONS)
