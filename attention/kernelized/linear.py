"""Linear attention: softmax replaced by a feature map, O(N) in length.

Katharopoulos et al. 2020, "Transformers are RNNs: Fast Autoregressive
Transformers with Linear Attention" (arXiv 2006.16236). With a feature map
phi applied per head to queries and keys,

  out_t = phi(q_t) . sum_s phi(k_s) v_s^T / (phi(q_t) . sum_s phi(k_s) + eps),

summed over all keys (bidirectional) or over s <= t (causal). Three forms
compute the same thing (`attention.kernelized.chunked` holds the math):

  parallel:  one chunk of the whole length: the masked T x T matrix;
  chunked:   `chunk_size` tokens at a time, the quadratic form inside a
             chunk and prefix sums carried across chunks by a scan;
  recurrent: `step`, token by token (or a prompt at a time) on a state of
             `[K, H_features, H]` per row: O(1) memory per generated token.

Feature maps by name: 'elu_plus_one' (the paper's elu(x) + 1), 'relu',
'identity'; or any function `[..., H] -> [..., F]` of float32 arrays.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from efficient_attention.attention import arguments
from efficient_attention.attention import masks
from efficient_attention.attention import scores
from efficient_attention.attention.types import (Any, ArrayLike, DTypeLike, Output,
                                               PrecisionLike)
from efficient_attention.attention import options as options_lib
from efficient_attention.attention.kernelized import chunked
from efficient_attention.attention import registry

FEATURE_MAPS = {
    'elu_plus_one': lambda x: jax.nn.elu(x) + 1.0,
    'relu': jax.nn.relu,
    'identity': lambda x: x,
}

_UNSUPPORTED = ('has no attention matrix to bias, mask or window; use '
                'is_causal and key_value_seq_lengths')


def feature_function(feature_map) -> Callable:
  """The feature map called `feature_map`, or `feature_map` if callable."""
  if callable(feature_map):
    return feature_map
  if feature_map not in FEATURE_MAPS:
    raise ValueError(f'feature_map must be one of {sorted(FEATURE_MAPS)} or '
                     f'a function, got {feature_map!r}')
  return FEATURE_MAPS[feature_map]


@dataclasses.dataclass(frozen=True)
class LinearOptions(options_lib.Options):
  """Options of `linear_attention`."""

  feature_map: str | Callable = 'elu_plus_one'  # a FEATURE_MAPS name or fn
  eps: float = 1e-6  # added to the denominator
  chunk_size: int = 64  # C, causal chunk length (>= T: the parallel form)

  def __post_init__(self):
    if not callable(self.feature_map):
      options_lib.check_choice('LinearOptions', 'feature_map',
                               self.feature_map, sorted(FEATURE_MAPS))
    options_lib.check_positive_int('LinearOptions', 'chunk_size',
                                   self.chunk_size)
    if (isinstance(self.eps, bool) or not isinstance(self.eps, (int, float))
        or self.eps < 0):
      raise ValueError(f'LinearOptions: eps must be a non-negative number, '
                       f'got {self.eps!r}')


def _features(feature_map, scale):
  """`(q, k) -> (phi(scale q), phi(k), None)` in float32 (see kernelized)."""
  phi = feature_function(feature_map)
  return lambda q, k: (phi(q.astype(jnp.float32) * scale),
                       phi(k.astype(jnp.float32)), None)


@arguments.any_batch_rank
@options_lib.takes(LinearOptions)
def linear_attention(query: ArrayLike, key: ArrayLike, value: ArrayLike,
                     bias: ArrayLike | None = None,
                     mask: ArrayLike | masks.Mask | None = None, *,
                     scale: float | None = None, is_causal: bool = False,
                     query_seq_lengths: ArrayLike | None = None,
                     key_value_seq_lengths: ArrayLike | None = None,
                     local_window_size: int | tuple[int, int] | None = None,
                     feature_map: str | Callable, eps: float, chunk_size: int,
                     dropout_rng: jax.Array | None = None,
                     dropout_rate: float = 0.0, broadcast_dropout: bool = True,
                     deterministic: bool = True,
                     dtype: DTypeLike | None = None,
                     precision: PrecisionLike = None, module: Any = None,
                     alibi_slopes: ArrayLike | None = None,
                     logits_soft_cap: float | None = None,
                     score: scores.Score | None = None,
                     return_residual: bool = False) -> Output:
  """Linear attention (Katharopoulos et al. 2020, arXiv 2006.16236).

  Args:
    query: `[B, T, N, H]`.
    key: `[B, S, K, H]`, K dividing N (GQA/MQA without repeating heads).
    value: `[B, S, K, H]`.
    bias, mask, local_window_size, alibi_slopes, logits_soft_cap: not
      supported (there is no attention matrix); a value raises ValueError.
    scale: multiplies queries before the feature map; default 1 (the paper
      scales nothing; for 'relu' and 'identity' it cancels out).
    is_causal: query t sees keys s <= t (top-left aligned when T != S).
    query_seq_lengths: optional int `[B]`; later queries output zeros.
    key_value_seq_lengths: optional int `[B]`; later keys are left out of
      numerator and denominator.
    feature_map: 'elu_plus_one', 'relu', 'identity', or a function
      `[..., H] -> [..., F]` (float32 in and out).
    eps: added to the denominator. A query that sees no key outputs 0.
    chunk_size: causal chunk length C; a length that C does not divide is
      padded inside. `chunk_size >= T` is the parallel (quadratic) form.
    dropout_rng, dropout_rate, broadcast_dropout, deterministic: Flax's
      `attention_fn` dropout keywords; attention dropout raises ValueError.
    dtype, precision, module: Flax's other `attention_fn` keywords; `dtype`
      casts the inputs, sowing weights into `module` raises ValueError.

  Returns:
    `[B, T, N, H]` in the query's dtype; features and sums are float32.

  Cost: bidirectional O(B N (T + S) F H) time, O(B K F H) extra memory.
  Causal O(B N T (C + F) H) time; forward and backward memory
  O(B N T (H + F H / C)), linear in T.
  """
  del dropout_rng, broadcast_dropout, precision
  arguments.refuse('linear_attention', _UNSUPPORTED, bias=bias, mask=mask,
                   local_window_size=local_window_size,
                   alibi_slopes=alibi_slopes, logits_soft_cap=logits_soft_cap,
                   score=score)
  args = arguments.parse(
      'linear_attention', query, key, value, scale=1.0 if scale is None
      else scale, local_window_size=None, query_seq_lengths=query_seq_lengths,
      key_value_seq_lengths=key_value_seq_lengths, dtype=dtype,
      dropout_rate=dropout_rate, deterministic=deterministic, module=module,
      return_residual=return_residual)
  if args.dims.T == 0 or args.dims.S == 0:  # as jax.nn: no division
    return arguments.empty_output(args)
  return chunked.attend(args, _features(feature_map, args.scale),
                           is_causal=is_causal, chunk_size=chunk_size, eps=eps)


@options_lib.takes(LinearOptions)
def init_state(batch_size: int, num_kv_heads: int, head_dim: int, *,
               feature_map: str | Callable, max_length: int | None = None,
               dtype: DTypeLike | None = None) -> chunked.State:
  """Empty decoding state: `[B, K, F, H]` prefix sums, whatever the length.

  `max_length` and `dtype` (the decoding contract's) do not shape it: the
  sums are float32 and hold any number of tokens.
  """
  del max_length, dtype
  for name, value in [('batch_size', batch_size),
                      ('num_kv_heads', num_kv_heads), ('head_dim', head_dim)]:
    arguments.check_positive_int(name, value)
  F = jax.eval_shape(feature_function(feature_map),
                     jax.ShapeDtypeStruct((head_dim,), jnp.float32)).shape[-1]
  return chunked.init_state(batch_size, num_kv_heads, F, head_dim,
                               weighted=False)


@options_lib.takes(LinearOptions)
def step(state: chunked.State, query: ArrayLike, key: ArrayLike,
         value: ArrayLike, *, num_new: ArrayLike | None = None,
         scale: float | None = None, feature_map: str | Callable, eps: float,
         chunk_size: int,
         local_window_size: int | tuple[int, int] | None = None,
         alibi_slopes: ArrayLike | None = None,
         logits_soft_cap: float | None = None,
         score: scores.Score | None = None) -> tuple[jax.Array, chunked.State]:
  """Causal linear attention of L new tokens on top of `state`.

  Args:
    state: from `init_state` or a previous `step`.
    query: `[B, L, N, H]`; key, value: `[B, L, K, H]`.
    num_new: optional int `[B]`: real tokens among the L of each row.
    scale, feature_map, eps, chunk_size: as in `linear_attention`.

  Returns:
    `(out [B, L, N, H], new_state)`. Cost O(B N L (C + F) H), memory
    independent of how many tokens came before.
  """
  arguments.refuse('linear_attention', _UNSUPPORTED,
                   local_window_size=local_window_size,
                   alibi_slopes=alibi_slopes, logits_soft_cap=logits_soft_cap,
                   score=score)
  args = arguments.parse_step('linear_attention', query, key, value,
                              scale=1.0 if scale is None else scale)
  chunked.check_step(state, args)
  return chunked.step(state, _features(feature_map, args.scale), args,
                         num_new=num_new, chunk_size=chunk_size, eps=eps)


registry.register('linear', linear_attention, init_state=init_state,
                  step=step, options=LinearOptions, exact=False,
                  refuses=arguments.LOGIT_OPTIONS)
