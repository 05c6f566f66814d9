"""Exact softmax attention, the plain way: the oracle for every other kernel.

Vaswani et al. 2017, "Attention Is All You Need" (arXiv 1706.03762):
softmax(scale * Q K^T + bias, masked) V. It forms the whole `[B, N, T, S]`
float32 logits array: O(T S) time and memory. Use `blockwise_attention` for
long sequences.
"""

from __future__ import annotations


import jax.numpy as jnp

from attention import arguments
from attention.decoding import kv_cache
from attention import masking
from attention import masks
from attention import options as options_lib
from attention import registry
from attention import shapes


def group_heads(array, dims: shapes.Dims):
  """`[B|1, N|1, T|1, S|1]` -> `[B|1, K|1, G|1, T|1, S|1]` (n = k * G + g)."""
  b, n, t, s = array.shape
  if n == 1:
    return array.reshape(b, 1, 1, t, s)
  return array.reshape(b, dims.K, dims.G, t, s)


@arguments.any_batch_rank
@options_lib.takes(options_lib.NoOptions)
def dot_product_attention(query, key, value, bias=None, mask=None, *,
                          scale=None, is_causal=False, query_seq_lengths=None,
                          key_value_seq_lengths=None, local_window_size=None,
                          dropout_rng=None, dropout_rate=0.0,
                          broadcast_dropout=True, deterministic=True,
                          dtype=None, precision=None, module=None,
                          alibi_slopes=None, logits_soft_cap=None,
                          query_offset=None, score=None):
  """Exact attention with the semantics of `jax.nn.dot_product_attention`.

  The one difference: a query that sees no key (all masked, or past its
  `query_seq_lengths`) returns zeros, not an average over masked keys.
  Grouped heads (GQA/MQA, K dividing N) are computed without repeating the
  key/value heads. Logits and softmax are float32 whatever the input dtype.

  Args:
    query: `[B, T, N, H]`.
    key: `[B, S, K, H]`.
    value: `[B, S, K, H]`.
    bias: optional, added to the logits; broadcasts to `[B, N, T, S]`.
    mask: optional, True (or nonzero, as Flax's float masks) where a query
      may attend; broadcasts to `[B, N, T, S]`. Or an `attention.masks`
      object (evaluated whole here: this is the O(T S) reference).
    scale: logit scale; default `1 / sqrt(H)`.
    is_causal: query `t` sees keys `s <= t`.
    query_seq_lengths: optional int `[B]`; queries past it output zeros.
    key_value_seq_lengths: optional int `[B]`; keys past it are masked.
    local_window_size: int or `(left, right)`: query `t` sees keys in
      `[t - left, t + right]`.
    dropout_rng, dropout_rate, broadcast_dropout, deterministic, dtype,
    precision, module: the keywords Flax's attention layers pass. `dtype`
      casts the inputs, `precision` goes to the matmuls; attention dropout
      and sowing weights raise ValueError.
    alibi_slopes: optional float `[N]`: adds `-slope[n] * |t - s|` (ALiBi,
      `attention.positional`).
    logits_soft_cap: optional c > 0: scaled logits x become `c tanh(x / c)`
      (Gemma 2), before bias and ALiBi.
    query_offset: optional int, or int `[B]`: position of the first query
      (keys start at 0) for causality, windows, masks and scores.
    score: optional `attention.scores` modifier of the scaled logits, after
      `logits_soft_cap` and `alibi_slopes` (modifiers too), before the bias.

  Returns:
    `[B, T, N, H]` in the dtype of `query` (or `dtype`).

  Cost: O(B N T S H) time, O(B N T S) memory.
  """
  del dropout_rng, broadcast_dropout  # Only meaningful with dropout.
  args = arguments.parse(
      'dot_product_attention', query, key, value, scale=scale,
      local_window_size=local_window_size,
      query_seq_lengths=query_seq_lengths,
      key_value_seq_lengths=key_value_seq_lengths, dtype=dtype,
      dropout_rate=dropout_rate, deterministic=deterministic, module=module,
      alibi_slopes=alibi_slopes, logits_soft_cap=logits_soft_cap)
  if args.dims.T == 0 or args.dims.S == 0:  # as jax.nn: no division
    return arguments.empty_output(args)
  query, key, value, dims = args.query, args.key, args.value, args.dims
  B, T, S, K, G, H = dims.B, dims.T, dims.S, dims.K, dims.G, dims.H
  q_offset = arguments.query_offset(query_offset, dims)
  q_pos_BT = jnp.arange(T)[None, :] + (0 if q_offset is None else jnp.reshape(
      jnp.asarray(q_offset), (-1, 1)))

  query_BTKGH = query.reshape(B, T, K, G, H)
  logits_BKGTS = jnp.einsum(
      'BTKGH,BSKH->BKGTS', query_BTKGH, key, precision=precision,
      preferred_element_type=jnp.float32)
  logits_BKGTS *= args.scale
  score = arguments.score(args, score)
  if score is not None:  # scores see [B, N, T, S] and absolute positions
    logits_BNTS = score(logits_BKGTS.reshape(B, dims.N, T, S),
                        jnp.arange(B)[:, None, None, None],
                        jnp.arange(dims.N)[None, :, None, None],
                        q_pos_BT[:, None, :, None],
                        jnp.arange(S)[None, None, None, :])
    logits_BKGTS = logits_BNTS.reshape(B, K, G, T, S)
  if bias is not None:
    bias = group_heads(shapes.check_bnts('bias', bias, dims), dims)
    logits_BKGTS += bias.astype(jnp.float32)

  mask, dense_mask = masks.split(mask)
  mask = masks.all_of(
      masks.checked_batch(mask, B).bind(T, S) if mask is not None else None,
      *masks.from_arguments(is_causal, args.window, args.q_len, args.kv_len))
  visible = None
  if mask is not None:  # evaluated whole: this is the O(T S) reference
    visible = group_heads(masks.evaluate(
        mask, dims.N, T, S, 0 if q_offset is None else q_offset), dims)
  if dense_mask is not None:
    dense_mask = group_heads(shapes.check_bnts('mask', dense_mask, dims),
                             dims)
    visible = dense_mask if visible is None else visible & dense_mask
  if visible is not None:
    logits_BKGTS = jnp.where(visible, logits_BKGTS, masking.NEG_INF)

  probs_BKGTS = jnp.exp(
      logits_BKGTS - jnp.max(logits_BKGTS, axis=-1, keepdims=True))
  probs_BKGTS /= jnp.sum(probs_BKGTS, axis=-1, keepdims=True)
  out_BTKGH = jnp.einsum(
      'BKGTS,BSKH->BTKGH', probs_BKGTS.astype(value.dtype), value,
      precision=precision, preferred_element_type=jnp.float32)
  if visible is not None:  # A query that sees no key outputs zeros, even
    seen_BKGT = jnp.any(visible, axis=-1)  # when a value it skips is NaN.
    out_BTKGH = jnp.where(seen_BKGT.transpose(0, 3, 1, 2)[..., None],
                          out_BTKGH, 0.0)
  return out_BTKGH.reshape(B, T, dims.N, H).astype(query.dtype)


# Decoding: a fixed-size KV cache of K heads (`attention.decoding.kv_cache`).
init_state, step = kv_cache.decoding_pair(dot_product_attention)

registry.register('dot_product', dot_product_attention, init_state=init_state,
                  step=step, options=options_lib.NoOptions)
