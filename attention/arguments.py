"""Parsing the arguments every mechanism shares, in one place.

Each public attention function calls `parse` first: it applies Flax's
`dtype`, refuses the Flax settings no kernel here honours, checks shapes
(`attention.shapes`) and normalises the scale, window and lengths.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp

from efficient_attention.attention import options as options_lib
from efficient_attention.attention import scores
from efficient_attention.attention import shapes


@dataclasses.dataclass(frozen=True)
class Arguments:
  """Checked inputs of one attention call."""

  query: Any  # [B, T, N, H]
  key: Any  # [B, S, K, H]
  value: Any  # [B, S, K, H]
  dims: shapes.Dims
  scale: float
  window: tuple[int, int] | None  # (left, right)
  q_len: Any  # int32 [B] or None
  kv_len: Any  # int32 [B] or None
  alibi_slopes: Any = None  # float32 [N] or None
  logits_soft_cap: float | None = None


# The mechanisms with a softmax over all keys, hence a log-sum-exp to return.
WITH_RESIDUAL = ('dot_product_attention', 'blockwise_attention',
                 'sparse_transformer_attention', 'longformer_attention',
                 'bigbird_attention')
# The mechanisms that form attention weights, hence can sow them.
SOWING = ('dot_product_attention',)


def parse(name, query, key, value, *, scale, local_window_size,
          query_seq_lengths, key_value_seq_lengths, dtype, dropout_rate,
          deterministic, module, alibi_slopes=None,
          logits_soft_cap=None, return_residual=False) -> Arguments:
  """Checks and normalises the shared arguments of mechanism `name`."""
  check_flax_options(name, dropout_rate=dropout_rate,
                     deterministic=deterministic,
                     module=None if name in SOWING else module)
  if return_residual and name not in WITH_RESIDUAL:
    raise ValueError(
        f'{name} has no log-sum-exp over the keys to return '
        '(return_residual=True): it is defined for softmax attention over '
        'all keys, which dot_product_attention and blockwise_attention '
        'compute')
  if dtype is not None:
    query, key, value = (jnp.asarray(x, dtype) for x in (query, key, value))
  dims = shapes.check_qkv(query, key, value)
  q_len = kv_len = None
  if query_seq_lengths is not None:
    q_len = shapes.check_lengths('query_seq_lengths', query_seq_lengths,
                                 dims, dims.T, 'T')
  if key_value_seq_lengths is not None:
    kv_len = shapes.check_lengths('key_value_seq_lengths',
                                  key_value_seq_lengths, dims, dims.S, 'S')
  query = zero_past(query, q_len)
  key, value = zero_past(key, kv_len), zero_past(value, kv_len)
  if alibi_slopes is not None:
    alibi_slopes = jnp.asarray(alibi_slopes, jnp.float32)
    if alibi_slopes.shape != (dims.N,):
      raise ValueError(f'alibi_slopes must be [N] = ({dims.N},), got shape '
                       f'{alibi_slopes.shape}')
  if logits_soft_cap is not None and not (
      isinstance(logits_soft_cap, (int, float)) and logits_soft_cap > 0):
    raise ValueError('logits_soft_cap must be a positive number or None, got '
                     f'{logits_soft_cap!r}')
  return Arguments(query=query, key=key, value=value, dims=dims,
                   scale=default_scale(scale, dims.H),
                   window=window_pair(local_window_size), q_len=q_len,
                   kv_len=kv_len, alibi_slopes=alibi_slopes,
                   logits_soft_cap=logits_soft_cap and float(logits_soft_cap))


def empty_output(args: Arguments, return_residual: bool = False):
  """The output when T = 0 (empty, as in `jax.nn`) or S = 0 (every query
  sees no key: zeros, the rule for such rows; log-sum-exp -inf)."""
  d = args.dims
  out = jnp.zeros((d.B, d.T, d.N, d.H), args.query.dtype)
  if return_residual:
    return out, jnp.full((d.B, d.T, d.N), -jnp.inf, args.query.dtype)
  return out


def residual(lse_BTN, dtype):
  """The `return_residual` array, as `jax.nn` returns it: the log-sum-exp
  of each query's scaled, masked logits `[B, T, N]`, in the output dtype,
  without gradient; -inf for a query that sees no key."""
  return jax.lax.stop_gradient(lse_BTN).astype(dtype)


def zero_past(x_BLKH, lengths):
  """`x [B, L, heads, H]` with the positions past `lengths [B]` set to zero.

  Padding may hold anything, NaN included; a masked logit drops out of the
  softmax, but a zero weight times a NaN value is still NaN. Zeroing the
  padded rows once here (O(B L heads H), no gradient into them) is what
  keeps every mechanism's outputs and gradients free of them.
  """
  if lengths is None:
    return x_BLKH
  keep_BL = jnp.arange(x_BLKH.shape[1])[None, :] < lengths[:, None]
  return jnp.where(keep_BL[:, :, None, None], x_BLKH, 0)


def score(args: Arguments, user_score=None):
  """One score modifier from `logits_soft_cap`, `alibi_slopes` (aliases,
  applied first, in that order) and a user's `score`; None if none."""
  return scores.chain(
      None if args.logits_soft_cap is None else scores.soft_cap(
          args.logits_soft_cap),
      None if args.alibi_slopes is None else scores.alibi(args.alibi_slopes),
      user_score)


