"""Performer: FAVOR+ random features for softmax attention, causal-safe.

Choromanski et al. 2021, "Rethinking Attention with Performers" (arXiv
2009.14794). With q~ = sqrt(scale) q, k~ = sqrt(scale) k and a projection
W `[F, H]` of Gaussian rows w_f,

  exp(q~ . k~) = E_w[ exp(w.q~ - |q~|^2/2) exp(w.k~ - |k~|^2/2) ]   (positive)
              = E_w[ e^(|q~|^2/2 + |k~|^2/2) cos(w.(q~ - k~)) ]     (trig)

so phi(x) = exp(W x~ - |x~|^2/2) / sqrt(F) turns softmax attention into
linear attention (`attention.kernelized.chunked`), O(N F H) instead of O(N^2 H).
Orthogonal rows (Gaussian blocks orthogonalised by QR, each row rescaled to
a chi(H)-distributed norm, Sec. 2.4 of the paper) lower the estimator's
variance. 'relu' features relu(W x) (the paper's generalised attention)
approximate no softmax but are often as good.

Stability without looking ahead. A query's own factors (its norm and its
largest feature) cancel between numerator and denominator, so query
features are exp(W q~ - max_f W q~), at most 1. A key's factor does not
cancel: it becomes the key's log-weight w_s = max_f (W k~)_f - |k~|^2/2
and `attention.kernelized.chunked` holds the prefix sums relative to the running
maximum of w over the keys seen so far. The reference JAX release instead
takes the maximum over the whole sequence (and seeds its feature redraw with
a sum over all queries): in causal mode its outputs depend on future tokens.
Here the projection comes from an explicit array or PRNG key only.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from jax import lax

from efficient_attention.attention import arguments
from efficient_attention.attention import masks
from efficient_attention.attention import scores
from efficient_attention.attention.types import (Any, ArrayLike, DTypeLike, Output,
                                               PrecisionLike)
from efficient_attention.attention import options as options_lib
from efficient_attention.attention.kernelized import chunked
from efficient_attention.attention import registry

KERNELS = ('softmax', 'trig', 'relu')
DEFAULT_SEED = 0

_UNSUPPORTED = ('random features have no attention matrix to bias, mask or '
                'window; use is_causal and key_value_seq_lengths')


@dataclasses.dataclass(frozen=True)
class PerformerOptions(options_lib.Options):
  """Options of `performer_attention` (the projection is an argument)."""

  kernel: str = 'softmax'  # one of KERNELS
  num_features: int = 256  # F, random features (rows of the projection)
  orthogonal: bool = True  # orthogonal blocks when drawing, else iid rows
  chunk_size: int = 64  # C, causal chunk length

  def __post_init__(self):
    where = 'PerformerOptions'
    options_lib.check_choice(where, 'kernel', self.kernel, KERNELS)
    options_lib.check_positive_int(where, 'num_features', self.num_features)
    options_lib.check_bool(where, 'orthogonal', self.orthogonal)
    options_lib.check_positive_int(where, 'chunk_size', self.chunk_size)


def draw_projection(rng: jax.Array, num_features: int, head_dim: int, *,
                    orthogonal: bool = PerformerOptions.orthogonal
                    ) -> jax.Array:
  """Random projection `[F, H]` float32 for FAVOR+ features.

  Args:
    rng: a PRNG key; a new key is a redraw.
    num_features: F rows.
    head_dim: H columns.
    orthogonal: rows orthogonal within each block of H (QR of a Gaussian
      block, signs fixed so that it is Haar), with norms drawn from chi(H)
      as Gaussian rows have. Otherwise iid N(0, 1) entries.
  """
  arguments.check_positive_int('num_features', num_features)
  arguments.check_positive_int('head_dim', head_dim)
  F, H = num_features, head_dim
  gauss_key, norm_key = jax.random.split(rng)
  if not orthogonal:
    return jax.random.normal(gauss_key, (F, H), jnp.float32)
  blocks = math.ceil(F / H)
  gauss_UHH = jax.random.normal(gauss_key, (blocks, H, H), jnp.float32)
  q, r = jnp.linalg.qr(gauss_UHH)
  signs = jnp.sign(jnp.diagonal(r, axis1=-2, axis2=-1))
  rows = jnp.swapaxes(q * signs[:, None, :], 1, 2).reshape(blocks * H, H)[:F]
  norms = jnp.linalg.norm(jax.random.normal(norm_key, (F, H)), axis=-1)
  return rows * norms[:, None]


def projection_for(projection, num_features: int, head_dim: int,
                   orthogonal: bool):
  """The projection to use: an `[F, H]` array as given, or drawn from a key.

  `None` draws from `jax.random.key(DEFAULT_SEED)`: the same features at
  every call, never a function of the data.
  """
  if projection is None:
    projection = jax.random.key(DEFAULT_SEED)
  projection = jnp.asarray(projection)
  is_key = jnp.issubdtype(projection.dtype, jax.dtypes.prng_key) or (
      projection.dtype == jnp.uint32 and projection.shape == (2,))
  if is_key:
    return draw_projection(projection, num_features, head_dim,
                           orthogonal=orthogonal)
  if projection.shape != (num_features, head_dim):
    raise ValueError(
        f'projection must be a PRNG key or an array [F, H] = '
        f'({num_features}, {head_dim}) (num_features={num_features}), got '
        f'shape {projection.shape}')
  return projection.astype(jnp.float32)


def features(kernel: str, projection_FH, x, scale: float, *, is_query: bool):
  """Features `[..., F']` of `x [..., H]` and, for keys, log-weights `[...]`.

  F' is F, or 2F for 'trig' (sin and cos). Log-weights are None for 'relu'
  and for queries (whose factors cancel).
  """
  x = x.astype(jnp.float32) * math.sqrt(scale)
  u = jnp.einsum('...H,FH->...F', x, projection_FH)
  if kernel == 'relu':
    return jax.nn.relu(u), None
  if kernel == 'trig':
    phi = jnp.concatenate([jnp.sin(u), jnp.cos(u)], axis=-1)
    return phi, None if is_query else 0.5 * jnp.sum(x * x, axis=-1)
  top = lax.stop_gradient(jnp.max(u, axis=-1))
  phi = jnp.exp(u - top[..., None])
  return phi, None if is_query else top - 0.5 * jnp.sum(x * x, axis=-1)


def _features(args, kernel, projection, num_features, orthogonal):
  """`(q, k) -> (phi_q, phi_k, w)` for `attention.kernelized.chunked`."""
  projection_FH = projection_for(projection, num_features, args.dims.H,
                                 orthogonal)

  def query_key_features(q, k):
    phi_q, _ = features(kernel, projection_FH, q, args.scale, is_query=True)
    return (phi_q,) + features(kernel, projection_FH, k, args.scale,
                               is_query=False)

  return query_key_features


@arguments.any_batch_rank
@options_lib.takes(PerformerOptions)
def performer_attention(query: ArrayLike, key: ArrayLike, value: ArrayLike,
                        bias: ArrayLike | None = None,
                        mask: ArrayLike | masks.Mask | None = None, *,
                        scale: float | None = None, is_causal: bool = False,
                        query_seq_lengths: ArrayLike | None = None,
                        key_value_seq_lengths: ArrayLike | None = None,
                        local_window_size: int | tuple[int, int] | None = None,
                        kernel: str, num_features: int,
                        projection: jax.Array | None = None, orthogonal: bool,
                        chunk_size: int, dropout_rng: jax.Array | None = None,
                        dropout_rate: float = 0.0,
                        broadcast_dropout: bool = True,
                        deterministic: bool = True,
                        dtype: DTypeLike | None = None,
                        precision: PrecisionLike = None, module: Any = None,
                        alibi_slopes: ArrayLike | None = None,
                        logits_soft_cap: float | None = None,
                        score: scores.Score | None = None,
                        return_residual: bool = False) -> Output:
  """FAVOR+ attention (Choromanski et al. 2021, arXiv 2009.14794).

  Args:
    query: `[B, T, N, H]`.
    key: `[B, S, K, H]`, K dividing N (GQA/MQA without repeating heads).
    value: `[B, S, K, H]`.
    bias, mask, local_window_size, alibi_slopes, logits_soft_cap: not
      supported; a value raises ValueError.
    scale: softmax logit scale; default `1 / sqrt(H)`.
    is_causal: query t sees keys s <= t (top-left aligned when T != S);
      prefix-safe: no output depends on a later token.
    query_seq_lengths, key_value_seq_lengths: optional int `[B]`; padded
      keys leave numerator and denominator, padded queries output zeros.
    kernel: 'softmax' (positive features), 'trig' (sin/cos features, 2F of
      them; unbiased but its denominator can cross zero), or 'relu'.
    num_features: random features F (rows of the projection).
    projection: an `[F, H]` array, a PRNG key to draw one from, or None for
      `jax.random.key(0)`. Redraw by passing a new key.
    orthogonal: orthogonal blocks (True) or iid rows, when drawing.
    chunk_size: causal chunk length C, as in `linear_attention`.
    dropout_rng, dropout_rate, broadcast_dropout, deterministic: Flax's
      `attention_fn` dropout keywords, as in `linear_attention`.
    dtype, precision, module: Flax's other `attention_fn` keywords, as in
      `linear_attention`.

  Returns:
    `[B, T, N, H]` in the query's dtype; features and sums are float32.

  Cost: bidirectional O(B N (T + S) F H); causal O(B N T (C + F) H) time,
  forward and backward memory O(B N T (H + F H / C)).
  """
  del dropout_rng, broadcast_dropout, precision
  arguments.refuse('performer_attention', _UNSUPPORTED, bias=bias, mask=mask,
                   local_window_size=local_window_size,
                   alibi_slopes=alibi_slopes, logits_soft_cap=logits_soft_cap,
                   score=score)
  args = arguments.parse(
      'performer_attention', query, key, value, scale=scale,
      local_window_size=None, query_seq_lengths=query_seq_lengths,
      key_value_seq_lengths=key_value_seq_lengths, dtype=dtype,
      dropout_rate=dropout_rate, deterministic=deterministic, module=module,
      return_residual=return_residual)
  if args.dims.T == 0 or args.dims.S == 0:  # as jax.nn: no division
    return arguments.empty_output(args)
  return chunked.attend(
      args, _features(args, kernel, projection, num_features, orthogonal),
      is_causal=is_causal, chunk_size=chunk_size, eps=0.0)


@options_lib.takes(PerformerOptions)
def init_state(batch_size: int, num_kv_heads: int, head_dim: int, *,
               kernel: str, num_features: int, max_length: int | None = None,
               dtype: DTypeLike | None = None) -> chunked.State:
  """Empty decoding state: `[B, K, F', H]` prefix sums, whatever the length.

  `max_length` and `dtype` (the decoding contract's) do not shape it: the
  sums are float32 and hold any number of tokens.
  """
  del max_length, dtype
  for name, value in [('batch_size', batch_size), ('num_kv_heads',
                                                   num_kv_heads),
                      ('head_dim', head_dim)]:
    arguments.check_positive_int(name, value)
  F = 2 * num_features if kernel == 'trig' else num_features
  return chunked.init_state(batch_size, num_kv_heads, F, head_dim,
                               weighted=kernel != 'relu')


@options_lib.takes(PerformerOptions)
def step(state: chunked.State, query: ArrayLike, key: ArrayLike,
         value: ArrayLike, *, num_new: ArrayLike | None = None,
         scale: float | None = None, kernel: str, num_features: int,
         projection: jax.Array | None = None, orthogonal: bool,
         chunk_size: int,
         local_window_size: int | tuple[int, int] | None = None,
         alibi_slopes: ArrayLike | None = None,
         logits_soft_cap: float | None = None,
         score: scores.Score | None = None) -> tuple[jax.Array, chunked.State]:
  """Causal FAVOR+ attention of L new tokens on top of `state`.

  Args:
    state: from `init_state` or a previous `step`.
    query: `[B, L, N, H]`; key, value: `[B, L, K, H]`.
    num_new: optional int `[B]`: real tokens among the L of each row.
    scale, kernel, num_features, projection, orthogonal, chunk_size: as in
      `performer_attention`; the same projection as the prefix's.

  Returns:
    `(out [B, L, N, H], new_state)`; memory independent of the prefix.
  """
  arguments.refuse('performer_attention', _UNSUPPORTED,
                   local_window_size=local_window_size,
                   alibi_slopes=alibi_slopes, logits_soft_cap=logits_soft_cap,
                   score=score)
  args = arguments.parse_step('performer_attention', query, key, value,
                              scale=scale)
  chunked.check_step(state, args, num_features * (
      2 if kernel == 'trig' else 1))
  return chunked.step(
      state, _features(args, kernel, projection, num_features, orthogonal),
      args, num_new=num_new, chunk_size=chunk_size, eps=0.0)


registry.register('performer', performer_attention, init_state=init_state,
                  step=step, options=PerformerOptions, exact=False,
                  refuses=arguments.LOGIT_OPTIONS)
