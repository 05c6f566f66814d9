"""Transformer-XL segment recurrence: attention over a cache of past tokens.

Dai et al. 2019, "Transformer-XL: Attentive Language Models Beyond a
Fixed-Length Context" (arXiv 1901.02860). The input is cut into segments of
L tokens. Each segment attends causally to itself and to the keys and
values of the M tokens before it, cached from the previous segments with
their gradient stopped:

  token t of segment s sees keys  max(0, sL - M) <= j <= t

So within a layer the context reaches back between M and M + L tokens, and
through depth it grows by that much per layer (the cache holds each layer's
own keys and values, computed from the layer below when their segment was
processed). RoPE (the relative positions of this codebase, in place of the
paper's relative encoding) rotates the cached and new tokens at positions
counted from the cache's start, so every pair keeps its true distance
without float32 angles of a millionth token.

`xl_attention` runs a whole sequence from an empty cache in a `lax.scan`
over segments (constant memory in the forward pass); decoding
(`init_state`/`step`) carries `[M + L]` keys and values per row and gives
the same outputs token by token.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from efficient_attention.attention import arguments
from efficient_attention.attention import masks
from efficient_attention.attention import scores
from efficient_attention.attention.types import (Any, ArrayLike, DTypeLike, Output,
                                               PrecisionLike)
from efficient_attention.attention import options as options_lib
from efficient_attention.attention.exact import blockwise
from efficient_attention.attention.decoding import kv_cache
from efficient_attention.attention import positional
from efficient_attention.attention.exact import reference
from efficient_attention.attention import registry
from efficient_attention.attention.decoding import segment_steps

_REFUSED_WHY = 'segments attend causally to themselves and their cache'


@dataclasses.dataclass(frozen=True)
class XLOptions(options_lib.Options):
  """Options of `xl_attention`."""

  segment_size: int = 512  # L, tokens per segment
  memory_length: int = 512  # M >= 0, cached past tokens per layer
  stop_gradient: bool = True  # no gradient into the memory (the paper's)
  chunk_size: int = 512  # tile size of a segment's blockwise attention

  def __post_init__(self):
    where = 'XLOptions'
    options_lib.check_positive_int(where, 'segment_size', self.segment_size)
    options_lib.check_positive_int(where, 'memory_length', self.memory_length,
                                   allow_zero=True)
    options_lib.check_bool(where, 'stop_gradient', self.stop_gradient)
    options_lib.check_positive_int(where, 'chunk_size', self.chunk_size)


def _segment(query, window_k, window_v, key_ok, *, M, scale, rope_base,
             chunk_size):
  """`query [B, L, ...]` over `window [B, M + L, ...]` (M cached first)."""
  L, W = query.shape[1], window_k.shape[1]
  if rope_base is not None:
    query = positional.rope(query, M + jnp.arange(L), base=rope_base)
    window_k = positional.rope(window_k, jnp.arange(W), base=rope_base)
  # Query i sits at window slot M + i: it sees slots j <= i + M.
  return blockwise.blockwise_attention(
      query, window_k, window_v, mask=key_ok[:, None, None, :], scale=scale,
      local_window_size=(W, M), query_chunk_size=min(chunk_size, L),
      key_chunk_size=min(chunk_size, W))


def _scan(query, key, value, cache_k, cache_v, cached, lengths, *, L,
          scale, rope_base, stop_gradient, chunk_size):
  """Segments of L from a cache `[B, M, K, H]` whose last `cached` hold the
  tokens before these: `(out [B, T, N, H], cache_k, cache_v)` after them."""
  B, T, M = query.shape[0], query.shape[1], cache_k.shape[1]
  num_segments = -(-T // L)
  end_pad = num_segments * L - T
  if end_pad:
    query, key, value = (jnp.pad(x, [(0, 0), (0, end_pad), (0, 0), (0, 0)])
                         for x in (query, key, value))

  @jax.checkpoint
  def body(carry, _):
    cache_k, cache_v, out, start = carry  # cache: the M tokens before start
    take = lambda x: lax.dynamic_slice_in_dim(x, start, L, axis=1)
    # Window slot j holds token start - M + j: the cache, then the segment.
    k, v = (jnp.concatenate([lax.stop_gradient(c) if stop_gradient else c,
                             take(x)], axis=1)
            for c, x in ((cache_k, key), (cache_v, value)))
    token = start - M + jnp.arange(M + L)
    key_ok = ((token[None, :] >= -cached[:, None]) &
              (token[None, :] < lengths[:, None]))
    segment = _segment(take(query), k, v, key_ok, M=M, scale=scale,
                       rope_base=rope_base, chunk_size=chunk_size)
    out = lax.dynamic_update_slice_in_dim(out, segment, start, axis=1)
    return (k[:, L:], v[:, L:], out, start + L), None

  # Cache, output and the segment's start ride in the carry (the output is
  # updated in place): no temporary grows with T unless T needs padding.
  (cache_k, cache_v, out, _), _ = lax.scan(
      body, (cache_k, cache_v, jnp.zeros_like(query), jnp.int32(0)), None,
      length=num_segments)
  return out[:, :T], cache_k, cache_v


@arguments.any_batch_rank
@options_lib.takes(XLOptions)
def xl_attention(query: ArrayLike, key: ArrayLike, value: ArrayLike,
                 bias: ArrayLike | None = None,
                 mask: ArrayLike | masks.Mask | None = None, *,
                 scale: float | None = None, is_causal: bool = True,
                 query_seq_lengths: ArrayLike | None = None,
                 key_value_seq_lengths: ArrayLike | None = None,
                 local_window_size: int | tuple[int, int] | None = None,
                 segment_size: int, memory_length: int,
                 rope_base: float | None = None, stop_gradient: bool,
                 chunk_size: int, dropout_rng: jax.Array | None = None,
                 dropout_rate: float = 0.0, broadcast_dropout: bool = True,
                 deterministic: bool = True, dtype: DTypeLike | None = None,
                 precision: PrecisionLike = None, module: Any = None,
                 alibi_slopes: ArrayLike | None = None,
                 logits_soft_cap: float | None = None,
                 score: scores.Score | None = None,
                 return_residual: bool = False) -> Output:
  """Transformer-XL attention (Dai et al. 2019, arXiv 1901.02860) over a
  whole sequence, segment by segment, from an empty cache.

  Args:
    query: `[B, T, N, H]` (content: RoPE, if any, through `rope_base`).
    key, value: `[B, T, K, H]` (self-attention, S = T), K dividing N.
    is_causal: must be True.
    segment_size: L, tokens per segment (T need not be a multiple).
    memory_length: M >= 0, cached tokens each segment also sees.
    rope_base: RoPE base, applied here at positions within the window.
    stop_gradient: no gradient reaches a segment from later ones (the
      paper's training; False lets it through the cache).
    chunk_size: tile size of the blockwise attention of a segment.
    query_seq_lengths, key_value_seq_lengths: optional int `[B]`.
    bias, mask, local_window_size, alibi_slopes, logits_soft_cap: refused
      (ValueError); the other keywords are Flax's `attention_fn` ones.

  Returns:
    `[B, T, N, H]` in the query's dtype. O(T (L + M) H) time per head;
    forward temporary memory O((L + M) (C + H)), independent of T when L
    divides T (otherwise one padded copy of the inputs).
  """
  del dropout_rng, broadcast_dropout, precision
  arguments.refuse('xl_attention', _REFUSED_WHY, bias=bias, mask=mask,
                   local_window_size=local_window_size,
                   alibi_slopes=alibi_slopes, logits_soft_cap=logits_soft_cap,
                   score=score)
  if not is_causal:
    raise ValueError('xl_attention is causal: is_causal must be True')
  args = arguments.parse_self(
      'xl_attention', query, key, value, scale=scale,
      query_seq_lengths=query_seq_lengths,
      key_value_seq_lengths=key_value_seq_lengths, dtype=dtype,
      dropout_rate=dropout_rate, deterministic=deterministic, module=module,
      return_residual=return_residual)
  if args.dims.T == 0 or args.dims.S == 0:  # as jax.nn: no division
    return arguments.empty_output(args)
  d, M = args.dims, memory_length
  lengths = jnp.full((d.B,), d.T, jnp.int32)
  if args.kv_len is not None:
    lengths = jnp.minimum(lengths, args.kv_len)
  cache = jnp.zeros((d.B, M, d.K, d.H), args.key.dtype)
  out, _, _ = _scan(args.query, args.key, args.value, cache, cache,
                    jnp.zeros((d.B,), jnp.int32), lengths,
                    L=min(segment_size, d.T), scale=args.scale,
                    rope_base=rope_base, stop_gradient=stop_gradient,
                    chunk_size=chunk_size)
  if args.q_len is not None:
    out = jnp.where((jnp.arange(d.T)[None, :] < args.q_len[:, None])[
        :, :, None, None], out, 0)
  return out


class State(NamedTuple):
  """Decoding state: M cached then L segment slots per row (a pytree)."""

  key: jax.Array  # [B, M + L, K, H], content (RoPE applied on reading)
  value: jax.Array  # [B, M + L, K, H]
  cached: jax.Array  # int32 [B]: valid cache slots, the last `cached` of M
  fill: jax.Array  # int32 [B]: tokens of the unfinished segment


@options_lib.takes(XLOptions)
def init_state(batch_size: int, num_kv_heads: int, head_dim: int, *,
               segment_size: int, memory_length: int,
               max_length: int | None = None, dtype: DTypeLike = jnp.float32) -> State:
  """An empty state of `memory_length + segment_size` slots.

  `max_length` (the decoding contract's) does not shape it.
  """
  del max_length
  for name, value in [('batch_size', batch_size),
                      ('num_kv_heads', num_kv_heads), ('head_dim', head_dim)]:
    arguments.check_positive_int(name, value)
  shape = (batch_size, memory_length + segment_size, num_kv_heads, head_dim)
  zeros_B = jnp.zeros((batch_size,), jnp.int32)
  return State(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), zeros_B,
               zeros_B)


def _token(state: State, query, key, value, real_B, *, M, scale, rope_base):
  """One token per row (`[B, 1, ...]`); rows with `real` False keep state."""
  W = state.key.shape[1]
  L = W - M
  k_all = kv_cache.write_rows(state.key, key, M + state.fill)
  v_all = kv_cache.write_rows(state.value, value, M + state.fill)
  slots = jnp.arange(W)
  q, k = query, k_all
  if rope_base is not None:
    q = positional.rope(query, (M + state.fill)[:, None], base=rope_base)
    k = positional.rope(k_all, slots, base=rope_base)
  seen_BW = ((slots[None, :] >= M - state.cached[:, None]) &
             (slots[None, :] <= M + state.fill[:, None]))
  out = reference.dot_product_attention(q, k, v_all,
                                        mask=seen_BW[:, None, None, :],
                                        scale=scale)
  fill = state.fill + real_B.astype(jnp.int32)
  full = fill == L
  # A full segment: the last M of cache + segment become the cache.
  shift = lambda x: jnp.where(full[:, None, None, None],
                              jnp.roll(x, -L, axis=1), x)
  return out, State(shift(k_all), shift(v_all),
                    jnp.where(full, jnp.minimum(state.cached + L, M),
                              state.cached), jnp.where(full, 0, fill))


def _whole_segments(state: State, query, key, value, *, M, scale, rope_base,
                    stop_gradient, chunk_size):
  """All rows at a segment's start, whole segments: the parallel form."""
  B, T = query.shape[:2]
  cache_k, cache_v = state.key[:, :M], state.value[:, :M]
  out, cache_k, cache_v = _scan(
      query, key, value, cache_k, cache_v, state.cached,
      jnp.full((B,), T, jnp.int32), L=state.key.shape[1] - M, scale=scale,
      rope_base=rope_base, stop_gradient=stop_gradient, chunk_size=chunk_size)
  return out, State(jnp.concatenate([cache_k, state.key[:, M:]], 1),
                    jnp.concatenate([cache_v, state.value[:, M:]], 1),
                    jnp.minimum(state.cached + T, M), state.fill)


@options_lib.takes(XLOptions)
def step(state: State, query: ArrayLike, key: ArrayLike, value: ArrayLike, *,
         num_new: ArrayLike | None = None, scale: float | None = None,
         rope_base: float | None = None, segment_size: int, memory_length: int,
         stop_gradient: bool, chunk_size: int) -> tuple[jax.Array, State]:
  """Causal Transformer-XL attention of L new tokens on top of `state`.

  Args:
    state: from `init_state` or a previous `step`.
    query: `[B, L, N, H]`; key, value: `[B, L, K, H]` (content, no RoPE).
    num_new: optional int `[B]`: real tokens among the L of each row.
    scale, rope_base: as in `xl_attention`.
    segment_size, memory_length: those of `init_state` (same defaults).
    stop_gradient, chunk_size: as in `xl_attention`.

  Returns:
    `(out [B, L, N, H], new_state)`; O(L (M + segment_size) H) per head.
    Whole segments (L a multiple of segment_size, no `num_new`) from a
    segment's start go through the parallel form, one segment at a time:
    that is how a model streams a long input. Otherwise tokens go one at a
    time (a `lax.scan`), as in generation.
  """
  W, M = state.key.shape[1], memory_length
  if M + segment_size != W:
    raise ValueError(f'segment_size={segment_size} and memory_length={M} '
                     f'do not match the state\'s {W} slots')
  args = arguments.parse_step('xl_attention', query, key, value, scale=scale)
  token = functools.partial(_token, M=M, scale=args.scale,
                            rope_base=rope_base)
  whole = functools.partial(_whole_segments, M=M, scale=args.scale,
                            rope_base=rope_base, stop_gradient=stop_gradient,
                            chunk_size=chunk_size)
  return segment_steps.step(state, query, key, value, num_new=num_new,
                            segment_size=segment_size, token=token,
                            whole=whole)


registry.register('xl', xl_attention, init_state=init_state, step=step,
                  options=XLOptions, exact=False,
                  refuses=arguments.LOGIT_OPTIONS)
