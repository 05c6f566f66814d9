"""Masks from positions: the rules every mechanism applies alike.

A query at position `q` may see a key at position `k` when all of these hold:

  is_causal:              k <= q            (top-left aligned when T != S,
                                             as `jax.nn.dot_product_attention`)
  local_window_size=(l, r): q - l <= k <= q + r
  key_value_seq_lengths:  k < kv_len[b]
  query_seq_lengths:      q < q_len[b]      (rows past it see nothing)
  mask:                   mask[b, n, q, k]

`visible` evaluates the position rules for any pair of position vectors, so
a kernel builds the mask of one tile from `iota` positions and never holds a
`[T, S]` array. A query that sees no key gets an output of exactly zero.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

# Masked logits are set to this large finite value, never -inf (which gives
# NaN through exp(-inf - -inf)) nor finfo.min (whose double is -inf). Logits
# are always float32 here.
NEG_INF = -1e30
# A row whose running maximum stays below this saw no key.
MASKED_BELOW = NEG_INF / 2


@dataclasses.dataclass(frozen=True)
class PositionRules:
  """Static position rules of one call: causal flag, window, key length."""

  is_causal: bool
  window: tuple[int, int] | None  # (left, right)
  S: int  # true key length
  key_padding: bool = False  # keys were padded past S by a kernel: mask them

  def visible(self, q_pos, k_pos, q_len=None, kv_len=None):
    """Which keys each query sees, from positions alone.

    Args:
      q_pos: int `[R]` query positions.
      k_pos: int `[C]` key positions.
      q_len: optional int `[B]` query lengths.
      kv_len: optional int `[B]` key/value lengths.

    Returns:
      bool `[B or 1, R, C]`, or None when nothing is masked.
    """
    q = q_pos[:, None]
    k = k_pos[None, :]
    terms = []
    if self.is_causal:
      terms.append(k <= q)
    if self.window is not None:
      left, right = self.window
      terms.append((k >= q - left) & (k <= q + right))
    if self.key_padding:
      terms.append(k < self.S)
    terms = [t[None] for t in terms]
    if kv_len is not None:
      terms.append(k[None] < kv_len[:, None, None])
    if q_len is not None:
      terms.append(q[None] < q_len[:, None, None])
    if not terms:
      return None
    out = terms[0]
    for term in terms[1:]:
      out = out & term
    return out

