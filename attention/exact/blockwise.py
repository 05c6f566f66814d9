"""Exact attention in tiles, with memory linear in sequence length.

Rabe & Staats 2021, "Self-attention Does Not Need O(n^2) Memory"
(arXiv 2112.05682), with the backward pass of Dao 2023, "FlashAttention-2"
(arXiv 2307.08691).

Forward, for each query chunk, a loop over the key chunks it can see keeps a
running row maximum m, normaliser l and output accumulator a:

  s = scale * q k^T + bias (masked)     m' = max(m, rowmax(s))
  l' = e^(m - m') l + rowsum(e^(s - m'))  a' = e^(m - m') a + e^(s - m') v

and ends with out = a / l and the log-sum-exp lse = m + log l. Only `out`
and `lse` are saved. The backward pass loops over key chunks and, inside,
over the query chunks that see them, recomputing each tile's probabilities
p = e^(s - lse):

  dv += p^T do      dp = do v^T      ds = p (dp - rowsum(do * out))
  dq += scale ds k  dk += scale ds^T q   dbias = ds

Tiles that no query of the tile can see (causal, window, sequence lengths)
are skipped, decided from positions. Both passes keep O(C_q C_k) of tile
state plus O(T + S) buffers: memory linear in the sequence length.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax

from efficient_attention.attention import arguments
from efficient_attention.attention import scores
from efficient_attention.attention.types import (Any, ArrayLike, DTypeLike, Output,
                                               PrecisionLike)
from efficient_attention.attention.decoding import kv_cache
from efficient_attention.attention import masking
from efficient_attention.attention import masks
from efficient_attention.attention import options as options_lib
from efficient_attention.attention.exact import reference
from efficient_attention.attention import registry
from efficient_attention.attention import shapes
from efficient_attention.attention.exact import splash
from efficient_attention.attention.exact import tiles


def _key_chunk(x_BSKH, j, size):
  """Key chunk j of `[B, S, K, H]` as `[B, K, size, H]`."""
  return lax.dynamic_slice_in_dim(x_BSKH, j * size, size, axis=1).transpose(
      0, 2, 1, 3)


def _forward(plan: tiles.Plan, q, k, v, extras):
  """Returns out `[B, K, Tp*G, H]` (q's dtype) and lse `[B, K, Tp*G]` (f32)."""
  B, K, _, H = q.shape
  R, Ck = plan.R, plan.Ck
  order, partial, count = (jnp.asarray(x) for x in tiles.tile_lists(
      plan, extras[2], extras[4])[0])
  key_chunk_of = _key_chunk
  if plan.num_q > 1 and k.dtype != jnp.float32:
    # Every key chunk is visited by several query chunks: in 16-bit dtypes
    # lay keys and values out [B, K, S, H] once rather than transposing a
    # chunk per tile (bfloat16 on CPU, N=8192 causal: forward 0.76x,
    # forward+backward 0.78x the time, for 2 S K H bytes more; float32
    # gains nothing, so it keeps the per-tile slices and its memory). A
    # decoding step, one query chunk, slices its own.
    k, v = (x.transpose(0, 2, 1, 3) for x in (k, v))
    key_chunk_of = lambda x, j, size: lax.dynamic_slice_in_dim(
        x, j * size, size, axis=2)

  def query_chunk(i, carry):
    out, lse = carry
    q_i = lax.dynamic_slice_in_dim(q, i * R, R, axis=2)

    def key_chunk(full, n, state):
      m, l, acc = state
      j = order[i, n]
      k_j, v_j = key_chunk_of(k, j, Ck), key_chunk_of(v, j, Ck)
      s = tiles.tile_logits(plan, q_i, k_j, i, j, extras, full)
      m_new = jnp.maximum(m, jnp.max(s, axis=-1))
      # Rows that saw only masked keys so far have m_new = NEG_INF and gather
      # junk here; the first visible key rescales it by e^(NEG_INF - m') = 0,
      # and rows that never see one are zeroed at the end.
      p = jnp.exp(s - m_new[..., None])
      alpha = jnp.exp(m - m_new)
      l = alpha * l + jnp.sum(p, axis=-1)
      pv = jnp.einsum('BKRC,BKCH->BKRH', p.astype(v.dtype), v_j,
                      precision=plan.precision,
                      preferred_element_type=jnp.float32)
      return m_new, l, alpha[..., None] * acc + pv

    init = (jnp.full((B, K, R), masking.NEG_INF, jnp.float32),
            jnp.zeros((B, K, R), jnp.float32),
            jnp.zeros((B, K, R, H), jnp.float32))
    # Partly visible tiles (masked), then fully visible ones (not masked).
    state = lax.fori_loop(0, partial[i], functools.partial(key_chunk, False),
                          init)
    m, l, acc = lax.fori_loop(partial[i], count[i],
                              functools.partial(key_chunk, True), state)
    seen = m > masking.MASKED_BELOW
    l = jnp.where(seen, l, 1.0)
    out_i = jnp.where(seen[..., None], acc / l[..., None], 0.0)
    # +inf where nothing is seen: the backward's e^(s - lse) is then 0.
    lse_i = jnp.where(seen, m + jnp.log(l), jnp.inf)
    out = lax.dynamic_update_slice_in_dim(out, out_i.astype(q.dtype), i * R,
                                          axis=2)
    lse = lax.dynamic_update_slice_in_dim(lse, lse_i, i * R, axis=2)
    return out, lse

  init = (jnp.zeros(q.shape, q.dtype), jnp.zeros(q.shape[:3], jnp.float32))
  return lax.fori_loop(0, plan.num_q, query_chunk, init)


def _backward(plan: tiles.Plan, residuals, d_out):
  """FlashAttention-2 backward: gradients of q, k, v and bias."""
  q, k, v, extras, out, lse, learn_score = residuals
  learn_score = learn_score is not None
  R, Ck, scale = plan.R, plan.Ck, plan.scale
  delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), -1)
  f32 = functools.partial(jnp.einsum, precision=plan.precision,
                          preferred_element_type=jnp.float32)

  order, partial, count = (jnp.asarray(x) for x in tiles.tile_lists(
      plan, extras[2], extras[4])[1])

  def key_chunk(j, carry):
    dq, dk, dv, dbias, dscore = carry
    k_j, v_j = _key_chunk(k, j, Ck), _key_chunk(v, j, Ck)

    def query_chunk(full, n, state):
      dq, dk_j, dv_j, dbias, dscore = state
      i = order[j, n]
      q_i, do_i = (lax.dynamic_slice_in_dim(x, i * R, R, axis=2)
                   for x in (q, d_out))
      lse_i, delta_i = (lax.dynamic_slice_in_dim(x, i * R, R, axis=2)
                        for x in (lse, delta))
      s, back = tiles.tile_logits(plan, q_i, k_j, i, j, extras, full,
                                  with_vjp=True, learn_score=learn_score)
      p = jnp.exp(s - lse_i[..., None])
      dv_j += f32('BKRC,BKRH->BKCH', p.astype(d_out.dtype), do_i)
      dp = f32('BKRH,BKCH->BKRC', do_i, v_j)
      ds = p * (dp - delta_i[..., None])  # d loss / d logits (= d bias)
      if dbias is not None:
        dbias = tiles.accumulate_bnts_tile(plan, dbias, ds, i, j)
      ds, dscore_tile = back(ds)  # through the score modifier
      if dscore is not None:
        dscore = jax.tree.map(jnp.add, dscore, dscore_tile)
      dq_i = lax.dynamic_slice_in_dim(dq, i * R, R, axis=2)
      dq_i += scale * f32('BKRC,BKCH->BKRH', ds.astype(k.dtype), k_j)
      dq = lax.dynamic_update_slice_in_dim(dq, dq_i, i * R, axis=2)
      dk_j += scale * f32('BKRC,BKRH->BKCH', ds.astype(q.dtype), q_i)
      return dq, dk_j, dv_j, dbias, dscore

    zeros = jnp.zeros(k_j.shape, jnp.float32)
    state = lax.fori_loop(0, partial[j], functools.partial(query_chunk, False),
                          (dq, zeros, zeros, dbias, dscore))
    dq, dk_j, dv_j, dbias, dscore = lax.fori_loop(
        partial[j], count[j], functools.partial(query_chunk, True), state)
    dk = lax.dynamic_update_slice_in_dim(dk, dk_j.transpose(0, 2, 1, 3),
                                         j * Ck, axis=1)
    dv = lax.dynamic_update_slice_in_dim(dv, dv_j.transpose(0, 2, 1, 3),
                                         j * Ck, axis=1)
    return dq, dk, dv, dbias, dscore

  bias, score = extras[0], extras[3]
  f32_zeros = lambda x: None if x is None else jnp.zeros(x.shape, jnp.float32)
  dscore = (jax.tree.map(jnp.zeros_like, score) if learn_score else None)
  dq, dk, dv, dbias, dscore = lax.fori_loop(
      0, plan.num_k, key_chunk,
      tuple(f32_zeros(x) for x in (q, k, v, bias)) + (dscore,))
  if dbias is not None:
    dbias = dbias.astype(bias.dtype)
  return (dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), dbias,
          dscore)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _attend(plan, q, k, v, bias, dense_mask, mask, score, q_offset):
  extras = (bias, dense_mask, mask, score, q_offset)
  return _forward(plan, q, k, v, extras)


