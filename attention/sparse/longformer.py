"""Longformer attention: a sliding window, optionally dilated, and global
tokens.

Beltagy, Peters & Cohan 2020, "Longformer: The Long-Document Transformer"
(arXiv 2004.05150), Section 3.1. Each query attends to the `w` positions on
either side of it (`w` before it when causal); with dilation `d`, to every
d-th position within `w * d`, so a stack of layers reaches further at the
same cost:

  local(i, j):  |i - j| <= w d  and  (i - j) mod d = 0

Global positions (a classification token, the question's tokens) attend
to every position and every position attends to them:

  A(i, j) = local(i, j)  or  i in G  or  j in G

`global_tokens=g` makes the first g positions global in every example;
`global_positions` (int `[B, P]`, entries below 0 unused) lists them per
example; both may be given. The paper also gives global attention its own
query, key and value projections (Q_g, K_g, V_g, Section 3.1): pass
`global_query`, `global_key` and `global_value` (shaped as query, key and
value) and the global rows attend with them,

  out_i = softmax_j(Q_g,i . K_g,j) V_g   for i in G (over every allowed j),

while every other row attends with the local projections, global keys
included, as in the paper and its reference code. The model layer
(`models.layers.LongformerAttention`, option `global_projections=True`)
owns and computes them.

Computed as exact attention under the pattern (`attention.sparse.
patterned`): the window by tile skipping (residue-major when dilated, where
the dilated window is a plain one); the global keys gathered after the
others and hidden from the window; the global rows gathered and attended
over all keys. Cost O(B N T (2 w + 2 P) H) time for P global positions,
O(B N (C^2 + T H)) memory. Decoding: with no global positions the state is
a ring of the last `w d` keys and values, constant in the length of the
stream; with `global_tokens` it is the full KV cache (the first tokens stay
visible forever); `global_positions` per example cannot decode (where they
fall is only known once the sequence is).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from efficient_attention.attention import arguments
from efficient_attention.attention import masks
from efficient_attention.attention import options as options_lib
from efficient_attention.attention import registry
from efficient_attention.attention.decoding import kv_cache
from efficient_attention.attention.decoding import ring_cache
from efficient_attention.attention.exact import blockwise
from efficient_attention.attention.sparse import patterned
from efficient_attention.attention.types import Any, ArrayLike, DTypeLike


@dataclasses.dataclass(frozen=True)
class LongformerOptions(blockwise.BlockwiseOptions):
  """The window and global tokens of `longformer_attention`."""

  window: int = 256  # w: positions seen on each side (before, when
                     # causal); the paper's window is 2 w + 1 wide
  dilation: int = 1  # d: every d-th position within w d (1: none)
  global_tokens: int = 0  # g: the first g positions are global in every
                          # example (a classification token: 1)
  global_projections: bool = False  # global rows attend with their own
                                    # query, key and value projections
                                    # (the model layer owns them)
  query_chunk_size: int = 128  # C_q, query rows per tile
  key_chunk_size: int = 128  # C_k, key columns per tile

  def __post_init__(self):
    super().__post_init__()
    where = 'LongformerOptions'
    options_lib.check_positive_int(where, 'window', self.window)
    options_lib.check_positive_int(where, 'dilation', self.dilation)
    options_lib.check_positive_int(where, 'global_tokens',
                                   self.global_tokens, allow_zero=True)
    options_lib.check_bool(where, 'global_projections',
                           self.global_projections)


def parts(options: LongformerOptions, T=None, S=None,
          is_causal=False):
  """The local pattern: a window, residue-major when dilated."""
  del T, S, is_causal
  w, d = options.window, options.dilation
  if d == 1:
    return [patterned.Part(masks.sliding_window(w, w))]
  return [patterned.Part(masks.sliding_window(w * d, w * d) &
                         masks.strided(d), 'residue', d)]


def positions_of(options: LongformerOptions, B: int,
                 global_positions=None):
  """The global positions int `[B, P]`: the first `global_tokens`, then
  those listed per example; None when there are none."""
  listed = []
  if options.global_tokens:
    listed.append(jnp.broadcast_to(
        jnp.arange(options.global_tokens, dtype=jnp.int32),
        (B, options.global_tokens)))
  if global_positions is not None:
    given = jnp.asarray(global_positions)
    if given.ndim != 2 or given.shape[0] != B or not jnp.issubdtype(
        given.dtype, jnp.integer):
      raise ValueError(f'global_positions must be an int array [B, P] with '
                       f'B={B}, got {given.dtype} {given.shape}')
    listed.append(given.astype(jnp.int32))
  return jnp.concatenate(listed, axis=1) if listed else None


def pattern(options: LongformerOptions | None = None, global_positions=None,
            batch_size: int = 1, **overrides) -> masks.Mask:
  """The pattern as one mask (without the causal part, which `is_causal`
  adds): what `blockwise_attention` or the dense reference take to compute
  the same attention."""
  options = LongformerOptions.create(options, **overrides)
  mask = patterned.pattern_mask(parts(options))
  listed = positions_of(options, batch_size,
                        global_positions=global_positions)
  return mask if listed is None else mask | masks.global_tokens(listed)


longformer_attention = patterned.mechanism(
    'longformer_attention', LongformerOptions, parts,
    data=('global_positions',), module=__name__,
    global_positions=positions_of, global_projections=True)
longformer_attention.__doc__ = f"""Longformer attention.

  Beltagy et al. 2020, arXiv 2004.05150: a sliding window of `window`
  positions on each side (dilated by `dilation`) and global positions that
  see and are seen by every position. See the module docstring for the
  math and `pattern(options)` for the equivalent mask.

  Args:
{patterned.ARGUMENTS_DOC}    global_positions: optional int `[B, P]`: each example's global
      positions (entries below 0, or past T, unused; repeats count once).
    global_query, global_key, global_value: optional, shaped as query, key
      and value: the global rows' own projections (all three or none;
      self-attention of a whole sequence only).
    window, dilation, global_tokens, global_projections, query_chunk_size, key_chunk_size:
      the options (`LongformerOptions`), as keywords or `options=`;
      `global_projections=True` requires the three arrays.

