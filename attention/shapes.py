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

import chex
import jax.numpy as jnp


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
    AssertionError (from chex): a wrong rank, batch, length or head dim, or
      N not divisible by K; the message names the argument and the shape
      that was expected.
  """
  chex.assert_rank(query, 4, custom_message='query must be [B, T, N, H]')
  chex.assert_rank(key, 4, custom_message='key must be [B, S, K, H]')
  chex.assert_rank(value, 4, custom_message='value must be [B, S, K, H]')
  B, T, N, H = query.shape
  _, S, K, _ = key.shape
  expected_kv = (B, S, K, H)
  chex.assert_shape(
      key, (B, S, K, H),
      custom_message=f'key must be [B, S, K, H] with B={B} and H={H} as in '
      f'query {query.shape}')
  chex.assert_shape(
      value, expected_kv,
      custom_message=f'value must have the shape of key, [B, S, K, H] = '
      f'{expected_kv}')
  chex.assert_is_divisible(
      N, K, custom_message=f'query heads N={N} must be a multiple of key/value '
      f'heads K={K} (GQA/MQA)')
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
  chex.assert_rank(array, {0, 1, 2, 3, 4}, custom_message=message)
  array = array.reshape((1,) * (4 - array.ndim) + array.shape)
  chex.assert_shape(
      array, tuple(1 if a == 1 else f for a, f in zip(array.shape, full)),
      custom_message=message)
  if name == 'mask' and array.dtype != bool:
    # Flax's make_attention_mask gives float 0/1 masks: nonzero attends.
    array = array != 0
  return array


def check_lengths(name: str, lengths, dims: Dims):
  """Checks a `[B]` integer array of sequence lengths."""
  lengths = jnp.asarray(lengths)
  chex.assert_shape(lengths, (dims.B,),
                    custom_message=f'{name} must be [B] = ({dims.B},)')
  chex.assert_type(lengths, int, custom_message=f'{name} must be integer')
  return lengths.astype(jnp.int32)
