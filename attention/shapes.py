"""The one shape legend of this package, and the entry checks that use it.

Every function in `attention/` names array axes with these letters, the ones
of `jax.nn.dot_product_attention`'s documentation:

  B  batch                         K  key/value heads
  T  query length                  G  query heads per key/value head, N // K
  S  key/value length              H  head dimension
  N  query heads                   D  model dimension
  C  chunk (tile) length           R  tile rows: C query positions x G heads
  F  random features               U  hash buckets
  P  hash rounds (the "R" of LSH papers; R is taken by tile rows here)
  W  chunks of a sequence sorted by hash bucket (LSH windows)

Public inputs are `query [B, T, N, H]`, `key [B, S, K, H]`,
`value [B, S, K, H]`; outputs are `[B, T, N, H]`. Query head `n` reads
key/value head `n // G`, so a query reshaped to `[B, T, K, G, H]` lines up
with the key heads without repeating them.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Dims:
  """Sizes of one attention call, read off its inputs."""

  B: int
  T: int
  S: int
  N: int
  K: int
  H: int

  @property
  def G(self) -> int:
    return self.N // self.K


def check_qkv(query, key, value) -> Dims:
  """Checks `query [B, T, N, H]`, `key/value [B, S, K, H]` and returns sizes.

  Raises:
    ValueError (as `jax.nn.dot_product_attention` does): a wrong rank,
      batch, length or head dim, N not divisible by K, dtypes that differ
      or are not floating point; the message names the argument and what
      was expected.
  """
  for name, x, letters in [('query', query, 'B, T, N, H'),
                           ('key', key, 'B, S, K, H'),
                           ('value', value, 'B, S, K, H')]:
    if jnp.ndim(x) != 4:
      raise ValueError(f'{name} must be [{letters}] (rank 4), got shape '
                       f'{jnp.shape(x)}')
  B, T, N, H = query.shape
  _, S, K, _ = key.shape
  if key.shape[0] != B or key.shape[3] != H:
    raise ValueError(f'key must be [B, S, K, H] with B={B} and H={H} as in '
                     f'query {query.shape}, got {key.shape}')
  if value.shape != key.shape:
    raise ValueError(f'value must have the shape of key, [B, S, K, H] = '
                     f'{key.shape}, got {value.shape}')
  if N % K:
    raise ValueError(f'query heads N={N} must be a multiple of key/value '
                     f'heads K={K} (GQA/MQA)')
  # As jax.nn: one dtype for the three (pass dtype= to cast them); and a
  # floating one, where jax.nn would compute softmax weights in integers.
  for name, x in (('query', query), ('value', value)):
    if x.dtype != key.dtype:
      raise ValueError(f'{name} dtype must be the key\'s, {key.dtype}, got '
                       f'{x.dtype} (pass dtype= to cast query, key and '
                       'value)')
  if not jnp.issubdtype(key.dtype, jnp.floating):
    raise ValueError(f'query, key and value must be floating point, got '
                     f'{key.dtype}')
  return Dims(B=B, T=T, S=S, N=N, K=K, H=H)


def check_bnts(name: str, array, dims: Dims):
  """Expands `array` to rank 4 and checks it broadcasts to `[B, N, T, S]`.

  As in `jax.nn.dot_product_attention`, a bias or mask of rank below 4 gets
  leading axes of size 1. Each axis must be 1 or the full size. A numeric
  mask follows Flax's convention (`make_attention_mask` gives float 0/1):
  nonzero attends.

  Returns:
    The array with rank 4 (bool for `name='mask'`).
  """
  array = jnp.asarray(array)
  full = (dims.B, dims.N, dims.T, dims.S)
  message = (f'{name} must broadcast to [B, N, T, S] = {full} (each axis 1 '
             f'or full size), got shape {array.shape}')
  if array.ndim > 4:
    raise ValueError(message)
  array = array.reshape((1,) * (4 - array.ndim) + array.shape)
  if any(a not in (1, f) for a, f in zip(array.shape, full)):
    raise ValueError(message)
  if name == 'mask' and array.dtype != bool:
    # Flax's make_attention_mask gives float 0/1 masks: nonzero attends.
    array = array != 0
  return array


def concrete(x):
  """`x` as a NumPy array, or None while it is being traced."""
  try:
    return np.asarray(x)
  except (jax.errors.TracerArrayConversionError,
          jax.errors.ConcretizationTypeError):
    return None


def check_lengths(name: str, lengths, dims: Dims, bound: int,
                  bound_name: str):
  """Checks a `[B]` integer array of sequence lengths in `[0, bound]`.

  Values are checked when they are concrete (an eager call, a constant).
  Under `jit` they are not known while tracing and are used as given: a
  length past the sequence counts the whole sequence, a negative one none
  of it.
  """
  lengths = jnp.asarray(lengths)
  if lengths.shape != (dims.B,):
    raise ValueError(f'{name} must be [B] = ({dims.B},), got shape '
                     f'{lengths.shape}')
  if not jnp.issubdtype(lengths.dtype, jnp.integer):
    raise ValueError(f'{name} must be integer, got {lengths.dtype}')
  values = concrete(lengths)
  if values is not None:
    bad = (values < 0) | (values > bound)
    if bad.any():
      raise ValueError(f'{name} must lie in [0, {bound_name}={bound}], got '
                       f'{values.tolist()}')
  return lengths.astype(jnp.int32)
