"""Masks that hold data or a draw: global tokens, random blocks, documents,
prefixes and lengths (static where given as Python ints, per example where
given as arrays with a leading batch axis)."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from efficient_attention.attention.masks.base import Grid, Mask, full, pytree, xp_of
from efficient_attention.attention.masks.patterns import causal, positive_int

_NOWHERE = np.int32(2**30)  # a position no sequence reaches


def _int_array(name: str, value, ndim: int):
  array = jnp.asarray(value)
  if array.ndim != ndim or not jnp.issubdtype(array.dtype, jnp.integer):
    axes = {1: '[B]', 2: '[B, L]'}[ndim]
    raise ValueError(f'{name} must be an int array {axes}, got '
                     f'{array.dtype} {array.shape}')
  return array.astype(jnp.int32)


def _count_between(sorted_P, lo, hi, xp):
  """How many entries of `sorted_P` (`[P]`, or `[B, P]` per row) lie in
  `[lo, hi]`; `lo`, `hi` broadcast together."""
  def count(row, lo, hi):
    return (xp.searchsorted(row, hi, side='right') -
            xp.searchsorted(row, lo, side='left'))
  if sorted_P.ndim == 1:
    return count(sorted_P, lo, hi)
  return jax.vmap(count, in_axes=(0, None, None))(sorted_P, lo[0], hi[0])


@pytree()
@dataclasses.dataclass(frozen=True, eq=False)
class GlobalTokens(Mask):
  """Listed positions see every key and are seen by every query."""

  positions: tuple[int, ...]  # sorted, unique

  def __call__(self, batch, head, q, k):
    listed = jnp.asarray(self.positions, jnp.int32)
    return jnp.isin(q, listed) | jnp.isin(k, listed)

  def summary(self, grid: Grid):
    return _global_summary(grid, np.asarray(self.positions, np.int32))


@pytree('positions')
@dataclasses.dataclass(frozen=True, eq=False)
class GlobalTokensPerExample(Mask):
  """Global positions per example: int `[B, P]`, entries < 0 unused; the
  listed keys are seen by all, and with `rows` the listed queries see all."""

  positions: Any
  rows: bool = True
  per_example = True

  @property
  def batch_size(self):
    return self.positions.shape[0]

  def __call__(self, batch, head, q, k):
    listed = self.positions[batch]  # batch's shape + [P]
    seen = jnp.any(k[..., None] == listed, -1)
    return seen | jnp.any(q[..., None] == listed, -1) if self.rows else seen

  def summary(self, grid: Grid):
    # Unused entries sort last, out of every range.
    listed = jnp.sort(jnp.where(self.positions < 0, _NOWHERE,
                                self.positions), axis=-1)
    return _global_summary(grid, listed, self.rows)


def listed_keys(positions) -> Mask:
  """Keys at `positions` (int `[B, P]`, entries below 0 unused) are
  visible, to every query; `~listed_keys(p)` hides them."""
  return GlobalTokensPerExample(
      _int_array('listed_keys positions', positions, 2), rows=False)


def _global_summary(grid, listed, rows=True):
  (q_lo, q_hi), (k_lo, k_hi) = grid.q_range(), grid.k_range()
  if listed.ndim == 2:
    q_lo, q_hi, k_lo, k_hi = (x[None] for x in (q_lo, q_hi, k_lo, k_hi))
  xp = xp_of(listed, q_lo)
  in_k = _count_between(listed, k_lo, k_hi, xp)
  some, every = in_k > 0, in_k == k_hi - k_lo + 1
  if rows:
    in_q = _count_between(listed, q_lo, q_hi, xp)
    some, every = some | (in_q > 0), every | (in_q == q_hi - q_lo + 1)
  return full(grid, some, every)


def global_tokens(positions) -> Mask:
  """Longformer's global attention (Beltagy et al. 2020, arXiv 2004.05150):
  the listed positions see and are seen by all. `positions`: a sequence of
  ints (the same for every example), or int `[B, P]` per example (entries
  below 0 unused, so examples may list different numbers)."""
  if isinstance(positions, (list, tuple, range)) or (
      isinstance(positions, np.ndarray) and positions.ndim == 1):
    listed = np.unique(np.asarray(positions, np.int64))
    if listed.size and listed[0] < 0:
      raise ValueError(f'global_tokens positions must be >= 0, got '
                       f'{listed[0]}')
    return GlobalTokens(tuple(int(p) for p in listed))
  return GlobalTokensPerExample(_int_array('global_tokens positions',
                                           positions, 2))


@pytree()
@dataclasses.dataclass(frozen=True, eq=False)
class RandomBlocks(Mask):
  """Each query block sees `num_blocks` key blocks of one fixed draw."""

  num_blocks: int
  block_size: int
  seed: int
  # Blocks never drawn: within `radius` of the query block (-1: none), the
  # first `skip_first`, and with `causal` any after the query block.
  radius: int = -1
  skip_first: int = 0
  causal: bool = False
  # Once bound: key block ids per query block, -1 padded (a tuple: static
  # and hashed).
  table: tuple[tuple[int, ...], ...] | None = None

  def _draw(self, i, num_k):
    candidates = np.arange(min(num_k, i + 1) if self.causal else num_k)
    candidates = candidates[(np.abs(candidates - i) > self.radius) &
                            (candidates >= self.skip_first)]
    draws = min(self.num_blocks, candidates.size)
    picked = np.random.default_rng((self.seed, i)).choice(
        candidates, draws, replace=False) if draws else []
    return [int(b) for b in picked] + [-1] * (self.num_blocks - draws)

  def bind(self, T, S):
    if self.table is not None:  # drawn already: a mask keeps its draw
      return self
    bs = self.block_size
    # Causal draws depend on the query block only: decoding (a few queries
    # at the end of a long cache) binds rows for every position up to S.
    num_q = -(-(max(T, S) if self.causal else T) // bs)
    num_k = -(-S // bs)
    table = tuple(tuple(self._draw(i, num_k)) for i in range(num_q))
    return dataclasses.replace(self, table=table)

  def _table(self):
    if self.table is None:
      raise ValueError('random_blocks draws per sequence length: bind the '
                       'mask first (mask.bind(T, S)); kernels do')
    return np.asarray(self.table, np.int32).reshape(len(self.table), -1)

  def __call__(self, batch, head, q, k):
    table = jnp.asarray(self._table())
    rows = table[jnp.clip(q // self.block_size, 0, table.shape[0] - 1)]
    return jnp.any(rows == (k // self.block_size)[..., None], -1)

  def summary(self, grid: Grid):
    table, bs = self._table(), self.block_size
    num_k = -(-grid.S // bs)
    blocks = np.zeros((table.shape[0], num_k), np.int32)
    rows, drawn = np.nonzero((table >= 0) & (table < num_k))
    blocks[rows, table[rows, drawn]] = 1
    # Visible block pairs in a rectangle of blocks, from 2-D prefix sums.
    sums = np.pad(blocks.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    (q_lo, q_hi), (k_lo, k_hi) = grid.q_range(), grid.k_range()
    xp = xp_of(q_lo)
    i0 = xp.clip(q_lo // bs, 0, table.shape[0] - 1)
    i1 = xp.clip(q_hi // bs, 0, table.shape[0] - 1) + 1
    j0, j1 = k_lo // bs, k_hi // bs + 1
    sums = xp.asarray(sums)
    count = sums[i1, j1] - sums[i0, j1] - sums[i1, j0] + sums[i0, j0]
    return full(grid, count > 0, count == (i1 - i0) * (j1 - j0))


def random_blocks(num_blocks: int, block_size: int, seed: int = 0, *,
                  radius: int = -1, skip_first: int = 0,
                  causal: bool = False) -> Mask:
  """BigBird's random attention (Zaheer et al. 2020, arXiv 2007.14062): each
  block of `block_size` queries sees `num_blocks` key blocks drawn without
  replacement. The draw is a function of (seed, query block, number of key
  blocks): the same in training and evaluation at a given length. Blocks
  within `radius` of the query block and the first `skip_first` are not
  drawn (BigBird draws outside its window and global blocks); with
  `causal`, only blocks up to the query's are, and the draw no longer
  depends on the length (decoding sees the draw training saw)."""
  if isinstance(radius, bool) or not isinstance(radius, (int, np.integer)) \
      or radius < -1:
    raise ValueError(f'random_blocks radius must be an int >= -1, got '
                     f'{radius!r}')
  if isinstance(skip_first, bool) or not isinstance(
      skip_first, (int, np.integer)) or skip_first < 0:
    raise ValueError(f'random_blocks skip_first must be an int >= 0, got '
                     f'{skip_first!r}')
  return RandomBlocks(positive_int('random_blocks num_blocks', num_blocks),
                      positive_int('random_blocks block_size', block_size),
                      int(seed), int(radius), int(skip_first), bool(causal))


def _chunk_min_max(ids_BL, start, size, count):
  """Min and max id `[B, count]` over the chunks of `size` positions from
  `start` (an int, or one per row `[B]`; positions past the ids repeat the
  last id, as the mask does)."""
  need = count * size
  ids = jnp.pad(ids_BL, ((0, 0), (0, need)), mode='edge')
  start = jnp.broadcast_to(jnp.asarray(start, jnp.int32), ids.shape[:1])
  ids = jax.vmap(lambda row, s: jax.lax.dynamic_slice_in_dim(
      row, s, need))(ids, start)
  ids = ids.reshape(ids.shape[0], count, size)
  return ids.min(-1), ids.max(-1)


@pytree('q_ids', 'k_ids')
@dataclasses.dataclass(frozen=True, eq=False)
class Document(Mask):
  """Queries see keys of their own segment."""

  q_ids: Any  # int [B, T]
  k_ids: Any  # int [B, S]
  per_example = True

  @property
  def batch_size(self):
    return self.q_ids.shape[0]

  def __call__(self, batch, head, q, k):
    q = jnp.clip(q, 0, self.q_ids.shape[1] - 1)
    k = jnp.clip(k, 0, self.k_ids.shape[1] - 1)
    return self.q_ids[batch, q] == self.k_ids[batch, k]

  def summary(self, grid: Grid):
    q_min, q_max = _chunk_min_max(self.q_ids, grid.q_offset, grid.Cq,
                                  grid.num_q)
    k_min, k_max = _chunk_min_max(self.k_ids, 0, grid.Ck, grid.num_k)
    q_min, q_max = q_min[:, :, None], q_max[:, :, None]
    k_min, k_max = k_min[:, None, :], k_max[:, None, :]
    return ((q_min <= k_max) & (k_min <= q_max),
            (q_min == q_max) & (k_min == k_max) & (q_min == k_min))


def document(segment_ids, kv_segment_ids=None) -> Mask:
  """Packed sequences: query t sees key s only when both belong to the same
  document, `segment_ids[b, t] == kv_segment_ids[b, s]` (int `[B, T]` and
  `[B, S]`; default the same). Tiles are skipped from each chunk's smallest
  and largest id, so contiguous documents cost what they compute."""
  q_ids = _int_array('document segment_ids', segment_ids, 2)
  k_ids = q_ids if kv_segment_ids is None else _int_array(
      'document kv_segment_ids', kv_segment_ids, 2)
  if k_ids.shape[0] != q_ids.shape[0]:
    raise ValueError(f'kv_segment_ids has {k_ids.shape[0]} rows, '
                     f'segment_ids {q_ids.shape[0]}')
  return Document(q_ids, k_ids)


@pytree()
@dataclasses.dataclass(frozen=True, eq=False)
class Before(Mask):
  """Positions (of keys, or of queries) below a length, one for all rows."""

  length: int
  of_keys: bool = True

  def __call__(self, batch, head, q, k):
    return (k if self.of_keys else q) < self.length

  def summary(self, grid: Grid):
    lo, hi = grid.k_range() if self.of_keys else grid.q_range()
    return full(grid, lo < self.length, hi < self.length)


@pytree('lengths')
@dataclasses.dataclass(frozen=True, eq=False)
class BeforeLengths(Mask):
  """Positions (of keys, or of queries) below each row's length `[B]`."""

  lengths: Any
  of_keys: bool = True
  per_example = True

  @property
  def batch_size(self):
    return self.lengths.shape[0]

  def __call__(self, batch, head, q, k):
    return (k if self.of_keys else q) < self.lengths[batch]

  def summary(self, grid: Grid):
    lo, hi = grid.k_range() if self.of_keys else grid.q_range()
    lengths = self.lengths[:, None, None]
    return full(grid, lo[None] < lengths, hi[None] < lengths)


