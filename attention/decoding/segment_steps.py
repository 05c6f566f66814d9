"""The decoding step shared by segment-recurrent mechanisms (Infini, XL).

Their states hold the unfinished segment (`fill` tokens per row). A step of
L new tokens runs whole segments through the mechanism's parallel form when
every row is at a segment's start and L is a multiple of the segment (how a
model streams a long input), and otherwise one token at a time in a
`lax.scan` (generation, prompts of different lengths).
"""

from __future__ import annotations

from typing import Any, Callable

import jax.numpy as jnp
from jax import lax


def step(state, query, key, value, *, num_new, segment_size: int,
         token: Callable[..., Any], whole: Callable[..., Any]):
  """`(out [B, L, N, H], state)` for L new tokens.

  Args:
    state: a pytree with a `fill` int32 `[B]` field.
    query: `[B, L, N, H]`; key, value: `[B, L, K, H]`.
    num_new: optional int `[B]`: real tokens among the L of each row.
    segment_size: tokens per segment.
    token: `(state, q [B, 1, N, H], k, v, real [B]) -> (out, state)`; rows
      with `real` False keep their state.
    whole: `(state, query, key, value) -> (out, state)`, the parallel form
      from a segment's start over whole segments.
  """
  B, L = query.shape[:2]
  real_LB = jnp.ones((L, B), bool)
  if num_new is not None:
    real_LB = jnp.arange(L)[:, None] < num_new[None, :]

  def body(state, xs):
    q, k, v, real = (x[:, None] if x.ndim > 1 else x for x in xs)
    out, state = token(state, q, k, v, real)
    return state, out[:, 0]

  def tokenwise(state):
    xs = tuple(jnp.swapaxes(x, 0, 1) for x in (query, key, value))
    state, out_LBNH = lax.scan(body, state, xs + (real_LB,))
    return jnp.swapaxes(out_LBNH, 0, 1), state

  if num_new is not None or L % segment_size:
    return tokenwise(state)
  return lax.cond(jnp.all(state.fill == 0),
                  lambda s: whole(s, query, key, value), tokenwise, state)
