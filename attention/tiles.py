"""Tiles for blockwise kernels: the plan, per-tile logits, visible tile ranges.

Kernels hold queries as `[B, K, T*G, H]`: the G query heads that share a
key/value head are rows next to each other, so a chunk of C query positions
is one contiguous `[C*G, H]` slab of R = C*G rows per key head, and a tile's
logits are `[B, K, R, C]`. Row `r` of query chunk `i` is position
`i * C_q + r // G`.

Masks are built per tile from these positions (`masking.PositionRules`);
which key chunks a query chunk can see at all (and the converse, for the
backward pass) is decided from the positions of the chunks' first and last
elements, never from chunk indices, so query and key chunks of different
sizes are handled alike.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
from jax import lax

from attention import masking


@dataclasses.dataclass(frozen=True)
class Plan:
  """Static description of one tiled attention call."""

  rules: masking.PositionRules
  scale: float
  T: int  # true query length (queries are padded to num_q * Cq)
  G: int
  Cq: int  # query chunk length
  Ck: int  # key chunk length
  num_q: int  # query chunks
  num_k: int  # key chunks
  precision: Any = None
  soft_cap: float | None = None  # logits x -> c tanh(x / c)

  @property
  def R(self) -> int:
    """Rows of one query tile: Cq positions x G heads."""
    return self.Cq * self.G


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


def alibi_rows(plan: Plan, slopes_N):
  """ALiBi slopes `[N]` laid out per tile row: `[K, R]` (row r is g = r % G)."""
  return jnp.tile(slopes_N.reshape(-1, plan.G), (1, plan.Cq))


def tile_logits(plan: Plan, q_BKRH, k_BKCH, i, j, extras):
  """Float32 logits `[B, K, R, Ck]` of tile (i, j), and the soft-cap slope.

  Logits are scaled, soft-capped, biased (bias and ALiBi) and masked; the
  second result is `d capped / d scaled` (`[B, K, R, Ck]`), or None when
  there is no cap. `extras` is `(bias, mask, q_len, kv_len, alibi_KR)`.
  """
  bias, mask, q_len, kv_len, alibi_KR = extras
  logits_BKRC = jnp.einsum(
      'BKRH,BKCH->BKRC', q_BKRH, k_BKCH, precision=plan.precision,
      preferred_element_type=jnp.float32)
  logits_BKRC *= plan.scale
  cap_slope = None
  if plan.soft_cap is not None:
    tanh = jnp.tanh(logits_BKRC / plan.soft_cap)
    logits_BKRC = plan.soft_cap * tanh
    cap_slope = 1.0 - tanh * tanh
  if bias is not None:
    logits_BKRC += bnts_tile(plan, bias, i, j).astype(jnp.float32)
  q_pos = i * plan.Cq + jnp.arange(plan.R) // plan.G
  k_pos = j * plan.Ck + jnp.arange(plan.Ck)
  if alibi_KR is not None:
    distance = jnp.abs(q_pos[:, None] - k_pos[None, :]).astype(jnp.float32)
    logits_BKRC -= alibi_KR[None, :, :, None] * distance[None, None]
  visible = plan.rules.visible(q_pos, k_pos, q_len, kv_len)
  if visible is not None:
    visible = visible[:, None]
  if mask is not None:
    tile = bnts_tile(plan, mask, i, j)
    visible = tile if visible is None else visible & tile
  if visible is not None:
    logits_BKRC = jnp.where(visible, logits_BKRC, masking.NEG_INF)
  return logits_BKRC, cap_slope


def _reach(rules: masking.PositionRules, from_keys: bool):
  """Offsets `(below, above)`: position p sees the other side's positions
  `[p - below, p + above]` (None: unbounded). Queries see keys by the
  rules; keys are seen by queries under the mirrored rules."""
  below = above = None
  if rules.window is not None:
    below, above = rules.window[::-1] if from_keys else rules.window
  if rules.is_causal:  # k <= q, that is q >= k
    if from_keys:
      below = 0 if below is None else min(below, 0)
    else:
      above = 0 if above is None else min(above, 0)
  return below, above


def _visible_chunks(first, last, reach, other_last, size, count):
  """Chunks `[lo, hi)` of the other side that positions first..last see.

  `other_last` caps the other side's positions (its length or largest
  sequence length, -1 when nothing is seen).
  """
  below, above = reach
  lo = jnp.int32(0) if below is None else jnp.maximum(first - below, 0)
  hi = other_last if above is None else jnp.minimum(other_last, last + above)
  lo_chunk = jnp.clip(lo // size, 0, count)
  hi_chunk = jnp.clip(hi // size + 1, lo_chunk, count)
  return lo_chunk, jnp.where(hi >= lo, hi_chunk, lo_chunk)


def _last_seen(length, lengths, own_first, own_lengths):
  """Last position of the other side in reach, or -1 if no row is live."""
  last = jnp.int32(length - 1)
  if lengths is not None:
    last = jnp.minimum(last, jnp.max(lengths) - 1)
  if own_lengths is not None:
    last = jnp.where(own_first < jnp.max(own_lengths), last, -1)
  return last


def key_chunks_for(plan: Plan, i, q_len, kv_len):
  """Key chunks `[lo, hi)` that query chunk `i` can see (int32 scalars)."""
  first = i * plan.Cq
  last = jnp.minimum(first + plan.Cq, plan.T) - 1
  return _visible_chunks(
      first, last, _reach(plan.rules, from_keys=False),
      _last_seen(plan.rules.S, kv_len, first, q_len), plan.Ck, plan.num_k)


def query_chunks_for(plan: Plan, j, q_len, kv_len):
  """Query chunks `[lo, hi)` that can see key chunk `j` (int32 scalars)."""
  first = j * plan.Ck
  last = jnp.minimum(first + plan.Ck, plan.rules.S) - 1
  return _visible_chunks(
      first, last, _reach(plan.rules, from_keys=True),
      _last_seen(plan.T, q_len, first, kv_len), plan.Cq, plan.num_q)


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

