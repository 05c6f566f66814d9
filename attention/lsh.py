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
normalised shared key would always match itself best.

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

import math

import jax
import jax.numpy as jnp

from attention import arguments
from attention import kv_cache
from attention import masking
from attention import reference
from attention import registry

# Logit of a token's own key (shared-QK): below any real logit, far above
# NEG_INF, so it wins only when nothing else is visible.
SELF_LOGIT = -1e5
_REFUSED_WHY = 'a query sees only its hash chunks'


def draw_rotations(rng, head_dim: int, num_hashes: int, num_buckets: int):
  """Random rotations `[H, P, U / 2]` float32, one per hash round."""
  arguments.check_positive_int('num_hashes', num_hashes)
  if not isinstance(num_buckets, int) or num_buckets < 2 or num_buckets % 2:
    raise ValueError(f'num_buckets must be an even int >= 2, got '
                     f'{num_buckets!r}')
  return jax.random.normal(rng, (head_dim, num_hashes, num_buckets // 2),
                           jnp.float32)


def hash_buckets(x_BTKH, rotations_HPU):
  """Angular LSH buckets int32 `[B, K, P, T]` of `x [B, T, K, H]`."""
  x = x_BTKH.astype(jnp.float32)
  projected = jnp.einsum('BTKH,HPU->BKPTU', x, rotations_HPU)
  return jnp.argmax(jnp.concatenate([projected, -projected], axis=-1),
                    axis=-1).astype(jnp.int32)


def sort_by_bucket(buckets_BKPT, key_ok_BT, num_buckets: int):
  """Permutation `[B, K, P, T]` sorting by (bucket, position), and inverse.

  Keys nobody may see go last (an extra bucket), so padding never splits
  the chunks of real tokens.
  """
  T = buckets_BKPT.shape[-1]
  buckets = jnp.where(key_ok_BT[:, None, None, :], buckets_BKPT,
                      num_buckets)
  positions = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32),
                               buckets.shape)
  order = jnp.argsort(buckets * T + positions, axis=-1).astype(jnp.int32)
  # The inverse permutation by a scatter, not a second sort.
  inverse = jnp.put_along_axis(jnp.zeros_like(order), order, positions,
                               axis=-1, inplace=False)
  return order, inverse


def _gather(x, index, axis):
  """`take_along_axis` with `index` broadcast over x's trailing axes."""
  index = index.reshape(index.shape + (1,) * (x.ndim - index.ndim))
  return jnp.take_along_axis(x, index, axis=axis)


