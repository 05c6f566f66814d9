"""Score modifiers: elementwise functions of the logits and their positions.

A `Score` maps the float32 logits of a tile, with the integer arrays of its
batch rows, heads, query and key positions (all broadcasting together, as
masks take them), to new logits: `score(logits, batch, head, q, k)`
(FlexAttention's `score_mod`). Kernels apply it per tile after scaling,
before the bias and the mask, and never form a `[T, S]` array. Scores are
pytrees whose arrays (ALiBi slopes, a T5 bucket table, a user's
parameters) are leaves: the blockwise kernel's custom VJP returns their
exact gradients, so they can be learned. The modifiers::

  soft_cap(cap)                     cap * tanh(x / cap)       (Gemma 2)
  alibi(slopes)                     x - slopes[h] * |q - k|   (Press et al.
                                                   2022, arXiv 2108.12409)
  t5_buckets(table, ...)            x + table[bucket(k - q), h]  (Raffel et
                                                   al. 2020, 1910.10683)
  self_logit(value)                 x + value where q == k     (Reformer)
  custom(fn, params)                fn(x, batch, head, q, k, params)
  chain(s0, s1, ...)                s1(s0(x)), in order
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax.numpy as jnp

from efficient_attention.attention.masks.base import pytree


class Score:
  """An elementwise modifier of float32 logits, given their positions."""

  def __call__(self, logits, batch, head, q, k):
    raise NotImplementedError


@pytree('parts')
@dataclasses.dataclass(frozen=True, eq=False)
class Chain(Score):
  parts: tuple[Score, ...]

  def __call__(self, logits, batch, head, q, k):
    for part in self.parts:
      logits = part(logits, batch, head, q, k)
    return logits


def chain(*parts) -> Score | None:
  """The scores given (None entries left out), applied in order."""
  parts = tuple(p for p in parts if p is not None)
  for part in parts:
    if not isinstance(part, Score):
      raise ValueError(f'score modifiers must be attention.scores objects, '
                       f'got {type(part).__name__}')
  if not parts:
    return None
  return parts[0] if len(parts) == 1 else Chain(parts)


@pytree()
@dataclasses.dataclass(frozen=True, eq=False)
class SoftCap(Score):
  cap: float

  def __call__(self, logits, batch, head, q, k):
    return self.cap * jnp.tanh(logits / self.cap)


def soft_cap(cap: float) -> Score:
  """Logit soft-capping, `cap * tanh(x / cap)` (Gemma 2)."""
  if not isinstance(cap, (int, float)) or isinstance(cap, bool) or cap <= 0:
    raise ValueError(f'soft_cap must be a positive number, got {cap!r}')
  return SoftCap(float(cap))


@pytree('slopes')
@dataclasses.dataclass(frozen=True, eq=False)
class Alibi(Score):
  slopes: Any  # float32 [N]

  def __call__(self, logits, batch, head, q, k):
    distance = jnp.abs(q - k).astype(jnp.float32)
    return logits - self.slopes[head] * distance


def alibi(slopes) -> Score:
  """ALiBi: head h's logits fall by `slopes[h]` per position of distance
  (`attention.positional.alibi_slopes` gives the paper's slopes)."""
  slopes = jnp.asarray(slopes, jnp.float32)
  if slopes.ndim != 1:
    raise ValueError(f'alibi slopes must be [N], got shape {slopes.shape}')
  return Alibi(slopes)


def t5_bucket(relative, num_buckets: int, max_distance: int,
              bidirectional: bool):
  """T5's bucket of a relative position `k - q` (int array, same shape):
  exact for small distances, logarithmic up to `max_distance`."""
  bucket = jnp.zeros_like(relative)
  if bidirectional:
    num_buckets //= 2
    bucket = jnp.where(relative > 0, num_buckets, 0)
    distance = jnp.abs(relative)
  else:
    distance = jnp.maximum(-relative, 0)
  exact = num_buckets // 2
  far = exact + (jnp.log(jnp.maximum(distance, 1).astype(jnp.float32) / exact)
                 / math.log(max_distance / exact) *
                 (num_buckets - exact)).astype(relative.dtype)
  far = jnp.minimum(far, num_buckets - 1)
  return bucket + jnp.where(distance < exact, distance, far)


@pytree('table')
@dataclasses.dataclass(frozen=True, eq=False)
class T5Buckets(Score):
  table: Any  # float32 [num_buckets, N]
  max_distance: int
  bidirectional: bool

  def __call__(self, logits, batch, head, q, k):
    bucket = t5_bucket(k - q, self.table.shape[0], self.max_distance,
                       self.bidirectional)
    return logits + self.table[bucket, head]


def t5_buckets(table, *, max_distance: int = 128,
               bidirectional: bool = True) -> Score:
  """T5's relative position bias: `table [num_buckets, N]` (learned) added
  by the bucket of `k - q` (Raffel et al. 2020, arXiv 1910.10683)."""
  table = jnp.asarray(table, jnp.float32)
  if table.ndim != 2 or table.shape[0] < 4:
    raise ValueError(f't5_buckets table must be [num_buckets >= 4, N], got '
                     f'shape {table.shape}')
  return T5Buckets(table, int(max_distance), bool(bidirectional))


@pytree()
@dataclasses.dataclass(frozen=True, eq=False)
class SelfLogit(Score):
  value: float

  def __call__(self, logits, batch, head, q, k):
    return jnp.where(q == k, logits + self.value, logits)


def self_logit(value: float) -> Score:
  """Adds `value` to each query's logit for the key at its own position
  (the Reformer's shared-QK self-mask: a large negative number)."""
  return SelfLogit(float(value))


@pytree('params')
@dataclasses.dataclass(frozen=True, eq=False)
class Custom(Score):
  fn: Callable[..., Any]
  params: Any = None

  def __call__(self, logits, batch, head, q, k):
    return self.fn(logits, batch, head, q, k, self.params)


def custom(fn: Callable[..., Any], params=None) -> Score:
  """A user's modifier `fn(logits, batch, head, q, k, params) -> logits`:
  elementwise in the logits, float32. `params` (a pytree of float arrays)
  get exact gradients through the blockwise kernel; anything `fn` closes
  over is a constant."""
  if not callable(fn):
    raise ValueError(f'custom score needs a function, got {fn!r}')
  return Custom(fn, params)
