"""Attention through feature maps in O(N): the kernel of linear and Performer.

With features phi(q) `[F]`, phi(k) `[F]` standing in for exp(q . k), the
output of query t is

  out_t = sum_s a_ts v_s / sum_s a_ts,   a_ts = phi(q_t) . phi(k_s) c_s,

summed over the keys it sees. Non-causally this is phi(q_t) . KV / phi(q_t) . z
with KV = sum_s c_s phi(k_s) v_s^T `[F, H]` and z = sum_s c_s phi(k_s) `[F]`:
O(N F H). Causally the sums run over s <= t. The chunked form (Katharopoulos
et al. 2020, arXiv 2006.16236, Sec. 3.3; as in Hua et al. 2022, arXiv
2202.10447) splits the sequence into chunks of C tokens: inside a chunk it
forms the masked C x C matrix of a_ts, and a `lax.scan` carries KV and z from
chunk to chunk. The scan body, feature maps included, is rematerialised,
so the backward pass keeps the `[C, H]` inputs of each chunk and one
`[F, H]` state per chunk, never a state per token nor `[T, F]` features:
time O(N (C + F) H), memory O(N (H + F H / C)). No prefix sum is ever
undone by subtraction.

Key weights c_s = exp(w_s) let a feature map carry a per-key scale in log
space (Performer's positive features have c_s = exp(-|k_s|^2 / 2) times
their largest feature). To keep exp(w_s) in range the state is held relative
to the running maximum M_t = max_{s <= t} w_s, rescaled as it grows, the way
online softmax rescales. Query t uses M_t of its own prefix only, so no
statistic of a later token ever reaches an earlier output: perturbing future
tokens leaves earlier outputs bitwise unchanged. Linear attention has no
weights (w = None) and skips all of this.

Features, weights and states are float32 whatever the input dtype.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from efficient_attention.attention import masking


class State(NamedTuple):
  """Prefix sums of the keys seen so far (float32).

  kv: `[B, K, F, H]`, sum of c_s phi(k_s) v_s^T / exp(log_scale).
  normaliser: `[B, K, F]`, sum of c_s phi(k_s) / exp(log_scale).
  log_scale: `[B, K]`, the running maximum of the key log-weights
    (NEG_INF before the first key; zero for unweighted features).
  """

  kv: jax.Array
  normaliser: jax.Array
  log_scale: jax.Array


def init_state(batch_size: int, num_kv_heads: int, num_features: int,
               head_dim: int, weighted: bool) -> State:
  """Empty prefix sums; `weighted`: keys carry log-weights."""
  B, K, F, H = batch_size, num_kv_heads, num_features, head_dim
  start = masking.NEG_INF if weighted else 0.0
  return State(jnp.zeros((B, K, F, H), jnp.float32),
               jnp.zeros((B, K, F), jnp.float32),
               jnp.full((B, K), start, jnp.float32))


def normalise(num, den, eps: float):
  """num / (den + eps), and exactly 0 where that denominator is 0."""
  den = den + eps
  empty = den == 0
  return jnp.where(empty[..., None], 0.0,
                   num / jnp.where(empty, 1.0, den)[..., None])


def chunk(state: State, q_BCKGF, k_BCKF, w_BCK, v_BCKH):
  """Causal attention within one chunk on top of the prefix `state`.

  Args:
    state: prefix sums of all earlier keys.
    q_BCKGF: query features, float32.
    k_BCKF: key features, float32, zero for keys nobody may see.
    w_BCK: key log-weights (NEG_INF for unseen keys), or None.
    v_BCKH: values.

  Returns:
    `(num [B, C, K, G, H], den [B, C, K, G], new_state)`, float32.
  """
  C = q_BCKGF.shape[1]
  causal_CC = jnp.tril(jnp.ones((C, C), bool))
  scores_BKGTS = jnp.einsum('BTKGF,BSKF->BKGTS', q_BCKGF, k_BCKF)
  if w_BCK is None:
    scores_BKGTS = jnp.where(causal_CC, scores_BKGTS, 0.0)
    past_BTK = jnp.ones(q_BCKGF.shape[:3], jnp.float32)
    log_scale = state.log_scale
    k_weighted = k_BCKF
    decay = jnp.ones_like(log_scale)
  else:
    # The stabiliser cancels between numerator and denominator: no gradient.
    w_BKC = jnp.swapaxes(w_BCK, 1, 2)
    row_max_BKC = lax.stop_gradient(jnp.maximum(
        state.log_scale[..., None], lax.cummax(w_BKC, axis=2)))
    exponent_BKTS = jnp.where(
        causal_CC, w_BKC[:, :, None, :] - row_max_BKC[..., None],
        masking.NEG_INF)
    scores_BKGTS = jnp.where(
        causal_CC, scores_BKGTS * jnp.exp(exponent_BKTS)[:, :, None], 0.0)
    past_BTK = jnp.swapaxes(
        jnp.exp(state.log_scale[..., None] - row_max_BKC), 1, 2)
    log_scale = row_max_BKC[..., -1]
    k_weighted = k_BCKF * jnp.exp(w_BCK - log_scale[:, None])[..., None]
    decay = jnp.exp(state.log_scale - log_scale)
  num = jnp.einsum('BKGTS,BSKH->BTKGH', scores_BKGTS, v_BCKH,
                   preferred_element_type=jnp.float32)
  num += jnp.einsum('BTKGF,BKFH->BTKGH', q_BCKGF,
                    state.kv) * past_BTK[..., None, None]
  den = jnp.transpose(jnp.sum(scores_BKGTS, axis=-1), (0, 3, 1, 2))
  den += jnp.einsum('BTKGF,BKF->BTKG', q_BCKGF,
                    state.normaliser) * past_BTK[..., None]
  kv = decay[..., None, None] * state.kv + jnp.einsum(
      'BSKF,BSKH->BKFH', k_weighted, v_BCKH, preferred_element_type=jnp.float32)
  normaliser = decay[..., None] * state.normaliser + jnp.sum(k_weighted, axis=1)
  return num, den, State(kv, normaliser, log_scale)


def _to_chunks(x, C):
  """`[B, T, ...]` (T a multiple of C) -> `[T / C, B, C, ...]`."""
  B, T = x.shape[:2]
  return jnp.moveaxis(x.reshape(B, T // C, C, *x.shape[2:]), 1, 0)


def _from_chunks(x):
  """`[T / C, B, C, ...]` -> `[B, T, ...]`."""
  x = jnp.moveaxis(x, 0, 1)
  return x.reshape(x.shape[0], -1, *x.shape[3:])


def _masked(features, q_BCKGH, k_BCKH, key_ok_BC):
  """Features of a chunk; keys nobody may see get zero features, NEG_INF w."""
  phi_q, phi_k, w = features(q_BCKGH, k_BCKH)
  phi_k = jnp.where(key_ok_BC[:, :, None, None], phi_k, 0.0)
  if w is not None:
    w = jnp.where(key_ok_BC[:, :, None], w, masking.NEG_INF)
  return phi_q, phi_k, w


def causal(features, q_BTKGH, k_BTKH, v_BTKH, key_ok_BT, *, chunk_size: int,
           eps: float, state: State | None = None):
  """Causal feature attention by chunks; `(out [B, T, K, G, H] f32, state)`.

  Args:
    features: `(q [B, C, K, G, H], k [B, C, K, H]) -> (phi_q [B, C, K, G,
      F], phi_k [B, C, K, F], w [B, C, K] or None)`, float32. It runs
      inside the rematerialised scan body, so the backward pass saves the
      `[T, H]` inputs, never `[T, F]` features.
    q_BTKGH, k_BTKH, v_BTKH: queries, keys and values.
    key_ok_BT: bool, the keys any query may see.
    chunk_size: C; the length is padded to a multiple of it inside.
    eps: added to denominators.
    state: prefix sums of earlier tokens (decoding), or None.
  """
  B, T, K, G, H = q_BTKGH.shape
  C = min(chunk_size, T)
  pad = -T % C
  if pad:
    pad_to = lambda x: jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
    q_BTKGH, k_BTKH, v_BTKH, key_ok_BT = (
        pad_to(x) for x in (q_BTKGH, k_BTKH, v_BTKH, key_ok_BT))
  if state is None:
    phi_q, _, w = jax.eval_shape(features, q_BTKGH[:, :C], k_BTKH[:, :C])
    state = init_state(B, K, phi_q.shape[-1], H, weighted=w is not None)

  @jax.checkpoint
  def body(state, xs):
    q, k, v, key_ok = xs
    phi_q, phi_k, w = _masked(features, q, k, key_ok)
    num, den, state = chunk(state, phi_q, phi_k, w, v)
    return state, normalise(num, den, eps)

  xs = tuple(_to_chunks(x, C) for x in (q_BTKGH, k_BTKH, v_BTKH, key_ok_BT))
  state, out = lax.scan(body, state, xs)
  return _from_chunks(out)[:, :T], state


def noncausal(features, q_BTKGH, k_BSKH, v_BSKH, key_ok_BS, *, eps: float):
  """Bidirectional feature attention in O(N); `[B, T, K, G, H]` float32."""
  q_BTKGF, k_BSKF, w_BSK = _masked(features, q_BTKGH, k_BSKH, key_ok_BS)
  if w_BSK is not None:
    top_BK = lax.stop_gradient(jnp.max(w_BSK, axis=1))
    k_BSKF = k_BSKF * jnp.exp(w_BSK - top_BK[:, None])[..., None]
  kv_BKFH = jnp.einsum('BSKF,BSKH->BKFH', k_BSKF, v_BSKH,
                       preferred_element_type=jnp.float32)
  num = jnp.einsum('BTKGF,BKFH->BTKGH', q_BTKGF, kv_BKFH)
  den = jnp.einsum('BTKGF,BKF->BTKG', q_BTKGF, jnp.sum(k_BSKF, axis=1))
  return normalise(num, den, eps)


def attend(args, features, *, is_causal: bool, chunk_size: int, eps: float):
  """Feature attention for parsed `args`: masks, lengths, causal T != S.

  `features` as in `causal`. Keys past `key_value_seq_lengths` get zero
  features (and NEG_INF log-weights), so they leave numerator and
  denominator alike; queries past `query_seq_lengths` output zeros. Causal
  attention is top-left aligned as in `jax.nn.dot_product_attention`: only
  the first T keys can be seen.

  Returns:
    `[B, T, N, H]` in the query's dtype.
  """
  d, key, value = args.dims, args.key, args.value
  B, T, S = d.B, d.T, d.S
  if is_causal and S != T:
    keep = min(S, T)
    pad = [(0, 0), (0, T - keep), (0, 0), (0, 0)]
    key, value = (jnp.pad(x[:, :keep], pad) for x in (key, value))
  length = key.shape[1]
  key_ok_BS = jnp.broadcast_to(jnp.arange(length) < S, (B, length))
  if args.kv_len is not None:
    key_ok_BS &= jnp.arange(length)[None, :] < args.kv_len[:, None]
  query = args.query.reshape(B, T, d.K, d.G, d.H)
  if is_causal:
    out, _ = causal(features, query, key, value, key_ok_BS,
                    chunk_size=chunk_size, eps=eps)
  else:
    out = noncausal(features, query, key, value, key_ok_BS, eps=eps)
  if args.q_len is not None:
    seen_BT = jnp.arange(T)[None, :] < args.q_len[:, None]
    out = jnp.where(seen_BT[:, :, None, None, None], out, 0.0)
  return out.reshape(B, T, d.N, d.H).astype(args.query.dtype)


def check_step(state: State, args, num_features: int | None = None):
  """Entry checks of a decoding step: L keys for L queries, state shapes."""
  d = args.dims
  if args.key.shape != (d.B, d.T, d.K, d.H):
    raise ValueError(f'key must be [B, L, K, H] = {(d.B, d.T, d.K, d.H)}: one '
                     f'key per new query, got {args.key.shape}')
  want = (d.B, d.K, num_features, d.H)
  if len(state.kv.shape) != 4 or any(
      w is not None and s != w for s, w in zip(state.kv.shape, want)):
    raise ValueError(f'state.kv must be [B, K, F, H] = {want}: make the state '
                     f'with init_state and the same options, got '
                     f'{state.kv.shape}')


def step(state: State, features, args, *, num_new, chunk_size: int,
         eps: float):
  """L new tokens (parsed `args`) on top of `state`.

  Only the first `num_new[b]` tokens of row b (default all L) enter the
  state; the rest pad a batch of prompts of different lengths. A long
  prompt is processed in chunks, as in `causal`.

  Returns:
    `(out [B, L, N, H] in the query's dtype, new_state)`.
  """
  d = args.dims
  key_ok_BL = jnp.ones((d.B, d.T), bool)
  if num_new is not None:
    key_ok_BL = jnp.arange(d.T)[None, :] < num_new[:, None]
  out, state = causal(features, args.query.reshape(d.B, d.T, d.K, d.G, d.H),
                      args.key, args.value, key_ok_BL, chunk_size=chunk_size,
                      eps=eps, state=state)
  return out.reshape(d.B, d.T, d.N, d.H).astype(args.query.dtype), state