def query_offset(offset, dims: shapes.Dims):
  """`query_offset` checked: None, a Python int, or int32 `[B]`."""
  if offset is None or (isinstance(offset, int) and not isinstance(
      offset, bool)):
    return offset
  offset = jnp.asarray(offset)
  if offset.shape not in ((), (dims.B,)) or not jnp.issubdtype(
      offset.dtype, jnp.integer):
    raise ValueError(f'query_offset must be an int or int [B] = ({dims.B},),'
                     f' got {offset.dtype} {offset.shape}')
  return offset.astype(jnp.int32)


def parse_self(name, query, key, value, **options) -> Arguments:
  """`parse` for mechanisms that attend within one sequence (S = T)."""
  args = parse(name, query, key, value, local_window_size=None, **options)
  if args.dims.S != args.dims.T:
    raise ValueError(f'{name} is self-attention: key length S={args.dims.S} '
                     f'must equal query length T={args.dims.T}')
  return args


def parse_step(name, query, key, value, *, scale) -> Arguments:
  """`parse` for a decoding step: no lengths, masks, dtype or dropout."""
  return parse(name, query, key, value, scale=scale, local_window_size=None,
               query_seq_lengths=None, key_value_seq_lengths=None, dtype=None,
               dropout_rate=0.0, deterministic=True, module=None)


def window_pair(local_window_size) -> tuple[int, int] | None:
  """Normalises `local_window_size` (int or (left, right)) to a pair."""
  if local_window_size is None:
    return None
  pair = local_window_size
  if isinstance(pair, int):
    pair = (pair, pair)
  if (not isinstance(pair, (tuple, list)) or len(pair) != 2 or
      not all(isinstance(w, int) and w >= 0 for w in pair)):
    raise ValueError(
        'local_window_size must be a non-negative int or a pair (left, right) '
        f'of them, got {local_window_size!r}')
  return tuple(pair)


def default_scale(scale, head_dim: int) -> float:
  """`scale`, or `1 / sqrt(head_dim)` when None; a Python number."""
  if scale is None:
    return 1.0 / math.sqrt(head_dim)
  if not isinstance(scale, (int, float)):
    raise ValueError(f'scale must be a Python number, got {type(scale)}')
  return float(scale)


def check_positive_int(name: str, value):
  """Raises ValueError unless `value` is a positive int (bools are not)."""
  options_lib.check_positive_int(None, name, value)


# The shared options that only a mechanism forming attention logits honours.
LOGIT_OPTIONS = ('bias', 'mask', 'local_window_size', 'alibi_slopes',
                 'logits_soft_cap', 'score')


