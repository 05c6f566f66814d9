"""Exact softmax attention, the plain way: the oracle for every other kernel.

Vaswani et al. 2017, "Attention Is All You Need" (arXiv 1706.03762):
softmax(scale * Q K^T + bias, masked) V. It forms the whole `[B, N, T, S]`
float32 logits array: O(T S) time and memory. Use `blockwise_attention` for
long sequences.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp

from efficient_attention.attention import arguments
from efficient_attention.attention import scores
from efficient_attention.attention.types import (Any, ArrayLike, DTypeLike, Output,
                                               PrecisionLike)
from efficient_attention.attention.decoding import kv_cache
from efficient_attention.attention import masking
from efficient_attention.attention import masks
from efficient_attention.attention import options as options_lib
from efficient_attention.attention import registry
from efficient_attention.attention import shapes


def group_heads(array, dims: shapes.Dims):
  """`[B|1, N|1, T|1, S|1]` -> `[B|1, K|1, G|1, T|1, S|1]` (n = k * G + g)."""
  b, n, t, s = array.shape
  if n == 1:
    return array.reshape(b, 1, 1, t, s)
  return array.reshape(b, dims.K, dims.G, t, s)


@arguments.any_batch_rank
@options_lib.takes(options_lib.NoOptions)
def dot_product_attention(query: ArrayLike, key: ArrayLike, value: ArrayLike,
                          bias: ArrayLike | None = None,
                          mask: ArrayLike | masks.Mask | None = None, *,
                          scale: float | None = None, is_causal: bool = False,
                          query_seq_lengths: ArrayLike | None = None,
                          key_value_seq_lengths: ArrayLike | None = None,
                          local_window_size: int | tuple[int, int] | None = None,
                          dropout_rng: jax.Array | None = None,
                          dropout_rate: float = 0.0,
                          broadcast_dropout: bool = True,
                          deterministic: bool = True,
                          dtype: DTypeLike | None = None,
                          precision: PrecisionLike = None, module: Any = None,
                          alibi_slopes: ArrayLike | None = None,
                          logits_soft_cap: float | None = None,
                          query_offset: int | ArrayLike | None = None,
                          score: scores.Score | None = None,
                          return_residual: bool = False) -> Output:
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
    dropout_rng, dropout_rate, broadcast_dropout, deterministic: the
      dropout keywords Flax's attention layers pass; attention dropout
      raises ValueError.
    dtype, precision, module: the other keywords they pass. `dtype`
      casts the inputs, `precision` goes to the matmuls, and the weights
      `[B, N, T, S]` are sown into `module` (Linen or NNX) as
      `intermediates/attention_weights`, as Flax's own function does (a
      Flax layer with `sow_weights=True` passes it).
    alibi_slopes: optional float `[N]`: adds `-slope[n] * |t - s|` (ALiBi,
      `attention.positional`).
    logits_soft_cap: optional c > 0: scaled logits x become `c tanh(x / c)`
      (Gemma 2), before bias and ALiBi.
    query_offset: optional int, or int `[B]`: position of the first query
      (keys start at 0) for causality, windows, masks and scores.
    score: optional `attention.scores` modifier of the scaled logits, after
      `logits_soft_cap` and `alibi_slopes` (modifiers too), before the bias.

    return_residual: also return the log-sum-exp of each query's logits,
      as `jax.nn.dot_product_attention` does.

  Returns:
    `[B, T, N, H]` in the dtype of `query` (or `dtype`); with
    `return_residual`, `(output, lse [B, T, N])`, the log-sum-exp of the
    scaled, masked logits in the output dtype, without gradient, and -inf
    for a query that sees no key.

  Cost: O(B N T S H) time, O(B N T S) memory.
  """
  del dropout_rng, broadcast_dropout  # Only meaningful with dropout.
  args = arguments.parse(
      'dot_product_attention', query, key, value, scale=scale,
      local_window_size=local_window_size,
      query_seq_lengths=query_seq_lengths,
      key_value_seq_lengths=key_value_seq_lengths, dtype=dtype,
      dropout_rate=dropout_rate, deterministic=deterministic, module=module,
      return_residual=return_residual,
      alibi_slopes=alibi_slopes, logits_soft_cap=logits_soft_cap)
  if args.dims.T == 0 or args.dims.S == 0:  # as jax.nn: no division
    return arguments.empty_output(args, return_residual)
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

  max_BKGT = jnp.max(logits_BKGTS, axis=-1)
  probs_BKGTS = jnp.exp(logits_BKGTS - max_BKGT[..., None])
  sum_BKGT = jnp.sum(probs_BKGTS, axis=-1)
  probs_BKGTS /= sum_BKGT[..., None]
  seen_BKGT = None
  if visible is not None:  # A query that sees no key outputs zeros, even
    seen_BKGT = jnp.any(visible, axis=-1)  # when a value it skips is NaN.
    probs_BKGTS = jnp.where(seen_BKGT[..., None], probs_BKGTS, 0.0)
  if module is not None:  # as Flax's dot_product_attention sows them
    module.sow('intermediates', 'attention_weights',
               probs_BKGTS.reshape(B, dims.N, T, S).astype(query.dtype))
  out_BTKGH = jnp.einsum(
      'BKGTS,BSKH->BTKGH', probs_BKGTS.astype(value.dtype), value,
      precision=precision, preferred_element_type=jnp.float32)
  if seen_BKGT is not None:
    out_BTKGH = jnp.where(seen_BKGT.transpose(0, 3, 1, 2)[..., None],
                          out_BTKGH, 0.0)
  out = out_BTKGH.reshape(B, T, dims.N, H).astype(query.dtype)
  if not return_residual:
    return out
  lse_BKGT = max_BKGT + jnp.log(sum_BKGT)
  if seen_BKGT is not None:
    lse_BKGT = jnp.where(seen_BKGT, lse_BKGT, -jnp.inf)
  lse_BTN = lse_BKGT.transpose(0, 3, 1, 2).reshape(B, T, dims.N)
  return out, arguments.residual(lse_BTN, query.dtype)


# Decoding: a fixed-size KV cache of K heads (`attention.decoding.kv_cache`).
init_state, step = kv_cache.decoding_pair(dot_product_attention)

registry.register('dot_product', dot_product_attention, init_state=init_state,
                  step=step, options=options_lib.NoOptions)
