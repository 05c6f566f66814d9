"""The hash rounds of Reformer LSH attention: hash, sort, attend by chunks.

Kitaev et al. 2020, "Reformer: The Efficient Transformer" (arXiv
2001.04451); `attention.hashing.lsh` holds the public function and the maths.

Layout: queries `[B, K, G, T, H]` (G query heads per key head), keys and
values `[B, K, T, H]`. Sort orders are int32 `[P, B, K, T]` for keys and
`[P, B, K, J, T]` for queries, where J = 1 when queries take the bucket of
their own position's key (shared-QK) and J = G when they are hashed apart.
T is a multiple of the chunk length C here; W = T / C chunks per round.

Memory: the hashing pass keeps only int32 orders; the rounds run in a
`lax.scan` whose body is rematerialised, so the backward pass holds one
round's `[C, 2C]` logits at a time and, per round, the running output
`[B, K, G, T, H]` (O(P N H), linear in N).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from efficient_attention.attention import masking

# Logit of a token's own key (shared-QK): below any real logit, far above
# NEG_INF, so it wins only when nothing else is visible.
SELF_LOGIT = -1e5


def hash_buckets(x_BTMH, rotations_HPU):
  """Angular LSH buckets int32 `[B, M, P, T]` of `x [B, T, M, H]`:
  argmax over `[x R; -x R]` for each round's rotation R `[H, U / 2]`.

  Computed as the argmax u of |x R| plus U / 2 where (x R)_u < 0, without
  the concatenation (ties aside, the same bucket).
  """
  x = x_BTMH.astype(jnp.float32)
  projected = jnp.einsum('BTMH,HPU->BTMPU', x, rotations_HPU)
  best = jnp.argmax(jnp.abs(projected), axis=-1)
  negative = jnp.take_along_axis(projected, best[..., None], axis=-1,
                                 mode='promise_in_bounds')[..., 0] < 0
  buckets = (best + negative * projected.shape[-1]).astype(jnp.int32)
  return jnp.transpose(buckets, (0, 2, 3, 1))


def sort_by_bucket(buckets_BXT, ok_BT, num_buckets: int):
  """Permutation sorting each row of `buckets [B, ..., T]` by (bucket,
  position), and its inverse (same shape, int32).

  Positions that are not `ok` go last (an extra bucket), so padding never
  splits the chunks of real tokens.
  """
  T = buckets_BXT.shape[-1]
  ok = ok_BT.reshape(ok_BT.shape[:1] + (1,) * (buckets_BXT.ndim - 2) + (T,))
  buckets = jnp.where(ok, buckets_BXT, num_buckets)
  positions = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), buckets.shape)
  order = jnp.argsort(buckets * T + positions, axis=-1).astype(jnp.int32)
  # The inverse permutation by a scatter, not a second sort.
  inverse = jnp.put_along_axis(jnp.zeros_like(order), order, positions,
                               axis=-1, inplace=False)
  return order, inverse


def sort_rounds(x_BTMH, rotations_HPU, ok_BT):
  """`(order, inverse)` int32 `[P, B, M, T]`, one round at a time (the
  `[B, M, T, U]` projections of one round are the largest temporary)."""
  x = jax.lax.stop_gradient(x_BTMH)
  num_buckets = 2 * rotations_HPU.shape[-1]

  def one_round(rotation_HU):
    buckets = hash_buckets(x, rotation_HU[:, None])[:, :, 0]
    return sort_by_bucket(buckets, ok_BT, num_buckets)

  return jax.lax.map(one_round, jnp.moveaxis(rotations_HPU, 1, 0))


def _gather(x, index, axis):
  """Rows of `x` along `axis` at `index` (x's shape up to and including
  `axis`, broadcasting), whole trailing rows at a time."""
  index = index.reshape(index.shape + (1,) * (x.ndim - index.ndim))
  lead = [max(a, b) for a, b in zip(x.shape[:axis], index.shape[:axis])]
  x = jnp.broadcast_to(x, tuple(lead) + x.shape[axis:])
  index = jnp.broadcast_to(index, tuple(lead) + index.shape[axis:])
  return jnp.take_along_axis(x, index, axis=axis, mode='promise_in_bounds')


def _windows(x, C):
  """`[B, K, T, ...]` -> `[B, K, W, 2C, ...]`: each chunk and the one before
  it (cyclically; just the chunk itself when there is only one)."""
  B, K, T = x.shape[:3]
  chunks = x.reshape(B, K, T // C, C, *x.shape[3:])
  if T // C == 1:
    return chunks
  return jnp.concatenate([chunks, jnp.roll(chunks, 1, axis=2)], axis=3)


def _one_round(q, k, v, q_order, q_inverse, k_order, q_chunk, k_chunk, *,
               C, scale, is_causal, key_ok_BKT, shared_qk):
  """Attention of one round, back in original order: out f32
  `[B, K, G, T, H]` and log-sum-exp `[B, K, G, T]`."""
  B, K, G, T, H = q.shape
  J, W = q_order.shape[2], T // C
  qs = _gather(q, q_order, axis=3).reshape(B, K, G, W, C, H)
  ks, vs = (_windows(_gather(x, k_order, axis=2), C) for x in (k, v))
  q_pos = q_order.reshape(B, K, J, W, C, 1)
  k_pos = _windows(k_order, C)[:, :, None, :, None, :]  # [B, K, 1, W, 1, S]
  logits = jnp.einsum('BKGWCH,BKWSH->BKGWCS', qs, ks,
                      preferred_element_type=jnp.float32) * scale
  # Rounds in which each (query, key) pair shares a window: the result is
  # softmax over the union of the rounds' keys when each logit is lowered
  # by the log of that count.
  cq = _gather(q_chunk, q_order, axis=3).reshape(B, K, J, W, C, 1, -1)
  ck = _windows(_gather(k_chunk, k_order, axis=2), C)[:, :, None, :, None]
  together = ck == cq
  if W > 1:
    together |= ck == (cq - 1) % W
  count = jnp.sum(together, axis=-1, dtype=jnp.int32)  # >= 1
  logits -= jnp.log(count.astype(jnp.float32))
  if shared_qk:
    logits = jnp.where(q_pos == k_pos, SELF_LOGIT, logits)
  visible = _windows(_gather(key_ok_BKT, k_order, axis=2), C)[
      :, :, None, :, None, :]
  if is_causal:
    visible &= k_pos <= q_pos
  logits = jnp.where(visible, logits, masking.NEG_INF)
  top = jnp.max(logits, axis=-1, keepdims=True)
  probs = jnp.exp(logits - top)
  total = jnp.sum(probs, axis=-1, keepdims=True)
  out = jnp.einsum('BKGWCS,BKWSH->BKGWCH', probs / total,
                   vs.astype(jnp.float32)).reshape(B, K, G, T, H)
  lse = (top + jnp.log(total)).reshape(B, K, G, T)
  return (_gather(out, q_inverse, axis=3), _gather(lse, q_inverse, axis=3))


def attend_rounds(q_BKGTH, k_BKTH, v_BKTH, q_order, q_inverse, k_order,
                  k_inverse, *, chunk_size: int, scale: float,
                  is_causal: bool, key_ok_BT, shared_qk: bool):
  """All rounds combined by their log-sum-exp (an online softmax over
  rounds): out f32 `[B, K, G, T, H]` and bool `[B, K, G, T]`, the rows that
  saw some key."""
  B, K, G, T, H = q_BKGTH.shape
  C = chunk_size
  # Chunk of every position in every round, to count repeated pairs.
  q_chunk = jnp.moveaxis(q_inverse // C, 0, -1)  # [B, K, J, T, P]
  k_chunk = jnp.moveaxis(k_inverse // C, 0, -1)  # [B, K, T, P]
  key_ok = jnp.broadcast_to(key_ok_BT[:, None], (B, K, T))

  @jax.checkpoint
  def body(carry, orders):
    acc, total, top = carry
    out, lse = _one_round(q_BKGTH, k_BKTH, v_BKTH, *orders, q_chunk, k_chunk,
                          C=C, scale=scale, is_causal=is_causal,
                          key_ok_BKT=key_ok, shared_qk=shared_qk)
    # Weights relative to the largest lse so far, never through logaddexp:
    # a row that sees only itself has an lse near SELF_LOGIT, where float32
    # steps are 0.008, too coarse for log-space sums.
    new_top = jnp.maximum(top, lse)
    old_weight, weight = jnp.exp(top - new_top), jnp.exp(lse - new_top)
    return (acc * old_weight[..., None] + out * weight[..., None],
            total * old_weight + weight, new_top), None

  init = (jnp.zeros((B, K, G, T, H), jnp.float32),
          jnp.zeros((B, K, G, T), jnp.float32),
          jnp.full((B, K, G, T), masking.NEG_INF, jnp.float32))
  (out, total, top), _ = jax.lax.scan(body, init,
                                      (q_order, q_inverse, k_order))
  return out / total[..., None], top > masking.MASKED_BELOW