def _attend_fwd(plan, *args):
  # symbolic_zeros: each leaf says whether it is differentiated. A score's
  # parameters get gradients only when they are (a per-tile cost).
  learn_score = any(x.perturbed for x in jax.tree.leaves(args[6]))
  q, k, v, bias, dense_mask, mask, score, q_offset = (
      jax.custom_derivatives.custom_vjp_primal_tree_values(args))
  extras = (bias, dense_mask, mask, score, q_offset)
  out, lse = _forward(plan, q, k, v, extras)
  return (out, lse), (q, k, v, extras, out, lse,
                      () if learn_score else None)


def _attend_bwd(plan, residuals, cotangents):
  d_out, _ = cotangents  # the log-sum-exp is returned without gradient
  if isinstance(d_out, jax.custom_derivatives.SymbolicZero):
    d_out = jnp.zeros(d_out.shape, d_out.dtype)
  dq, dk, dv, dbias, dscore = _backward(plan, residuals, d_out)
  return dq, dk, dv, dbias, None, None, dscore, None


_attend.defvjp(_attend_fwd, _attend_bwd, symbolic_zeros=True)


def _pad_axis(x, axis, size):
  """Zero-pads (False for bool) `axis` of `x` to `size`, unless it is 1."""
  if x.shape[axis] in (1, size):
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, size - x.shape[axis])
  return jnp.pad(x, widths)


