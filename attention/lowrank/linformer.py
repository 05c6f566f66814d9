"""Linformer: keys and values projected along the sequence to k rows.

Wang, Li, Khabsa, Fang & Ma 2020, "Linformer: Self-Attention with Linear
Complexity" (arXiv 2006.04768). Attention matrices are close to low rank,
so projecting the S keys and values to k rows with `E, F [k, S]` loses
little:

  out = softmax(scale * Q (E K)^T) (F V)       Q [T, H], E K, F V [k, H]

O(T k) logits instead of O(T S). E and F are learned (the model layer owns
them, `[k, n]` for inputs up to n = `sequence_length`) or, without one, a
Gaussian draw with variance 1 / k (the paper's Johnson-Lindenstrauss
construction). Options share them as the paper's Section 4 does:
`share_key_value` makes F = E (key-value sharing); `share_heads` (default)
gives one pair to every key/value head (headwise sharing), else each head
has its own (`[2, K, k, n]`); `share_layers` makes a model's layers use one
projection (layerwise sharing, with `share_key_value`: one matrix in the
whole model). Padded keys and values are zeroed before projecting,
so they add nothing to the projected rows. Inputs shorter than n use the
first S columns (the same as zero-padding the input to n).

A projected row mixes every position, so Linformer cannot be causal:
`is_causal=True` raises, and a decoder refuses it. Masks, biases, windows
and position scores have no meaning over projected keys and raise too;
`logits_soft_cap` applies to the projected logits.

Shapes: `query [B, T, N, H]`, `key/value [B, S, K, H]`, `projection
[2, k, n]` (E, F) or `[1, k, n]` with `share_key_value`; `[2 or 1, K, k,
n]` without `share_heads`. Cost: O(B K S k H)
to project, O(B N T k H) to attend; memory O(B N T k).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from efficient_attention.attention import arguments
from efficient_attention.attention import masks
from efficient_attention.attention import options as options_lib
from efficient_attention.attention import registry
from efficient_attention.attention import scores
from efficient_attention.attention.exact import blockwise
from efficient_attention.attention.types import (Any, ArrayLike, DTypeLike,
                                                 Output, PrecisionLike)

NOT_CAUSAL = ('Linformer cannot be causal: its projection along the sequence '
              'mixes every position into each projected key and value, so a '
              'query would see later tokens (Wang et al. 2020, arXiv '
              '2006.04768); use it in an encoder, or a causal mechanism in a '
              'decoder')
_UNSUPPORTED = ('projected keys mix positions, so there is no key position '
                'to bias, mask, window or score; use key_value_seq_lengths '
                'for padding')


@dataclasses.dataclass(frozen=True)
class LinformerOptions(options_lib.Options):
  """Options of `linformer_attention` (the projection is an argument)."""

  projected_length: int = 128  # k, rows the keys and values are projected to
  sequence_length: int = 4096  # n, the longest input a layer's learned
                               # projections [k, n] cover
  share_key_value: bool = False  # F = E (the paper's key-value sharing)
  share_heads: bool = True  # one E, F for every key/value head (headwise
                            # sharing); False: one per head
  share_layers: bool = False  # a model's layers share one projection
                              # (layerwise sharing; the model ties them)
  seed: int = 0  # the Gaussian draw used when no projection is given

  def __post_init__(self):
    where = 'LinformerOptions'
    options_lib.check_positive_int(where, 'projected_length',
                                   self.projected_length)
    options_lib.check_positive_int(where, 'sequence_length',
                                   self.sequence_length)
    for name in ('share_key_value', 'share_heads', 'share_layers'):
      options_lib.check_bool(where, name, getattr(self, name))
    if isinstance(self.seed, bool) or not isinstance(self.seed, int):
      raise ValueError(f'{where}: seed must be an int, got {self.seed!r}')


def projection_shape(projected_length: int, length: int, *,
                     share_key_value: bool = False,
                     num_kv_heads: int | None = None) -> tuple[int, ...]:
  """`[2, k, n]` (`[1, k, n]` with `share_key_value`); with `num_kv_heads`
  K (no headwise sharing), `[2 or 1, K, k, n]`."""
  count = 1 if share_key_value else 2
  heads = () if num_kv_heads is None else (num_kv_heads,)
  return (count, *heads, projected_length, length)


def draw_projection(rng: jax.Array, projected_length: int, length: int, *,
                    share_key_value: bool = False,
                    num_kv_heads: int | None = None,
                    dtype: DTypeLike = jnp.float32) -> jax.Array:
  """E and F, shaped as `projection_shape` says, Gaussian with variance
  1 / k: the paper's construction, and a layer's initial value."""
  shape = projection_shape(projected_length, length,
                           share_key_value=share_key_value,
                           num_kv_heads=num_kv_heads)
  return (jax.random.normal(rng, shape, dtype) /
          jnp.sqrt(jnp.asarray(projected_length, dtype)))


def _projections(projection, S, K, *, projected_length, share_key_value,
                 share_heads, seed):
  """(E, F), each `[k, S]` (`[K, k, S]` without headwise sharing), from
  the argument or the default draw."""
  heads = None if share_heads else K
  if projection is None:
    projection = draw_projection(jax.random.key(seed), projected_length, S,
                                 share_key_value=share_key_value,
                                 num_kv_heads=heads)
  projection = jnp.asarray(projection)
  want = projection_shape(projected_length, S,
                          share_key_value=share_key_value, num_kv_heads=heads)
  if (projection.shape[:-1] != want[:-1] or projection.shape[-1] < S):
    named = '[count, k, n]' if share_heads else '[count, K, k, n]'
    raise ValueError(
        f'projection must be {named} = {list(want[:-1]) + ["n"]} with n >= '
        f'S={S} (share_key_value={share_key_value}, share_heads='
        f'{share_heads}), got shape {projection.shape}')
  projection = projection[..., :S]
  return projection[0], projection[-1]


@arguments.any_batch_rank
@options_lib.takes(LinformerOptions)
def linformer_attention(query: ArrayLike, key: ArrayLike, value: ArrayLike,
                        bias: ArrayLike | None = None,
                        mask: ArrayLike | masks.Mask | None = None, *,
                        scale: float | None = None, is_causal: bool = False,
                        query_seq_lengths: ArrayLike | None = None,
                        key_value_seq_lengths: ArrayLike | None = None,
                        local_window_size: int | tuple[int, int] | None = None,
                        projected_length: int, sequence_length: int,
                        share_key_value: bool, share_heads: bool,
                        share_layers: bool, seed: int,
                        projection: ArrayLike | None = None,
                        dropout_rng: jax.Array | None = None,
                        dropout_rate: float = 0.0,
                        broadcast_dropout: bool = True,
                        deterministic: bool = True,
                        dtype: DTypeLike | None = None,
                        precision: PrecisionLike = None, module: Any = None,
                        alibi_slopes: ArrayLike | None = None,
                        logits_soft_cap: float | None = None,
                        score: scores.Score | None = None,
                        return_residual: bool = False) -> Output:
  """Linformer attention (Wang et al. 2020, arXiv 2006.04768).

  Args:
    query: `[B, T, N, H]`.
    key: `[B, S, K, H]`, K dividing N.
    value: `[B, S, K, H]`.
    bias, mask, local_window_size, alibi_slopes, score: not supported (the
      projected keys have no positions); a value raises ValueError.
    scale: logit scale; default `1 / sqrt(H)`.
    is_causal: must be False: Linformer cannot be causal (ValueError).
    query_seq_lengths, key_value_seq_lengths: optional int `[B]`; padded
      keys and values are zeroed before the projection, padded queries
      output zeros.
    projected_length, sequence_length, share_key_value, share_heads, share_layers, seed:
      the options (`LinformerOptions`); share_layers is the model's to
      honour.
    projection: optional `[2, k, n]` (E, F), or `[1, k, n]` with
      `share_key_value`, n >= S; `[2 or 1, K, k, n]` without `share_heads`:
      a layer's learned projections. Default: a Gaussian draw from
      `jax.random.key(seed)`.
    logits_soft_cap: optional; caps the projected logits.
    dropout_rng, dropout_rate, broadcast_dropout, deterministic: Flax's
      `attention_fn` keywords, as in `blockwise_attention`.
    dtype, precision, module: as in `blockwise_attention`.

  Returns:
    `[B, T, N, H]` in the dtype of `query`.

  Cost: O(B (K S + N T) k H) time, O(B N T k) memory: linear in T and S.
  """
  del dropout_rng, broadcast_dropout, sequence_length, share_layers
  if is_causal:
    raise ValueError(f'is_causal=True: {NOT_CAUSAL}')
  arguments.refuse('linformer_attention', _UNSUPPORTED, bias=bias, mask=mask,
                   local_window_size=local_window_size,
                   alibi_slopes=alibi_slopes, score=score)
  args = arguments.parse(
      'linformer_attention', query, key, value, scale=scale,
      local_window_size=None, query_seq_lengths=query_seq_lengths,
      key_value_seq_lengths=key_value_seq_lengths, dtype=dtype,
      dropout_rate=dropout_rate, deterministic=deterministic, module=module,
      return_residual=return_residual, logits_soft_cap=logits_soft_cap)
  if args.dims.T == 0 or args.dims.S == 0:
    return arguments.empty_output(args)
  E, F = _projections(projection, args.dims.S, args.dims.K,
                      projected_length=projected_length,
                      share_key_value=share_key_value,
                      share_heads=share_heads, seed=seed)
  # Sums over the whole sequence: in float32 whatever the input dtype.
  spec = 'RS,BSKH->BRKH' if share_heads else 'KRS,BSKH->BRKH'
  project = lambda P, x_BSKH: jnp.einsum(
      spec, P.astype(jnp.float32), x_BSKH.astype(jnp.float32),
      precision=precision).astype(x_BSKH.dtype)
  # args.key and args.value are zero past key_value_seq_lengths already.
  # Exact attention over the k projected rows, in tiles (O(T) memory).
  return blockwise.blockwise_attention(
      args.query, project(E, args.key), project(F, args.value),
      scale=args.scale, query_seq_lengths=args.q_len,
      logits_soft_cap=args.logits_soft_cap, precision=precision)


registry.register('linformer', linformer_attention, options=LinformerOptions,
                  exact=False, refuses=('bias', 'mask', 'local_window_size',
                                        'alibi_slopes', 'score'),
                  not_causal=NOT_CAUSAL)