@pytree('starts')
@dataclasses.dataclass(frozen=True, eq=False)
class KeysFrom(Mask):
  """Keys at or after each row's start `[B]`."""

  starts: Any
  per_example = True

  @property
  def batch_size(self):
    return self.starts.shape[0]

  def __call__(self, batch, head, q, k):
    return k >= self.starts[batch]

  def summary(self, grid: Grid):
    lo, hi = grid.k_range()
    starts = self.starts[:, None, None]
    return full(grid, hi[None] >= starts, lo[None] >= starts)


def key_starts(starts) -> Mask:
  """Keys before `starts[b]` are invisible (int `[B]`): a ring buffer's
  slots older than the row's first token, or left padding."""
  return KeysFrom(_int_array('key_starts', starts, 1))


def _before(name, value, of_keys) -> Mask:
  if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
    if value < 0:
      raise ValueError(f'{name} must be >= 0, got {value}')
    return Before(int(value), of_keys)
  return BeforeLengths(_int_array(name, value, 1), of_keys)


def key_lengths(lengths) -> Mask:
  """Keys past `lengths[b]` are padding (int `[B]`, or one int)."""
  return _before('key_lengths', lengths, of_keys=True)


def query_lengths(lengths) -> Mask:
  """Queries past `lengths[b]` are padding and see nothing."""
  return _before('query_lengths', lengths, of_keys=False)


