"""Tiles for blockwise kernels: the plan, which tiles to visit, tile logits.

Kernels hold queries as `[B, K, T*G, H]`: the G query heads that share a
key/value head are rows next to each other, so a chunk of C query positions
is one contiguous `[C*G, H]` slab of R = C*G rows per key head, and a tile's
logits are `[B, K, R, C]`. Row `r` of query chunk `i` is position
`i * C_q + r // G` and head `k * G + r % G`.

Which keys a query sees is one `attention.masks.Mask` (causal, window and
lengths included), evaluated per tile from positions. Which tiles to visit
at all comes from the mask's tile summary (`tile_lists`): per query chunk,
the key chunks that may hold a visible pair, first, and whether each is
fully visible (then the elementwise mask is skipped); the transpose serves
the backward pass. Position masks give these lists as NumPy constants while
tracing; masks of data (lengths, segment ids) compute them on device.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

from efficient_attention.attention import masking
from efficient_attention.attention import masks as masks_lib


@dataclasses.dataclass(frozen=True)
class Plan:
  """Static description of one tiled attention call."""

  scale: float
  T: int  # true query length (queries are padded to num_q * Cq)
  S: int  # true key length (keys are padded to num_k * Ck)
  G: int
  Cq: int  # query chunk length
  Ck: int  # key chunk length
  num_q: int  # query chunks
  num_k: int  # key chunks
  precision: Any = None

  @property
  def R(self) -> int:
    """Rows of one query tile: Cq positions x G heads."""
    return self.Cq * self.G

  def grid(self, q_offset=0) -> masks_lib.Grid:
    """The padded problem's tiles."""
    return masks_lib.Grid(self.num_q * self.Cq, self.num_k * self.Ck,
                          self.Cq, self.Ck, q_offset)


class Lists(NamedTuple):
  """Tiles to visit: in row i, the columns `order[i, :partial[i]]` are
  partly visible (masked elementwise), `order[i, partial[i]:count[i]]`
  fully visible (no mask); the rest are skipped."""

  order: Any  # int32 [rows, cols]
  partial: Any  # int32 [rows]
  count: Any  # int32 [rows]


def _lists(some, every) -> Lists:
  xp = masks_lib.base.xp_of(some, every)
  every = every & some
  kind = xp.where(every, 1, xp.where(some, 0, 2))  # partial, full, skipped
  if xp is np:
    order = np.argsort(kind, axis=1, kind='stable')
  else:
    order = jnp.argsort(kind, axis=1, stable=True)
  return Lists(order.astype(np.int32),
               (some & ~every).sum(1).astype(np.int32),
               some.sum(1).astype(np.int32))


def tile_lists(plan: Plan, mask, q_offset=None) -> tuple[Lists, Lists]:
  """Key chunks per query chunk (forward) and query chunks per key chunk
  (backward) that `mask` leaves visible; None: every tile, all full."""
  if mask is None:
    some = np.ones((plan.num_q, plan.num_k), bool)
    every = some
  else:
    some, every = mask.summary(plan.grid(0 if q_offset is None else
                                         q_offset))
    if some.ndim == 3:  # one tile loop serves the whole batch
      some, every = some.any(0), every.all(0)
  return _lists(some, every), _lists(some.T, every.T)


def slice_axis(x, axis, start, size):
  """`x[..., start:start + size, ...]` on `axis`, unless that axis is 1."""
  if x.shape[axis] == 1:
    return x
  return lax.dynamic_slice_in_dim(x, start, size, axis)


def bnts_tile(plan: Plan, array, i, j):
  """Tile `(i, j)` of a bias or mask held as `[B|1, K|1, T|1, G|1, S|1]`.

  Returns:
    `[B|1, K|1, R|1, Ck|1]`, broadcastable against the tile's logits.
  """
  tile = slice_axis(array, 2, i * plan.Cq, plan.Cq)
  tile = slice_axis(tile, 4, j * plan.Ck, plan.Ck)
  b, k, t, g, s = tile.shape
  if t == 1 and g == 1:
    return tile.reshape(b, k, 1, s)
  tile = jnp.broadcast_to(tile, (b, k, plan.Cq, plan.G, s))
  return tile.reshape(b, k, plan.R, s)


