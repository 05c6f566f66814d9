"""Masks of positions alone: causal, windows, blocks, strides, summaries."""

from __future__ import annotations

import dataclasses

import numpy as np

from efficient_attention.attention.masks.base import Grid, Mask, full, pytree


def positive_int(name: str, value) -> int:
  """`value` as an int; ValueError naming `name` unless it is >= 1."""
  if (not isinstance(value, (int, np.integer)) or isinstance(value, bool) or
      value < 1):
    raise ValueError(f'{name} must be a positive int, got {value!r}')
  return int(value)


@pytree()
@dataclasses.dataclass(frozen=True, eq=False)
class Causal(Mask):
  offset: int = 0

  def __call__(self, batch, head, q, k):
    return k <= q + self.offset

  def summary(self, grid: Grid):
    (q_lo, q_hi), (k_lo, k_hi) = grid.q_range(), grid.k_range()
    return full(grid, k_lo <= q_hi + self.offset, k_hi <= q_lo + self.offset)


def causal(offset: int = 0) -> Mask:
  """Query q sees keys k <= q + offset. `offset=0` is `jax.nn`'s top-left
  alignment when T != S; `offset=S - T` aligns the last query with the last
  key (bottom-right)."""
  if not isinstance(offset, (int, np.integer)) or isinstance(offset, bool):
    raise ValueError(f'causal offset must be an int, got {offset!r}')
  return Causal(int(offset))


@pytree()
@dataclasses.dataclass(frozen=True, eq=False)
class Window(Mask):
  left: int
  right: int

  def __call__(self, batch, head, q, k):
    return (k >= q - self.left) & (k <= q + self.right)

  def summary(self, grid: Grid):
    (q_lo, q_hi), (k_lo, k_hi) = grid.q_range(), grid.k_range()
    return full(grid,
                (k_hi >= q_lo - self.left) & (k_lo <= q_hi + self.right),
                (k_lo >= q_hi - self.left) & (k_hi <= q_lo + self.right))


def sliding_window(left: int, right: int = 0) -> Mask:
  """Query q sees keys in `[q - left, q + right]` (with `causal()`: the
  causal sliding window of `left + 1` tokens)."""
  for name, value in (('left', left), ('right', right)):
    if (not isinstance(value, (int, np.integer)) or isinstance(value, bool)
        or value < 0):
      raise ValueError(f'sliding_window {name} must be an int >= 0, got '
                       f'{value!r}')
  return Window(int(left), int(right))


@pytree()
@dataclasses.dataclass(frozen=True, eq=False)
class Chunked(Mask):
  size: int

  def __call__(self, batch, head, q, k):
    return q // self.size == k // self.size

  def summary(self, grid: Grid):
    (q_lo, q_hi), (k_lo, k_hi) = grid.q_range(), grid.k_range()
    s = self.size
    some = (q_lo // s <= k_hi // s) & (k_lo // s <= q_hi // s)
    every = ((q_lo // s == q_hi // s) & (k_lo // s == k_hi // s) &
             (q_lo // s == k_lo // s))
    return full(grid, some, every)


def chunked(size: int) -> Mask:
  """Block-local attention: q and k in the same block of `size` positions."""
  return Chunked(positive_int('chunked size', size))


@pytree()
@dataclasses.dataclass(frozen=True, eq=False)
class BlockWindow(Mask):
  """Key blocks from `left` before to `right` after the query's block."""

  size: int
  left: int
  right: int

  def __call__(self, batch, head, q, k):
    qb, kb = q // self.size, k // self.size
    return (kb >= qb - self.left) & (kb <= qb + self.right)

  def summary(self, grid: Grid):
    (q_lo, q_hi), (k_lo, k_hi) = grid.q_range(), grid.k_range()
    s = self.size
    return full(grid,
                (k_hi // s >= q_lo // s - self.left) &
                (k_lo // s <= q_hi // s + self.right),
                (k_lo // s >= q_hi // s - self.left) &
                (k_hi // s <= q_lo // s + self.right))


def block_window(size: int, left: int, right: int | None = None) -> Mask:
  """BigBird's sliding blocks: the query's block of `size` positions sees
  the key blocks from `left` blocks before it to `right` after (default
  `left`): `block_window(b, 1)` is the paper's window of three blocks."""
  size = positive_int('block_window size', size)
  right = left if right is None else right
  for name, value in (('left', left), ('right', right)):
    if (not isinstance(value, (int, np.integer)) or isinstance(value, bool)
        or value < 0):
      raise ValueError(f'block_window {name} must be an int >= 0, got '
                       f'{value!r}')
  return BlockWindow(size, int(left), int(right))


@pytree()
@dataclasses.dataclass(frozen=True, eq=False)
class Strided(Mask):
  stride: int

  def __call__(self, batch, head, q, k):
    return (q - k) % self.stride == 0

  def summary(self, grid: Grid):
    (q_lo, q_hi), (k_lo, k_hi) = grid.q_range(), grid.k_range()
    low, high = q_lo - k_hi, q_hi - k_lo  # the differences q - k in a tile
    some = (high // self.stride) * self.stride >= low
    every = ((low == high) & (low % self.stride == 0)) | (self.stride == 1)
    return full(grid, some, every)


def strided(stride: int) -> Mask:
  """The Sparse Transformer's strided head: keys a multiple of `stride`
  away from the query (compose with `causal()`; its other head is a
  sliding window of `stride`)."""
  return Strided(positive_int('strided stride', stride))


@pytree()
@dataclasses.dataclass(frozen=True, eq=False)
class BlockEnds(Mask):
  """Keys among the last `size` positions of each block of `block`."""

  block: int
  size: int

  def __call__(self, batch, head, q, k):
    return k % self.block >= self.block - self.size

  def summary(self, grid: Grid):
    _, (k_lo, k_hi) = grid.q_range(), grid.k_range()
    b, c = self.block, self.size
    # The first key at or after k_lo that is among the last c of a block.
    first = np.where(k_lo % b >= b - c, k_lo, (k_lo // b) * b + b - c)
    every = (k_lo // b == k_hi // b) & (k_lo % b >= b - c)
    return full(grid, first <= k_hi, every)


def fixed(block: int, summary: int) -> Mask:
  """The Sparse Transformer's fixed pattern: q sees its own block of
  `block` positions and the last `summary` positions of every block
  (compose with `causal()` for the autoregressive model)."""
  block = positive_int('fixed block', block)
  summary = positive_int('fixed summary', summary)
  if summary > block:
    raise ValueError(f'fixed summary={summary} must be at most block={block}')
  return Chunked(block) | BlockEnds(block, summary)