def prefix_lm(prefix_length) -> Mask:
  """Prefix LM (Raffel et al. 2020, arXiv 1910.10683): every query sees the
  first `prefix_length` keys (int, or int `[B]`) and, after them, causally."""
  return causal() | _before('prefix_lm prefix_length', prefix_length,
                            of_keys=True)


@pytree('array')
@dataclasses.dataclass(frozen=True, eq=False)
class ArrayMask(Mask):
  """A boolean array `[B|1, N|1, T, S]` as a mask object, so that it can
  be combined with others (`jax.nn`'s `mask=`). Its tiles are summarised
  as visible-somewhere and never full: every tile is visited and masked."""

  array: Any

  @property
  def static(self):
    return False

  @property
  def per_example(self):
    return self.array.shape[0] > 1

  @property
  def per_head(self):
    return self.array.shape[1] > 1

  @property
  def count(self):
    return self.array.shape[1]

  @property
  def batch_size(self):
    return self.array.shape[0] if self.per_example else None

  def __call__(self, batch, head, q, k):
    B, N, T, S = self.array.shape
    index = lambda i, size: 0 if size == 1 else jnp.clip(i, 0, size - 1)
    return self.array[index(batch, B), head % N, index(q, T), index(k, S)]

  def summary(self, grid: Grid):
    return full(grid, np.ones((1, 1), bool), np.zeros((1, 1), bool))


def from_array(mask) -> Mask:
  """`jax.nn`'s boolean (or 0/1) `mask` array, broadcasting to
  `[B, N, T, S]`, as a `Mask` (for combining with pattern masks)."""
  array = jnp.asarray(mask)
  if array.ndim > 4:
    raise ValueError(f'mask must broadcast to [B, N, T, S], got shape '
                     f'{array.shape}')
  array = array.reshape((1,) * (4 - array.ndim) + array.shape)
  return ArrayMask(array != 0 if array.dtype != jnp.bool_ else array)