def _windows(x, C):
  """`[X, T, ...]` sorted -> `[X, T / C, 2C, ...]`: each chunk and the one
  before it (cyclically; just the chunk when there is only one)."""
  X, T = x.shape[:2]
  chunks = x.reshape(X, T // C, C, *x.shape[2:])
  if T // C == 1:
    return chunks
  return jnp.concatenate([chunks, jnp.roll(chunks, 1, axis=1)], axis=2)


def chunked_rounds(q_BKTGH, k_BKTH, v_BKTH, order_BKPT, inverse_BKPT, *,
                   chunk_size: int, scale: float, is_causal: bool,
                   key_ok_BT, shared_qk: bool):
  """Attention of every round; `(out [B, K, P, T, G, H], lse [B, K, P, T,
  G])` float32, back in original order. T must be a multiple of C."""
  B, K, T, G, H = q_BKTGH.shape
  P, C = order_BKPT.shape[2], chunk_size
  nC = T // C
  flat = lambda x: x.reshape(B * K * P, *x.shape[3:])
  sort = lambda x: flat(_gather(jnp.broadcast_to(
      x[:, :, None], (B, K, P) + x.shape[2:]), order_BKPT, axis=3))
  q = sort(q_BKTGH).reshape(B * K * P, nC, C, G, H)
  k, v = _windows(sort(k_BKTH), C), _windows(sort(v_BKTH), C)
  q_pos = flat(order_BKPT).reshape(-1, nC, C)
  k_pos = _windows(flat(order_BKPT), C)
  logits = jnp.einsum('BWCGH,BWSH->BWGCS', q, k,
                      preferred_element_type=jnp.float32) * scale
  # Rounds in which each (query, key) pair shares a chunk window.
  chunk_of = jnp.broadcast_to(jnp.swapaxes(inverse_BKPT // C, 2, 3)[:, :, None],
                              (B, K, P, T, P))
  chunk_of = flat(chunk_of)  # [X, T, P]: chunk of each position per round
  q_chunks = _gather(chunk_of, q_pos.reshape(-1, T), 1).reshape(-1, nC, C, P)
  k_chunks = _gather(chunk_of, k_pos.reshape(-1, k_pos.shape[1] *
                                             k_pos.shape[2]), 1).reshape(
                                                 k_pos.shape + (P,))
  qc, kc = q_chunks[:, :, :, None], k_chunks[:, :, None]
  together = (kc == qc) | ((kc == (qc - 1) % nC) if nC > 1 else True)
  count = jnp.sum(together, axis=-1)  # [X, nC, C, S], at least 1
  visible = _visible(q_pos, k_pos, key_ok_BT, B, K, P, is_causal)
  logits = logits - jnp.log(count.astype(jnp.float32))[:, :, None]
  if shared_qk:
    own = q_pos[..., :, None] == k_pos[..., None, :]
    logits = jnp.where(own[:, :, None], SELF_LOGIT, logits)
  logits = jnp.where(visible[:, :, None], logits, masking.NEG_INF)
  top = jnp.max(logits, axis=-1, keepdims=True)
  probs = jnp.exp(logits - top)
  total = jnp.sum(probs, axis=-1, keepdims=True)
  out = jnp.einsum('BWGCS,BWSH->BWCGH', probs / total, v.astype(jnp.float32))
  lse = jnp.swapaxes((top + jnp.log(total))[..., 0], 2, 3)  # [X, nC, C, G]
  unsort = lambda x: _gather(x.reshape((B, K, P, T) + x.shape[3:]),
                             inverse_BKPT, axis=3)
  return unsort(out), unsort(lse)


def _visible(q_pos, k_pos, key_ok_BT, B, K, P, is_causal):
  """bool `[X, nC, C, S]`: keys a query may see (causal by position)."""
  ok = jnp.broadcast_to(key_ok_BT[:, None, None], (B, K, P) +
                        key_ok_BT.shape[1:]).reshape(-1, key_ok_BT.shape[1])
  visible = _gather(ok, k_pos.reshape(k_pos.shape[0], -1), 1).reshape(
      k_pos.shape)[:, :, None, :]
  if is_causal:
    visible = visible & (k_pos[:, :, None, :] <= q_pos[..., None])
  return jnp.broadcast_to(visible, q_pos.shape + k_pos.shape[-1:])


def combine_rounds(out_BKPTGH, lse_BKPTG):
  """Softmax over the union of rounds: `[B, K, T, G, H]` float32 and a
  bool `[B, K, T, G]` of rows that saw some key."""
  # Softmax over rounds, relative to the largest lse: the lse of a row that
  # sees only itself is about -1e5, where float32 steps are 0.008.
  weights = jax.nn.softmax(lse_BKPTG, axis=2)
  out = jnp.sum(weights[..., None] * out_BKPTGH, axis=2)
  return out, jnp.max(lse_BKPTG, axis=2) > masking.MASKED_BELOW


def lsh_attention(query, key, value, bias=None, mask=None, *, scale=None,
                  is_causal=False, query_seq_lengths=None,
                  key_value_seq_lengths=None, local_window_size=None,
                  rng=None, rotations=None, num_hashes=4, num_buckets=None,
                  bucket_size=64, chunk_size=64, shared_qk=True,
                  dropout_rng=None, dropout_rate=0.0, broadcast_dropout=True,
                  deterministic=True, dtype=None, precision=None, module=None,
                  alibi_slopes=None, logits_soft_cap=None):
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
    shared_qk: only True is implemented so far (raises otherwise).
    dropout_rng, dropout_rate, broadcast_dropout, deterministic, dtype,
    precision, module: Flax's `attention_fn` keywords; `dtype` casts the
      inputs, dropout and sowing weights raise ValueError.

  Decoding (`step`) falls back to exact shared-QK attention over a KV cache
  of normalised keys (with the self-logit): it equals this function when
  the chunks cover the whole sequence, and is exact attention otherwise.

  Returns:
    `[B, T, N, H]` in the query's dtype.

  Cost: O(B N P T (C + log T) H) time, O(B N P T C) memory, forward and
  backward.
  """
  del dropout_rng, broadcast_dropout, precision
  arguments.refuse('lsh_attention', _REFUSED_WHY,
                   bias=bias, mask=mask, local_window_size=local_window_size,
                   alibi_slopes=alibi_slopes, logits_soft_cap=logits_soft_cap)
  if not shared_qk:
    raise ValueError('lsh_attention: shared_qk=False is not implemented yet')
  arguments.check_positive_int('chunk_size', chunk_size)
  args = arguments.parse(
      'lsh_attention', query, key, value, scale=scale, local_window_size=None,
      query_seq_lengths=query_seq_lengths,
      key_value_seq_lengths=key_value_seq_lengths, dtype=dtype,
      dropout_rate=dropout_rate, deterministic=deterministic, module=module)
  d = args.dims
  if d.S != d.T:
    raise ValueError(f'lsh_attention is self-attention: key length S={d.S} '
                     f'must equal query length T={d.T}')
  if num_buckets is None:
    num_buckets = max(2, 2 * math.ceil(d.T / bucket_size / 2))
  if rotations is None:
    rotations = draw_rotations(jax.random.key(0) if rng is None else rng,
                               d.H, num_hashes, num_buckets)
  rotations = jnp.asarray(rotations, jnp.float32)
  P, U = rotations.shape[1], 2 * rotations.shape[2]
  C = min(chunk_size, d.T)
  Tp = d.T + (-d.T % C)
  pad = lambda x: jnp.pad(x, [(0, 0), (0, Tp - d.T)] + [(0, 0)] * 2)
  key_n = _normalised(args.key.astype(jnp.float32))
  key_ok = jnp.broadcast_to(jnp.arange(Tp) < d.T, (d.B, Tp))
  if args.kv_len is not None:
    key_ok &= jnp.arange(Tp)[None, :] < args.kv_len[:, None]
  key_n, value = pad(key_n), pad(args.value)
  if Tp == C:  # One chunk sees everything: no need to sort (nor to reorder
    # the sums, so outputs cannot depend on later tokens' buckets).
    order = inverse = jnp.broadcast_to(jnp.arange(Tp, dtype=jnp.int32),
                                       (d.B, d.K, P, Tp))
  else:
    order, inverse = sort_by_bucket(hash_buckets(key_n, rotations), key_ok,
                                    U)
  q = pad(args.query).reshape(d.B, Tp, d.K, d.G, d.H).transpose(0, 2, 1, 3, 4)
  out, lse = chunked_rounds(
      q, key_n.swapaxes(1, 2), value.swapaxes(1, 2), order, inverse,
      chunk_size=C, scale=args.scale, is_causal=is_causal, key_ok_BT=key_ok,
      shared_qk=True)
  out, seen = combine_rounds(out, lse)
  out = jnp.where(seen[..., None], out, 0.0)[:, :, :d.T]
  if args.q_len is not None:
    out = jnp.where((jnp.arange(d.T)[None, :] < args.q_len[:, None])[
        :, None, :, None, None], out, 0.0)
  out = out.transpose(0, 2, 1, 3, 4).reshape(d.B, d.T, d.N, d.H)
  return out.astype(args.query.dtype)


def _normalised(key):
  k = key.astype(jnp.float32)
  k = k / jnp.maximum(jnp.linalg.norm(k, axis=-1, keepdims=True), 1e-6)
  return k.astype(key.dtype)


def init_state(batch_size: int, num_kv_heads: int, head_dim: int, *,
               max_length: int, dtype=jnp.float32, **unused_options):
  """A KV cache (`attention.kv_cache`): decoding falls back to exact
  shared-QK attention over it, O(max_length) memory per row."""
  del unused_options
  return kv_cache.init_state(batch_size, num_kv_heads, head_dim,
                             max_length=max_length, dtype=dtype)


def step(state, query, key, value, *, num_new=None, scale=None,
         local_window_size=None, alibi_slopes=None, logits_soft_cap=None,
         **unused_options):
  """Causal decoding step: exact shared-QK attention over the cache.

  Keys are normalised before they are cached and each query's own key gets
  `SELF_LOGIT`, as in `lsh_attention`; hashing options are ignored.
  """
  del unused_options
  arguments.refuse('lsh_attention', _REFUSED_WHY,
                   local_window_size=local_window_size,
                   alibi_slopes=alibi_slopes, logits_soft_cap=logits_soft_cap)
  return kv_cache.step(state, query, _normalised(key), value,
                       attend=reference.dot_product_attention,
                       num_new=num_new, self_logit=SELF_LOGIT, scale=scale)


registry.register('lsh', lsh_attention, init_state=init_state, step=step,
                  exact=False, refuses=arguments.LOGIT_OPTIONS)
