"""The `Mask` protocol, tile grids, composition and block-layout pictures.

See `attention.masks` for what a mask is and which masks there are.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Grid:
  """Tiles of a `[T, S]` problem: query chunks of `Cq`, key chunks of `Ck`.

  Query positions start at `q_offset` (decoding: the tokens already
  cached), one for all rows or one per row (`[B]`: the chunk ranges then
  span every row's, a superset); key positions at 0.
  """

  T: int
  S: int
  Cq: int
  Ck: int
  q_offset: Any = 0  # int, a traced scalar, or int [B]

  @property
  def num_q(self) -> int:
    return -(-self.T // self.Cq)

  @property
  def num_k(self) -> int:
    return -(-self.S // self.Ck)

  @property
  def shape(self) -> tuple[int, int]:
    return self.num_q, self.num_k

  def q_range(self):
    """First and last query position of each chunk, `[num_q, 1]` each."""
    first = np.arange(self.num_q)[:, None] * self.Cq
    last = np.minimum(first + self.Cq, self.T) - 1
    offset = self.q_offset
    if np.ndim(offset) == 1:
      return first + offset.min(), last + offset.max()
    return first + offset, last + offset

  def k_range(self):
    """First and last key position of each chunk, `[1, num_k]` each."""
    first = np.arange(self.num_k)[None, :] * self.Ck
    return first, np.minimum(first + self.Ck, self.S) - 1


def xp_of(*arrays):
  """NumPy when every array is concrete NumPy (or a Python int), else jnp."""
  return np if all(isinstance(a, (np.ndarray, np.generic, int, bool))
                   for a in arrays) else jnp


def full(grid: Grid, some, every):
  """`(some, every)` broadcast to `[grid.num_q, grid.num_k]` (or with a
  leading batch axis where they have one)."""
  xp = xp_of(some, every)
  shape = lambda a: (a.shape[:-2] if np.ndim(a) == 3 else ()) + grid.shape
  return (xp.broadcast_to(some, shape(some)),
          xp.broadcast_to(every, shape(every)))


def pytree(*data_fields):
  """Registers a mask dataclass as a pytree: `data_fields` are leaves (its
  arrays, traced under `jit`), the other fields static."""
  def register(cls):
    fields = [f.name for f in dataclasses.fields(cls)]
    jax.tree_util.register_dataclass(
        cls, data_fields=list(data_fields),
        meta_fields=[f for f in fields if f not in data_fields])
    return cls
  return register


class Mask:
  """A boolean pattern over (batch, head, query position, key position).

  Masks are pytrees: the arrays they hold (segment ids, lengths) are leaves,
  so they pass through `jit` and custom VJPs as arguments; their static
  settings are the tree's structure.
  """

  per_example = False  # depends on the batch row (it holds data)
  per_head = False  # differs between heads
  count = 1  # patterns, for a per-head mask

  @property
  def static(self) -> bool:
    """Whether tiles are summarised on the host (positions alone)."""
    return not self.per_example

  @property
  def batch_size(self) -> int | None:
    """Rows of the data the mask holds (None when not per example)."""
    return None

  def bind(self, T: int, S: int) -> 'Mask':
    """This mask for a `[T, S]` problem (a mask drawn for a length, such as
    `random_blocks`, draws here); most masks are the same at any length."""
    del T, S
    return self

  def __call__(self, batch, head, q, k):
    """Visibility, broadcast from the shapes of the int arrays given."""
    raise NotImplementedError

  def summary(self, grid: Grid):
    """`(some, every)`, bool `[B|1?, num_q, num_k]`: may a tile hold a
    visible pair (never False where one does), are all its pairs visible
    (never True where one is not)."""
    raise NotImplementedError

  def __and__(self, other: 'Mask') -> 'Mask':
    return Combined('and', (self, _checked(other)))

  def __or__(self, other: 'Mask') -> 'Mask':
    return Combined('or', (self, _checked(other)))

  def __invert__(self) -> 'Mask':
    return Not(self)

  def dense(self, T: int, S: int, *, num_heads: int | None = None):
    """The mask as a NumPy bool array `[B?, N?, T, S]`, with the B axis
    only for a per-example mask and N only for a per-head one (`num_heads`,
    default its number of patterns). For tests and pictures: O(T S)."""
    mask = self.bind(T, S)
    B, N = mask.batch_size or 1, num_heads or mask.count
    out = np.asarray(jnp.broadcast_to(evaluate(mask, N, T, S), (B, N, T, S)))
    out = out if mask.per_head else out[:, 0]
    return out if mask.per_example else out[0]

  def layout(self, T: int, S: int, Cq: int, Ck: int | None = None):
    """Tiles a kernel visits: int8 `[B?, num_q, num_k]`: 0 skipped, 1 partly
    visible (masked elementwise), 2 fully visible (no elementwise mask)."""
    some, every = self.bind(T, S).summary(Grid(T, S, Cq, Ck or Cq))
    some, every = np.asarray(some), np.asarray(every)
    out = np.where(every, 2, np.where(some, 1, 0)).astype(np.int8)
    return out[0] if out.ndim == 3 and not self.per_example else out


def _checked(other):
  if not isinstance(other, Mask):
    raise TypeError(f'masks combine with masks, got {type(other).__name__}')
  return other


def render(layout) -> str:
  """A block layout (`Mask.layout`) as text: '#' full, '+' partial, '.'
  skipped; a per-example layout row by row, a blank line apart."""
  layout = np.asarray(layout)
  if layout.ndim == 3:
    return '\n\n'.join(render(rows) for rows in layout)
  return '\n'.join(''.join('.+#'[v] for v in row) for row in layout)


def _with_batch(array):
  return array if np.ndim(array) == 3 else array[None]


@pytree('parts')
@dataclasses.dataclass(frozen=True, eq=False)
class Combined(Mask):
  """`a & b` or `a | b` of masks."""

  op: str  # 'and' or 'or'
  parts: tuple[Mask, ...]

  @property
  def per_example(self):
    return any(p.per_example for p in self.parts)

  @property
  def per_head(self):
    return any(p.per_head for p in self.parts)

  @property
  def count(self):
    return int(np.lcm.reduce([p.count for p in self.parts]))

  @property
  def batch_size(self):
    sizes = {p.batch_size for p in self.parts} - {None}
    if len(sizes) > 1:
      raise ValueError(f'combined masks hold data of different batch sizes '
                       f'{sorted(sizes)}')
    return sizes.pop() if sizes else None

  def bind(self, T, S):
    return Combined(self.op, tuple(p.bind(T, S) for p in self.parts))

  def __call__(self, batch, head, q, k):
    values = [p(batch, head, q, k) for p in self.parts]
    out = values[0]
    for value in values[1:]:
      out = out & value if self.op == 'and' else out | value
    return out

  def summary(self, grid):
    # The 'and' of two "some" flags may keep an empty tile (visited and
    # masked: correct, only not free); "every" flags combine exactly for
    # 'and' and conservatively for 'or'.
    parts = [tuple(map(_with_batch, p.summary(grid))) for p in self.parts]
    xp = xp_of(*[a for part in parts for a in part])
    pick = xp.logical_and if self.op == 'and' else xp.logical_or
    some, every = parts[0]
    for s, e in parts[1:]:
      some, every = pick(some, s), pick(every, e)
    return some, every


class Wrapper(Mask):
  """A mask made from one other, `self.inner`, whose data, heads and batch
  it shares."""

  inner: Mask

  @property
  def per_example(self):
    return self.inner.per_example

  @property
  def per_head(self):
    return self.inner.per_head

  @property
  def count(self):
    return self.inner.count

  @property
  def batch_size(self):
    return self.inner.batch_size


@pytree('inner')
@dataclasses.dataclass(frozen=True, eq=False)
class Not(Wrapper):
  """`~mask`: what `inner` hides. Its summary is the inner one's turned
  over (no pair visible in `inner` -> all visible here, and back), so it
  stays sound."""

  inner: Mask

  def bind(self, T, S):
    return Not(self.inner.bind(T, S))

  def __call__(self, batch, head, q, k):
    return ~self.inner(batch, head, q, k)

  def summary(self, grid):
    some, every = self.inner.summary(grid)
    xp = xp_of(some, every)
    return xp.logical_not(every), xp.logical_not(some)


@pytree('patterns')
@dataclasses.dataclass(frozen=True, eq=False)
class PerHead(Mask):
  """Head h sees what `patterns[h % len(patterns)]` lets it."""

  patterns: tuple[Mask, ...]
  per_head = True

  @property
  def count(self):
    return len(self.patterns)

  @property
  def per_example(self):
    return any(p.per_example for p in self.patterns)

  @property
  def batch_size(self):
    return Combined('or', self.patterns).batch_size

  def bind(self, T, S):
    return PerHead(tuple(p.bind(T, S) for p in self.patterns))

  def __call__(self, batch, head, q, k):
    out = self.patterns[0](batch, head, q, k)
    for index, pattern in enumerate(self.patterns[1:], 1):
      out = jnp.where(head % self.count == index,
                      pattern(batch, head, q, k), out)
    return out

  def summary(self, grid):
    # One tile loop serves every head: visit what any head needs, skip
    # the elementwise mask only where every head sees everything.
    some = Combined('or', self.patterns).summary(grid)[0]
    every = Combined('and', self.patterns).summary(grid)[1]
    return some, every


def all_of(*parts) -> Mask | None:
  """The `&` of the masks given (None entries left out); None if none."""
  parts = [p for p in parts if p is not None]
  if not parts:
    return None
  return parts[0] if len(parts) == 1 else Combined('and', tuple(parts))


def split(mask):
  """A kernel's `mask=` argument as `(Mask or None, boolean array or None)`:
  a `Mask` object, or an array as `jax.nn` takes it."""
  if mask is None or isinstance(mask, Mask):
    return mask, None
  return None, mask


def checked_batch(mask: Mask, batch_size: int) -> Mask:
  """`mask`, after checking that its data has `batch_size` rows."""
  if mask.batch_size not in (None, batch_size):
    raise ValueError(f'mask holds data for {mask.batch_size} examples, the '
                     f'inputs have B={batch_size}')
  return mask


def evaluate(mask: Mask, num_heads: int, T: int, S: int, q_offset=0):
  """The whole mask, bool `[B|1, N|1, T, S]` (jnp): O(T S) memory. Query
  positions start at `q_offset` (an int, or int `[B]`)."""
  q = jnp.arange(T)[None, None, :, None] + per_row(q_offset)
  return mask(jnp.arange(mask.batch_size or 1)[:, None, None, None],
              jnp.arange(num_heads)[None, :, None, None], q,
              jnp.arange(S)[None, None, None, :])


def per_row(offset):
  """A query offset (int, or `[B]`) shaped to add to `[B|1, 1, R, 1]`."""
  offset = jnp.asarray(offset, jnp.int32)
  return offset.reshape(-1, 1, 1, 1) if offset.ndim == 1 else offset


def per_head(*patterns: Mask) -> Mask:
  """A different pattern per head: head h uses `patterns[h % count]` (the
  Sparse Transformer's factorised heads)."""
  if not patterns:
    raise ValueError('per_head needs at least one mask')
  return PerHead(tuple(_checked(p) for p in patterns))