def refuse(mechanism: str, why: str, **options):
  """Raises ValueError naming the first option that is set (not None).

  For arguments a mechanism cannot honour: they are never silently dropped.
  """
  for name, value in options.items():
    if value is not None:
      raise ValueError(f'{mechanism} does not support {name} ({why}); got '
                       f'{name}={_short(value)}')


def _short(value):
  shape = getattr(value, 'shape', None)
  return f'an array of shape {shape}' if shape is not None else repr(value)


def check_flax_options(name, *, dropout_rate, deterministic, module):
  """Rejects the Flax `attention_fn` settings a fused kernel cannot honour.

  `dropout_rng`, `broadcast_dropout`, `dtype` and `precision` are accepted by
  the callers; a non-zero attention dropout rate while not deterministic, and
  a `module` to sow attention weights into (only `dot_product_attention`
  forms them; `parse` passes None for it), raise.
  """
  if dropout_rate and not deterministic:
    raise ValueError(
        f'{name} does not implement attention dropout: got dropout_rate='
        f'{dropout_rate} with deterministic=False. Set dropout_rate=0.0 (or '
        'deterministic=True); put dropout on the residual stream instead.')
  if module is not None:
    raise ValueError(
        f'{name} cannot sow attention weights into module={module!r}: set '
        'the Flax layer\'s sow_weights=False.')


def any_batch_rank(fn):
  """Lets an attention function take the ranks `jax.nn` and Flax pass.

  `query [T, N, H]` (unbatched, as `jax.nn.dot_product_attention` allows)
  or `[*batch, T, N, H]` (any number of leading batch axes, as Flax's
  layers pass) with keys and values of the same rank: the batch axes are
  flattened into one B for the call and restored on the output. A bias or
  boolean mask of more than 4 axes broadcasts over the batch axes and is
  flattened with them; sequence lengths of shape `batch` likewise. Rank 4
  goes straight through.
  """

  @functools.wraps(fn)
  def wrapper(query, key, value, bias=None, mask=None, *args, **kwargs):
    rank = jnp.ndim(query)
    if rank == 4 or rank < 3:  # rank errors are the checks' to raise
      return fn(query, key, value, bias, mask, *args, **kwargs)
    for name, x in (('key', key), ('value', value)):
      if jnp.ndim(x) != rank:
        raise ValueError(f'{name} must have the rank of query ({rank}: '
                         f'[*batch, S, K, H]), got shape {jnp.shape(x)}')
    batch = tuple(query.shape[:-3])
    size = math.prod(batch)
    flat = lambda x: jnp.reshape(x, (size,) + tuple(x.shape[-3:]))

    def flat_bnts(x):
      if x is None or rank == 3 or not hasattr(x, 'ndim') or x.ndim < 3:
        return x  # broadcasts as a rank-4 argument does (or a Mask object)
      x = jnp.broadcast_to(x, batch + tuple(x.shape[-3:]))
      return jnp.reshape(x, (size,) + tuple(x.shape[-3:]))

    for name in ('query_seq_lengths', 'key_value_seq_lengths'):
      if kwargs.get(name) is not None:
        kwargs[name] = jnp.reshape(jnp.asarray(kwargs[name]), (size,))
    if kwargs.get('module') is not None:  # weights sown with batch axes
      kwargs['module'] = _BatchedModule(kwargs['module'], batch)
    out = fn(flat(query), flat(key), flat(value), flat_bnts(bias),
             flat_bnts(mask), *args, **kwargs)
    unflat = lambda x: jnp.reshape(x, batch + tuple(x.shape[1:]))
    if isinstance(out, tuple):  # (output, residual)
      return tuple(unflat(x) for x in out)
    return unflat(out)

  return wrapper


class _BatchedModule:
  """A Flax module seen through `any_batch_rank`: what is sown gets the
  caller's batch axes back (`[*batch, N, T, S]`, or `[N, T, S]`)."""

  def __init__(self, module, batch):
    self.module, self.batch = module, batch

  def sow(self, collection, name, value, *args, **kwargs):
    value = jnp.reshape(value, self.batch + tuple(value.shape[1:]))
    return self.module.sow(collection, name, value, *args, **kwargs)