def tile_positions(plan: Plan, i, j, q_offset=None):
  """Query positions `[B|1, 1, R, 1]` and key positions `[1, 1, 1, Ck]` of
  tile (i, j) (queries from `q_offset`: an int, or int `[B]`), and the row
  index `[R]`."""
  r = jnp.arange(plan.R)
  q = (i * plan.Cq + r // plan.G)[None, None, :, None]
  if q_offset is not None:
    q = q + masks_lib.base.per_row(q_offset)
  k = (j * plan.Ck + jnp.arange(plan.Ck))[None, None, None, :]
  return q, k, r


def tile_logits(plan: Plan, q_BKRH, k_BKCH, i, j, extras, full=False,
                with_vjp=False, learn_score=False):
  """Float32 logits `[B, K, R, Ck]` of tile (i, j).

  Logits are scaled, modified by the score (`attention.scores`), biased and
  masked. `extras` is `(bias, dense_mask, mask, score, q_offset)`. A `full`
  tile (a static flag: kernels loop over partial and full tiles apart)
  skips the elementwise mask, unless a dense mask is given. With
  `with_vjp`, also a function from `d loss / d logits` to `(d loss / d
  scaled logits, d loss / d score)` (the score's pytree where
  `learn_score`, else None).
  """
  bias, dense_mask, mask, score, q_offset = extras
  B, K = q_BKRH.shape[:2]
  raw_BKRC = jnp.einsum(
      'BKRH,BKCH->BKRC', q_BKRH, k_BKCH, precision=plan.precision,
      preferred_element_type=jnp.float32) * plan.scale
  q_pos, k_pos, r = tile_positions(plan, i, j, q_offset)
  head = (jnp.arange(K)[:, None] * plan.G + r[None, :] % plan.G)[
      None, :, :, None]
  back = lambda ds: (ds, None)
  logits_BKRC = raw_BKRC
  if score is not None:
    batch = jnp.arange(B)[:, None, None, None]
    modify = lambda raw, score: score(raw, batch, head, q_pos, k_pos)
    if with_vjp and learn_score:
      logits_BKRC, back = jax.vjp(modify, raw_BKRC, score)
    elif with_vjp:
      logits_BKRC, back_raw = jax.vjp(lambda raw: modify(raw, score),
                                      raw_BKRC)
      back = lambda ds: (back_raw(ds)[0], None)
    else:
      logits_BKRC = modify(raw_BKRC, score)
  if bias is not None:
    logits_BKRC += bnts_tile(plan, bias, i, j).astype(jnp.float32)
  visible = None
  if mask is not None and not full:
    batch = jnp.arange(mask.batch_size or 1)[:, None, None, None]
    visible = mask(batch, head, q_pos, k_pos)
  if dense_mask is not None:
    tile = bnts_tile(plan, dense_mask, i, j)
    visible = tile if visible is None else visible & tile
  if visible is not None:
    logits_BKRC = jnp.where(visible, logits_BKRC, masking.NEG_INF)
  return (logits_BKRC, back) if with_vjp else logits_BKRC


def reduce_to(array, shape):
  """Sums `array` over the axes where `shape` has 1 (a broadcast's VJP)."""
  axes = tuple(a for a, (n, m) in enumerate(zip(shape, array.shape))
               if n == 1 and m != 1)
  return jnp.sum(array, axis=axes, keepdims=True) if axes else array


def accumulate_bnts_tile(plan: Plan, buffer, ds_BKRC, i, j):
  """Adds a tile's logit gradient into `buffer [B|1, K|1, T|1, G|1, S|1]`."""
  b, k, r, c = ds_BKRC.shape
  delta = reduce_to(ds_BKRC.reshape(b, k, plan.Cq, plan.G, c), buffer.shape)
  starts = [0, 0, 0, 0, 0]
  if buffer.shape[2] != 1:
    starts[2] = i * plan.Cq
  if buffer.shape[4] != 1:
    starts[4] = j * plan.Ck
  current = lax.dynamic_slice(buffer, starts, delta.shape)
  return lax.dynamic_update_slice(buffer, current + delta, starts)

