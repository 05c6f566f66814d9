"""Reordering a sequence so that a sparse pattern becomes dense tiles.

A strided pattern, `(q - k) % l == 0`, touches every tile of a blockwise
kernel in the order positions come, so tile skipping alone saves nothing.
Reordered residue-major (all positions `= 0 mod l`, then all `= 1 mod l`,
...) the same pattern is block-diagonal: `l` blocks of `M = ceil(T / l)`,
tiles a kernel visits or skips whole. Likewise the Sparse Transformer's
summary columns (the last `c` positions of each block of `l`) gathered
together are a short dense key sequence.

A `Layout` maps a kernel's sequence index to the position it holds;
`AtPositions(mask, q_layout, k_layout)` evaluates a mask of positions at
those indices, so causality, lengths, windows and the patterns keep their
meaning in any order. Its tile summary takes, per chunk of indices, the
smallest and largest position held: exact where the positions of a chunk
are contiguous, conservative (a tile visited and masked, never one wrongly
skipped or left unmasked) where they are not.
"""

from __future__ import annotations

import dataclasses
import jax.numpy as jnp
import numpy as np

from efficient_attention.attention import masks
from efficient_attention.attention.masks.base import (Grid, Mask, Wrapper, full,
                                                     pytree)


@dataclasses.dataclass(frozen=True)
class Layout:
  """Sequence index -> position.

  `identity`: index i holds position i. `residue`: index `r * count + m`
  holds position `m * period + r` (residue-major order of `count * period`
  positions). `ends`: index `b * count + j` holds position
  `b * period + period - count + j` (the last `count` positions of each
  block of `period`, gathered).
  """

  kind: str = 'identity'
  period: int = 1
  count: int = 1

  def position(self, index):
    """Positions of int `index` (NumPy or jnp, any shape)."""
    if self.kind == 'identity':
      return index
    if self.kind == 'residue':
      return (index % self.count) * self.period + index // self.count
    if self.kind == 'ends':
      return ((index // self.count) * self.period + self.period - self.count
              + index % self.count)
    raise ValueError(f'unknown layout {self.kind!r}')

  def chunk_hulls(self, chunks: int, size: int, offset: int = 0):
    """Smallest and largest position of each chunk of `size` indices."""
    positions = self.position(np.arange(chunks * size).reshape(chunks, size))
    return positions.min(1) + offset, positions.max(1) + offset


@dataclasses.dataclass(frozen=True)
class MappedGrid(Grid):
  """A `Grid` whose chunk ranges are the hulls of the positions they hold."""

  q_layout: Layout = Layout()
  k_layout: Layout = Layout()

  def q_range(self):
    lo, hi = self.q_layout.chunk_hulls(self.num_q, self.Cq)
    if np.ndim(self.q_offset) == 1:
      return lo[:, None] + self.q_offset.min(), hi[:, None] + self.q_offset.max()
    return lo[:, None] + self.q_offset, hi[:, None] + self.q_offset

  def k_range(self):
    lo, hi = self.k_layout.chunk_hulls(self.num_k, self.Ck)
    return lo[None, :], hi[None, :]


@pytree('inner')
@dataclasses.dataclass(frozen=True, eq=False)
class AtPositions(Wrapper):
  """`inner` (a mask of positions) evaluated where the layouts put them.

  A static `inner` is summarised on the hulls of each chunk's positions; a
  mask of data (lengths, segment ids) is summarised as visible-somewhere,
  never-full (every tile visited and masked): compose it with a static
  mask that does the skipping.
  """

  inner: Mask
  q_layout: Layout
  k_layout: Layout

  def __call__(self, batch, head, q, k):
    return self.inner(batch, head, self.q_layout.position(q),
                      self.k_layout.position(k))

  def summary(self, grid: Grid):
    if not self.inner.static:
      return full(grid, np.ones((1, 1), bool), np.zeros((1, 1), bool))
    mapped = MappedGrid(grid.T, grid.S, grid.Cq, grid.Ck, grid.q_offset,
                        self.q_layout, self.k_layout)
    return self.inner.summary(mapped)


def by_residue(x_BT, period: int, count: int):
  """`x [B, T, ...]` padded to `count * period` positions, residue-major:
  `[B, period * count, ...]` (see `Layout('residue')`)."""
  B, T = x_BT.shape[:2]
  pad = [(0, 0), (0, count * period - T)] + [(0, 0)] * (x_BT.ndim - 2)
  x = jnp.pad(x_BT, pad).reshape(B, count, period, *x_BT.shape[2:])
  return x.swapaxes(1, 2).reshape(B, period * count, *x_BT.shape[2:])


def from_residue(x_BR, period: int, count: int, length: int):
  """Inverse of `by_residue`: `[B, length, ...]` in position order."""
  B = x_BR.shape[0]
  x = x_BR.reshape(B, period, count, *x_BR.shape[2:]).swapaxes(1, 2)
  return x.reshape(B, period * count, *x_BR.shape[2:])[:, :length]


def block_ends(x_BS, period: int, count: int):
  """The last `count` positions of each block of `period`, gathered:
  `[B, ceil(S / period) * count, ...]`, zero past S (mask those keys)."""
  B, S = x_BS.shape[:2]
  blocks = -(-S // period)
  pad = [(0, 0), (0, blocks * period - S)] + [(0, 0)] * (x_BS.ndim - 2)
  x = jnp.pad(x_BS, pad).reshape(B, blocks, period, *x_BS.shape[2:])
  return x[:, :, period - count:].reshape(B, blocks * count,
                                          *x_BS.shape[2:])


def head_parts(num_heads: int, num_kv_heads: int, parts: int):
  """For head h in part `h % parts`: per part, its query heads and the
  key/value head each reads (`h // G`), as NumPy int arrays."""
  group = num_heads // num_kv_heads
  heads = [np.arange(p, num_heads, parts) for p in range(parts)]
  return [(h, h // group) for h in heads]


def split_heads(query, key, value, parts: int):
  """Per part: `(query [B, T, Np, H], key, value [B, S, Kp, H])` with the
  GQA grouping kept where it can be (G divisible by `parts`: every key
  head serves G / parts query heads of each part) and key heads repeated
  where it cannot."""
  B, T, N, H = query.shape
  K = key.shape[2]
  G = N // K
  if G % parts == 0:
    q = query.reshape(B, T, K, G, H)
    return [(q[:, :, :, p::parts].reshape(B, T, K * (G // parts), H), key,
             value) for p in range(parts)]
  return [(query[:, :, heads], key[:, :, kv], value[:, :, kv])
          for heads, kv in head_parts(N, K, parts)]


def merge_heads(outs, num_kv_heads: int):
  """Inverse of `split_heads` on the outputs `[B, T, Np, H]` of each part."""
  parts = len(outs)
  B, T, _, H = outs[0].shape
  N = sum(o.shape[2] for o in outs)
  G = N // num_kv_heads
  if G % parts == 0:
    grouped = [o.reshape(B, T, num_kv_heads, G // parts, H) for o in outs]
    return jnp.stack(grouped, axis=4).reshape(B, T, N, H)
  out = jnp.zeros((B, T, N, H), outs[0].dtype)
  for o, (heads, _) in zip(outs, head_parts(N, num_kv_heads, parts)):
    out = out.at[:, :, heads].set(o)
  return out


def static_and_data(mask: Mask | None) -> tuple[Mask | None, Mask | None]:
  """`mask` split into its static part and its part of data (either None),
  for `AtPositions`: an `&` of masks splits term by term."""
  if mask is None:
    return None, None
  terms = (mask.parts if isinstance(mask, masks.base.Combined) and
           mask.op == 'and' else (mask,))
  return (masks.all_of(*[m for m in terms if m.static]),
          masks.all_of(*[m for m in terms if not m.static]))


def at_positions(mask: Mask | None, q_layout: Layout, k_layout: Layout
                 ) -> Mask | None:
  """`mask` evaluated at the layouts' positions (None stays None)."""
  static, data = static_and_data(mask)
  return masks.all_of(
      None if static is None else AtPositions(static, q_layout, k_layout),
      None if data is None else AtPositions(data, q_layout, k_layout))



@pytree()
@dataclasses.dataclass(frozen=True, eq=False)
class KeyRange(Mask):
  """Keys with index in `[start, stop)`: one segment of concatenated keys."""

  start: int
  stop: int

  def __call__(self, batch, head, q, k):
    return (k >= self.start) & (k < self.stop)

  def summary(self, grid: Grid):
    k_lo, k_hi = grid.k_range()
    return full(grid, (k_hi >= self.start) & (k_lo < self.stop),
                (k_lo >= self.start) & (k_hi < self.stop))


@pytree('inner', 'q_table', 'k_table')
@dataclasses.dataclass(frozen=True, eq=False)
class Gathered(Mask):
  """`inner` at the positions of gathered rows: a query index q holds
  position `q_table[b, q]` (or `q_layout`'s, without a table), a key index
  k holds `k_table[b, k - k_offset]` (or `k_layout`'s); table entries
  below 0 are unused, hence hidden. Summarised as visible-somewhere,
  never-full (gathered rows are few: one tile or so)."""

  inner: Mask | None
  q_table: Any = None  # int [B, P] or None
  k_table: Any = None  # int [B, P] or None
  q_layout: Layout = Layout()
  k_layout: Layout = Layout()
  k_offset: int = 0
  per_example = True

  @property
  def batch_size(self):
    table = self.q_table if self.q_table is not None else self.k_table
    return table.shape[0]

  @staticmethod
  def _lookup(table, batch, index):
    index = jnp.clip(index, 0, table.shape[1] - 1)
    return table[batch, index]

  def __call__(self, batch, head, q, k):
    visible = True
    if self.q_table is not None:
      q = self._lookup(self.q_table, batch, q)
      visible = q >= 0
    else:
      q = self.q_layout.position(q)
    if self.k_table is not None:
      k = self._lookup(self.k_table, batch, k - self.k_offset)
      visible = visible & (k >= 0)
    else:
      k = self.k_layout.position(k)
    if self.inner is None:
      return jnp.broadcast_to(visible, jnp.broadcast_shapes(
          jnp.shape(q), jnp.shape(k)))
    return visible & self.inner(batch, head, q, k)

  def summary(self, grid: Grid):
    return full(grid, np.ones((1, 1), bool), np.zeros((1, 1), bool))
