"""Reformer LSH attention: sort by hash bucket, attend within chunks.

Kitaev et al. 2020, "Reformer: The Efficient Transformer" (arXiv
2001.04451). Keys are hashed by angular LSH (Andoni et al. 2015): with a
random rotation R `[H, U/2]` per round, bucket(x) = argmax([x R; -x R]).
In each of P rounds the positions are sorted by (bucket, position), cut
into chunks of C, and each chunk's queries attend to the keys of their own
chunk and of the previous one (O(N C) per round, O(N log N) for the sort).

Shared-QK (the Reformer's default): a position's query and key share one
bucket, that of its key; keys are L2-normalised, and a token's attention to
itself is masked (logit -1e5) unless nothing else is visible, since a
normalised shared key would always match itself best. Without it
(`shared_qk=False`), queries and keys are hashed and sorted apart, and the
i-th chunk of sorted queries attends to the i-th and (i-1)-th chunks of
sorted keys: with T = S they cover about the same buckets, but a query whose
windows hold no visible key in any round gets a zero output.

Rounds are combined by their log-sum-exp: out = sum_p e^(lse_p - lse) out_p.
A key found by the same query in several rounds would then count several
times; each logit is lowered by log(number of rounds in which the pair
shares a chunk window), so the result is exactly softmax attention over the
union of the keys found in any round. The sort is undone with the inverse
permutation.

Causal masking compares original positions. With chunks that cover the
whole sequence the output is exact shared-QK attention and perturbing
future tokens never moves earlier outputs. With smaller chunks, future
values still never reach earlier outputs, but future queries and keys can:
they change the buckets and so which past keys share an earlier query's
chunk (through bucket and chunk boundaries only).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from efficient_attention.attention import arguments
from efficient_attention.attention import masks
from efficient_attention.attention import scores
from efficient_attention.attention.types import (Any, ArrayLike, DTypeLike, Output,
                                               PrecisionLike)
from efficient_attention.attention import options as options_lib
from efficient_attention.attention.exact import blockwise
from efficient_attention.attention.decoding import kv_cache
from efficient_attention.attention.hashing import rounds
from efficient_attention.attention import registry

SELF_LOGIT = rounds.SELF_LOGIT
_REFUSED_WHY = 'a query sees only its hash chunks'


@dataclasses.dataclass(frozen=True)
class LSHOptions(options_lib.Options):
  """Options of `lsh_attention` (the hashing key is an argument)."""

  num_hashes: int = 4  # P, hash rounds
  num_buckets: int | None = None  # U (even); None: about T / bucket_size
  bucket_size: int = 64  # average bucket size when num_buckets is None
  chunk_size: int = 64  # C; T is padded to a multiple of it inside
  shared_qk: bool = True  # hash normalised keys, queries take their bucket

  def __post_init__(self):
    where = 'LSHOptions'
    for name in ('num_hashes', 'bucket_size', 'chunk_size'):
      options_lib.check_positive_int(where, name, getattr(self, name))
    if self.num_buckets is not None and (
        isinstance(self.num_buckets, bool) or
        not isinstance(self.num_buckets, int) or self.num_buckets < 2 or
        self.num_buckets % 2):
      raise ValueError(f'{where}: num_buckets must be an even int >= 2 or '
                       f'None, got {self.num_buckets!r}')
    options_lib.check_bool(where, 'shared_qk', self.shared_qk)


def draw_rotations(rng, head_dim: int, num_hashes: int, num_buckets: int):
  """Random rotations `[H, P, U / 2]` float32, one per hash round."""
  arguments.check_positive_int('num_hashes', num_hashes)
  if not isinstance(num_buckets, int) or num_buckets < 2 or num_buckets % 2:
    raise ValueError(f'num_buckets must be an even int >= 2, got '
                     f'{num_buckets!r}')
  return jax.random.normal(rng, (head_dim, num_hashes, num_buckets // 2),
                           jnp.float32)


@arguments.any_batch_rank
@options_lib.takes(LSHOptions)
def lsh_attention(query: ArrayLike, key: ArrayLike, value: ArrayLike,
                  bias: ArrayLike | None = None,
                  mask: ArrayLike | masks.Mask | None = None, *,
                  scale: float | None = None, is_causal: bool = False,
                  query_seq_lengths: ArrayLike | None = None,
                  key_value_seq_lengths: ArrayLike | None = None,
                  local_window_size: int | tuple[int, int] | None = None,
                  rng: jax.Array | None = None,
                  rotations: jax.Array | None = None, num_hashes: int,
                  num_buckets: int | None, bucket_size: int, chunk_size: int,
                  shared_qk: bool, dropout_rng: jax.Array | None = None,
                  dropout_rate: float = 0.0, broadcast_dropout: bool = True,
                  deterministic: bool = True, dtype: DTypeLike | None = None,
                  precision: PrecisionLike = None, module: Any = None,
                  alibi_slopes: ArrayLike | None = None,
                  logits_soft_cap: float | None = None,
                  score: scores.Score | None = None,
                  return_residual: bool = False) -> Output:
  """Reformer LSH attention (Kitaev et al. 2020, arXiv 2001.04451).

  Args:
    query: `[B, T, N, H]`.
    key: `[B, T, K, H]` (self-attention: S = T), K dividing N; with
      `shared_qk` the keys are normalised and hashed, and each query uses
      its own position's bucket (pass `key=query` for the Reformer's tied
      projections, K = N).
    value: `[B, T, K, H]`.
    bias, mask, local_window_size, alibi_slopes, logits_soft_cap: not
      supported; a value raises ValueError.
    scale: logit scale; default `1 / sqrt(H)`.
    is_causal: compare original positions (see the module docstring for
      what may still reach earlier outputs through the buckets).
    query_seq_lengths, key_value_seq_lengths: optional int `[B]`.
    rng: PRNG key to draw the rotations from (a new key gives new buckets);
      or `rotations`: an explicit `[H, P, U / 2]` array. Neither: key(0).
    num_hashes: rounds P.
    num_buckets: U (even); default about T / bucket_size.
    bucket_size: average bucket size, used when num_buckets is None.
    chunk_size: C; T is padded to a multiple of it inside.
    shared_qk: hash the normalised keys and give each query its own
      position's bucket, with the self-logit (True, the Reformer's); or hash
      queries and keys apart, keys as given (False).
    dropout_rng, dropout_rate, broadcast_dropout, deterministic: Flax's
      `attention_fn` dropout keywords; attention dropout raises ValueError.
    dtype, precision, module: Flax's other `attention_fn` keywords; `dtype`
      casts the inputs, sowing weights into `module` raises ValueError.

  Decoding (`step`) falls back to exact attention over a KV cache (of
  normalised keys with the self-logit for shared-QK): it equals this
  function when the chunks cover the whole sequence, and is exact attention
  otherwise.

  Returns:
    `[B, T, N, H]` in the query's dtype.

  Cost: O(B N P T (C H + log T + U H)) time (the last term hashes; U
  grows with T unless `num_buckets` is fixed); memory O(B N T (C + P H)) in
  the forward and backward passes (one round's `[C, 2C]` logits at a time).
  """
  del dropout_rng, broadcast_dropout, precision
  arguments.refuse('lsh_attention', _REFUSED_WHY,
                   bias=bias, mask=mask, local_window_size=local_window_size,
                   alibi_slopes=alibi_slopes, logits_soft_cap=logits_soft_cap,
                   score=score)
  args = arguments.parse_self(
      'lsh_attention', query, key, value, scale=scale,
      query_seq_lengths=query_seq_lengths,
      key_value_seq_lengths=key_value_seq_lengths, dtype=dtype,
      dropout_rate=dropout_rate, deterministic=deterministic, module=module,
      return_residual=return_residual)
  if args.dims.T == 0 or args.dims.S == 0:  # as jax.nn: no division
    return arguments.empty_output(args)
  d = args.dims
  rotations = _rotations(rng, rotations, d, num_hashes, num_buckets,
                         bucket_size)
  C = min(chunk_size, d.T)
  Tp = d.T + (-d.T % C)
  pad = lambda x: jnp.pad(x, [(0, 0), (0, Tp - d.T)] + [(0, 0)] * 2)
  key_ok = jnp.broadcast_to(jnp.arange(Tp) < d.T, (d.B, Tp))
  if args.kv_len is not None:
    key_ok &= jnp.arange(Tp)[None, :] < args.kv_len[:, None]
  key = _normalised(args.key.astype(jnp.float32)) if shared_qk else args.key
  query, key, value = pad(args.query), pad(key), pad(args.value)
  orders = _sort_orders(query, key, rotations, key_ok, d, Tp == C, shared_qk)
  out, seen = rounds.attend_rounds(
      query.reshape(d.B, Tp, d.K, d.G, d.H).transpose(0, 2, 3, 1, 4),
      key.swapaxes(1, 2), value.swapaxes(1, 2), *orders, chunk_size=C,
      scale=args.scale, is_causal=is_causal, key_ok_BT=key_ok,
      shared_qk=shared_qk)
  out = jnp.where(seen[..., None], out, 0.0)[:, :, :, :d.T]
  if args.q_len is not None:
    out = jnp.where((jnp.arange(d.T)[None, :] < args.q_len[:, None])[
        :, None, None, :, None], out, 0.0)
  out = out.transpose(0, 3, 1, 2, 4).reshape(d.B, d.T, d.N, d.H)
  return out.astype(args.query.dtype)


def _rotations(rng, rotations, d, num_hashes, num_buckets, bucket_size):
  """The `[H, P, U / 2]` rotations: as given, or drawn from `rng`."""
  if rotations is None:
    if num_buckets is None:
      arguments.check_positive_int('bucket_size', bucket_size)
      num_buckets = max(2, 2 * math.ceil(d.T / bucket_size / 2))
    rotations = draw_rotations(jax.random.key(0) if rng is None else rng,
                               d.H, num_hashes, num_buckets)
  rotations = jnp.asarray(rotations, jnp.float32)
  if rotations.ndim != 3 or rotations.shape[0] != d.H:
    raise ValueError(f'rotations must be [H, P, U / 2] with H={d.H}, got '
                     f'shape {rotations.shape}')
  return rotations


def _sort_orders(query, key, rotations, key_ok, d, one_chunk, shared_qk):
  """`(q_order, q_inverse, k_order, k_inverse)` of every round."""
  Tp = key.shape[1]
  if one_chunk:  # One chunk sees everything: one round, in position order
    # (so outputs cannot depend on later tokens' buckets).
    identity = jnp.broadcast_to(jnp.arange(Tp, dtype=jnp.int32),
                                (1, d.B, d.K, 1, Tp))
    return identity, identity, identity[:, :, :, 0], identity[:, :, :, 0]
  k_order, k_inverse = rounds.sort_rounds(key, rotations, key_ok)
  if shared_qk:  # Queries take their own position's key bucket.
    return k_order[:, :, :, None], k_inverse[:, :, :, None], k_order, k_inverse
  q_ok = jnp.broadcast_to(jnp.arange(Tp) < d.T, (d.B, Tp))
  q_order, q_inverse = rounds.sort_rounds(
      query.reshape(d.B, Tp, d.N, d.H), rotations, q_ok)
  split = lambda x: x.reshape(x.shape[:2] + (d.K, d.G, Tp))
  return split(q_order), split(q_inverse), k_order, k_inverse


def _normalised(key):
  k = key.astype(jnp.float32)
  k = k / jnp.maximum(jnp.linalg.norm(k, axis=-1, keepdims=True), 1e-6)
  return k.astype(key.dtype)


@options_lib.takes(LSHOptions)
def init_state(batch_size: int, num_kv_heads: int, head_dim: int, *,
               max_length: int, dtype: DTypeLike = jnp.float32) -> kv_cache.KVCache:
  """A KV cache (`attention.decoding.kv_cache`): decoding falls back to exact
  attention over it, O(max_length) memory per row."""
  return kv_cache.init_state(batch_size, num_kv_heads, head_dim,
                             max_length=max_length, dtype=dtype)


@options_lib.takes(LSHOptions)
def step(state: kv_cache.KVCache, query: ArrayLike, key: ArrayLike,
         value: ArrayLike, *, num_new: ArrayLike | None = None,
         scale: float | None = None, shared_qk: bool,
         rng: jax.Array | None = None, rotations: jax.Array | None = None,
         local_window_size: int | tuple[int, int] | None = None,
         alibi_slopes: ArrayLike | None = None,
         logits_soft_cap: float | None = None,
         score: scores.Score | None = None) -> tuple[jax.Array, kv_cache.KVCache]:
  """Causal decoding step: exact attention over the cache (blockwise: a
  step at position p costs O(p)).

  With `shared_qk`, keys are normalised before they are cached and each
  query's own key gets `SELF_LOGIT`, as in `lsh_attention`; hashing
  options, `rng` and `rotations` are ignored.
  """
  del rng, rotations
  arguments.refuse('lsh_attention', _REFUSED_WHY,
                   local_window_size=local_window_size,
                   alibi_slopes=alibi_slopes, logits_soft_cap=logits_soft_cap,
                   score=score)
  if not shared_qk:
    return kv_cache.step(state, query, key, value,
                         attend=blockwise.blockwise_attention,
                         num_new=num_new, scale=scale)
  return kv_cache.step(state, query, _normalised(key), value,
                       attend=blockwise.blockwise_attention,
                       num_new=num_new, self_logit=SELF_LOGIT, scale=scale)


def draw_key(rng):
  """A new hashing key (raw uint32 `[2]`, so it checkpoints as an array)."""
  rng = jax.random.fold_in(rng, 0)
  if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
    rng = jax.random.key_data(rng)
  return rng


registry.register('lsh', lsh_attention, init_state=init_state, step=step,
                  options=LSHOptions, exact=False,
                  refuses=arguments.LOGIT_OPTIONS)