def _bnts_for_kernel(name, array, dims, Tp, Sp):
  """`[B|1, N|1, T|1, S|1]` -> padded `[B|1, K|1, Tp|1, G|1, Sp|1]`."""
  array = shapes.check_bnts(name, array, dims)
  array = reference.group_heads(array, dims).transpose(0, 1, 3, 2, 4)
  return _pad_axis(_pad_axis(array, 2, Tp), 4, Sp)


@dataclasses.dataclass(frozen=True)
class BlockwiseOptions(options_lib.Options):
  """Tile sizes of `blockwise_attention` (the result does not depend on them)."""

  query_chunk_size: int = 512  # C_q, query rows per tile
  key_chunk_size: int = 256  # C_k, key columns per tile
  implementation: str = 'auto'  # 'auto': splash attention on a TPU where
                                # it can express the call, else the scan;
                                # 'scan'; 'splash' (interpreted off a TPU)

  def __post_init__(self):
    for name in ('query_chunk_size', 'key_chunk_size'):
      options_lib.check_positive_int('BlockwiseOptions', name,
                                     getattr(self, name))
    options_lib.check_choice('BlockwiseOptions', 'implementation',
                             self.implementation, splash.IMPLEMENTATIONS)


@arguments.any_batch_rank
@options_lib.takes(BlockwiseOptions)
def blockwise_attention(query: ArrayLike, key: ArrayLike, value: ArrayLike,
                        bias: ArrayLike | None = None,
                        mask: ArrayLike | masks.Mask | None = None, *,
                        scale: float | None = None, is_causal: bool = False,
                        query_seq_lengths: ArrayLike | None = None,
                        key_value_seq_lengths: ArrayLike | None = None,
                        local_window_size: int | tuple[int, int] | None = None,
                        query_chunk_size: int, key_chunk_size: int,
                        implementation: str,
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
  """Exact attention with O(T + S) memory in the forward and backward passes.

  Same arguments and results as `attention.dot_product_attention` (the
  semantics of `jax.nn.dot_product_attention`, with zeros for queries that
  see no key), computed in tiles of `query_chunk_size x key_chunk_size`
  with an online softmax and a recomputing custom VJP. Chunk sizes need not
  divide the lengths (inputs are padded inside), and either may be larger.

  Args:
    query: `[B, T, N, H]`.
    key: `[B, S, K, H]`, K dividing N (GQA/MQA without repeating heads).
    value: `[B, S, K, H]`.
    bias: optional, added to the logits; broadcasts to `[B, N, T, S]`.
    mask: optional: an `attention.masks` object, evaluated per tile from
      positions, whose empty tiles are never visited and full ones never
      masked elementwise; or, as in `jax.nn`, an array, True (or nonzero,
      as Flax's float masks) where a query may attend, broadcasting to
      `[B, N, T, S]` (sliced per tile, every tile visited). Causal, window
      and length masks never need one.
    scale: logit scale; default `1 / sqrt(H)`.
    is_causal: query `t` sees keys `s <= t`.
    query_seq_lengths: optional int `[B]`; queries past it output zeros.
    key_value_seq_lengths: optional int `[B]`; keys past it are masked.
    local_window_size: int or `(left, right)`: query `t` sees keys in
      `[t - left, t + right]`.
    query_chunk_size: query positions per tile, C_q. The defaults (512, 256)
      were the fastest of those tried on a 2-core AVX-512 CPU at N=8192.
    key_chunk_size: key positions per tile, C_k.
    implementation: 'auto' (default): on a TPU, JAX's splash attention
      kernel where it can express the call (`attention.exact.splash` says
      what it takes), else the tiled scan; 'scan': always the scan;
      'splash': always splash (Pallas interpret mode off a TPU, for tests),
      ValueError where it cannot express the call.
    dropout_rng, dropout_rate, broadcast_dropout, deterministic: the
      dropout keywords Flax's attention layers pass; attention dropout
      raises ValueError.
    dtype, precision, module: the other keywords they pass. `dtype` casts
      the inputs, `precision` goes to the matmuls; sowing weights into
      `module` (never formed whole here) raises ValueError.
    alibi_slopes: optional float `[N]`: adds `-slope[n] * |t - s|` (ALiBi),
      built per tile from positions (`scores.alibi`).
    logits_soft_cap: optional c > 0: scaled logits x become `c tanh(x / c)`
      (Gemma 2, `scores.soft_cap`).
    query_offset: optional int, or int `[B]`: the position of the first
      query (keys start at 0), for causality, windows, masks and scores.
      Decoding passes the tokens already cached, so a step at position p
      visits only the key tiles up to p. Default 0 (`jax.nn`'s top-left
      alignment when T != S; `S - T` aligns bottom-right).
    score: optional `attention.scores` modifier of the scaled logits, per
      tile, before the bias and the mask; it runs after `logits_soft_cap`
      and `alibi_slopes`, which are modifiers too. Gradients reach its
      parameters (a T5 table, learned slopes) exactly.
    return_residual: also return the per-query log-sum-exp the kernel
      keeps for its backward pass, as `jax.nn.dot_product_attention` does.

  Returns:
    `[B, T, N, H]` in the dtype of `query` (or `dtype`); with
    `return_residual`, `(output, lse [B, T, N])` as
    `attention.dot_product_attention` returns it.

  Cost: O(B N T S H) time, halved by tile skipping when causal, and
  O(B N W H) with a window of width W; temporary memory
  O(B N (C_q C_k + (T + S) H)), linear in the sequence length.
  """
  del dropout_rng, broadcast_dropout  # Only meaningful with dropout.
  args = arguments.parse(
      'blockwise_attention', query, key, value, scale=scale,
      local_window_size=local_window_size,
      query_seq_lengths=query_seq_lengths,
      key_value_seq_lengths=key_value_seq_lengths, dtype=dtype,
      dropout_rate=dropout_rate, deterministic=deterministic, module=module,
      return_residual=return_residual,
      alibi_slopes=alibi_slopes, logits_soft_cap=logits_soft_cap)
  if args.dims.T == 0 or args.dims.S == 0:  # as jax.nn: no division
    return arguments.empty_output(args, return_residual)
  query, key, value, dims = args.query, args.key, args.value, args.dims
  B, T, S, N, K, G, H = dims.B, dims.T, dims.S, dims.N, dims.K, dims.G, dims.H
  Cq, Ck = min(query_chunk_size, T), min(key_chunk_size, S)
  num_q, num_k = -(-T // Cq), -(-S // Ck)
  Tp, Sp = num_q * Cq, num_k * Ck
  plan = tiles.Plan(scale=args.scale, T=T, S=S, G=G, Cq=Cq, Ck=Ck,
                    num_q=num_q, num_k=num_k, precision=precision)
  mask, dense_mask = masks.split(mask)
  if mask is not None:
    mask = masks.checked_batch(mask, B).bind(T, S)
  if implementation != 'scan':
    whole = masks.all_of(mask, *masks.from_arguments(is_causal, args.window,
                                                     None, None))
    reason = splash.reason_not_expressible(
        T=T, S=S, bias=bias, dense_mask=dense_mask,
        alibi_slopes=args.alibi_slopes, score=score, q_len=args.q_len,
        kv_len=args.kv_len, query_offset=query_offset,
        return_residual=return_residual, mask=whole)
    if reason is None and (implementation == 'splash' or splash.on_tpu()):
      return splash.attend(query, key, value, whole, scale=args.scale,
                           logits_soft_cap=args.logits_soft_cap)
    if implementation == 'splash':
      raise ValueError(f"implementation='splash': {reason}; use 'auto' to "
                       'fall back to the scan')
  mask = masks.all_of(
      mask,
      *masks.from_arguments(is_causal, args.window, args.q_len, args.kv_len),
      masks.key_lengths(S) if Sp != S else None)  # padded keys
  if bias is not None:
    bias = _bnts_for_kernel('bias', bias, dims, Tp, Sp)
  if dense_mask is not None:
    dense_mask = _bnts_for_kernel('mask', dense_mask, dims, Tp, Sp)

  q_BKRH = _pad_axis(query, 1, Tp).reshape(B, Tp, K, G, H)
  q_BKRH = q_BKRH.transpose(0, 2, 1, 3, 4).reshape(B, K, Tp * G, H)
  # Keys and values stay [B, S, K, H]: tiles slice and transpose their own
  # chunk, so a decoding step never copies the whole cache.
  k_BSKH, v_BSKH = (_pad_axis(x, 1, Sp) for x in (key, value))
  q_offset = arguments.query_offset(query_offset, dims)
  out, lse = _attend(plan, q_BKRH, k_BSKH, v_BSKH, bias, dense_mask, mask,
                     arguments.score(args, score), q_offset)
  out = out.reshape(B, K, Tp, G, H).transpose(0, 2, 1, 3, 4)
  out = out.reshape(B, Tp, N, H)[:, :T]
  if not return_residual:
    return out
  lse = lse.reshape(B, K, Tp, G).transpose(0, 2, 1, 3).reshape(B, Tp, N)
  lse = jnp.where(lse == jnp.inf, -jnp.inf, lse)  # seen no key: -inf
  return out, arguments.residual(lse[:, :T], out.dtype)


# Decoding: a fixed-size KV cache of K heads (`attention.decoding.kv_cache`).
init_state, step = kv_cache.decoding_pair(blockwise_attention)

registry.register('blockwise', blockwise_attention, init_state=init_state,
                  step=step, options=BlockwiseOptions)