{patterned.RETURNS_DOC}
  Cost: O(B N T (2 w + 2 P) H) time, O(B N (C_q C_k + T H)) memory.
  """


@options_lib.takes(LongformerOptions)
def init_state(batch_size: int, num_kv_heads: int, head_dim: int, *,
               max_length: int, dtype: DTypeLike = jnp.float32,
               local_window_size: int | tuple[int, int] | None = None,
               window: int, dilation: int, global_tokens: int
               ) -> kv_cache.KVCache | ring_cache.RingCache:
  """A ring of the last `window * dilation` tokens (or fewer, under a
  narrower `local_window_size`) when there are no global tokens: constant
  memory; the full KV cache otherwise."""
  reach = None
  if not global_tokens:
    user = arguments.window_pair(local_window_size)
    reach = (min(window * dilation, user[0] if user else max_length), 0)
  return kv_cache.init_state(batch_size, num_kv_heads, head_dim,
                             max_length=max_length, dtype=dtype,
                             local_window_size=reach)


def step(state: kv_cache.KVCache | ring_cache.RingCache, query: ArrayLike,
         key: ArrayLike, value: ArrayLike, *,
         options: LongformerOptions | None = None,
         global_positions: ArrayLike | None = None,
         local_window_size: int | tuple[int, int] | None = None,
         mask: masks.Mask | None = None, **arguments_and_options: Any
         ) -> tuple[jax.Array, kv_cache.KVCache | ring_cache.RingCache]:
  """Decodes L new tokens: `(out [B, L, N, H], new_state)`; takes the
  arguments of `kv_cache.step` and the options."""
  given = {n: arguments_and_options.pop(n) for n in LongformerOptions.names()
           if n in arguments_and_options}
  options = LongformerOptions.create(options, **given)
  if global_positions is not None:
    raise ValueError('longformer decoding takes no global_positions: where '
                     'they fall is known only once the sequence is; use '
                     'global_tokens for global first positions')
  if options.global_projections:
    if options.global_tokens:
      raise ValueError('longformer decoding with global_tokens cannot take '
                       'global_projections: the global rows would need a '
                       'second cache of their own keys and values; decode '
                       'with global_projections=False')
    options = options.replace(global_projections=False)  # no global rows
  if isinstance(state, ring_cache.RingCache):
    # The ring holds the reach of the window; a narrower user window is a
    # mask, which a ring evaluates relative to the window (it is one).
    user = arguments.window_pair(local_window_size)
    local_window_size = (state.key.shape[1], 0)
    if user is not None:
      mask = masks.all_of(mask, masks.sliding_window(*user))
  return kv_cache.step(state, query, key, value, attend=longformer_attention,
                       local_window_size=local_window_size, mask=mask,
                       options=options, **arguments_and_options)


registry.register('longformer', longformer_attention,
                  options=LongformerOptions, init_state=init_state,
                  step=step, exact=False)
