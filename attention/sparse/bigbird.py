"""BigBird attention: sliding blocks, global blocks and random blocks.

Zaheer et al. 2020, "Big Bird: Transformers for Longer Sequences"
(arXiv 2007.14062), Section 2 and Appendix D (the blocked ITC form). The
sequence is cut into blocks of b positions; query block i sees

  window   key blocks i - (w - 1) / 2 ... i + (w - 1) / 2  (w = 3: three)
  global   the first g blocks, which also see every key     (ITC)
  random   r key blocks drawn outside the window and the global blocks

The random draw is a function of (seed, query block): one fixed draw per
layer (give layers different seeds for different draws), the same in
training and in evaluation. (Hugging Face's Flax port leaves the random
blocks out in evaluation, a known discrepancy between its training and
evaluation models; here there is one model.) When causal, only blocks up
to the query's are drawn, so the draw does not depend on the length and
decoding sees the blocks training saw. Global blocks are the first g (the
paper's ITC; the Hugging Face port makes the first and the last global,
which a causal model cannot).

Computed as exact attention under the pattern (`attention.sparse.
patterned`): window and random blocks by tile skipping (tiles of b x b fall
on blocks: `query_chunk_size = key_chunk_size = block_size` by default),
the global keys gathered after the others, the global rows attended apart.
Cost O(B N T b (w + r + g) H) time, O(B N (b^2 + T H)) memory; decoding
keeps the full KV cache (global and random blocks reach the past).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax.numpy as jnp

from efficient_attention.attention import masks
from efficient_attention.attention import options as options_lib
from efficient_attention.attention import registry
from efficient_attention.attention.decoding import kv_cache
from efficient_attention.attention.exact import blockwise
from efficient_attention.attention.sparse import patterned


@dataclasses.dataclass(frozen=True)
class BigBirdOptions(blockwise.BlockwiseOptions):
  """The blocks of `bigbird_attention`."""

  block_size: int = 64  # b, positions per block (the paper: 64)
  window_blocks: int = 3  # w, odd: the query's block and (w - 1) / 2 on
                          # each side (before only, when causal)
  global_blocks: int = 2  # g: the first g blocks are global (ITC)
  random_blocks: int = 3  # r, key blocks drawn per query block
  seed: int = 0  # the draw: one per layer, the same in evaluation
  query_chunk_size: int = 64  # C_q, query rows per tile (b: tiles on blocks)
  key_chunk_size: int = 64  # C_k, key columns per tile
  # Not an option: models give layer i the draw of `seed + i`.
  draws_per_layer: ClassVar[bool] = True

  def __post_init__(self):
    super().__post_init__()
    where = 'BigBirdOptions'
    options_lib.check_positive_int(where, 'block_size', self.block_size)
    options_lib.check_positive_int(where, 'window_blocks', self.window_blocks)
    if self.window_blocks % 2 == 0:
      raise ValueError(f'{where}: window_blocks must be odd (the query\'s '
                       f'block in the middle), got {self.window_blocks}')
    for name in ('global_blocks', 'random_blocks'):
      options_lib.check_positive_int(where, name, getattr(self, name),
                                     allow_zero=True)
    if isinstance(self.seed, bool) or not isinstance(self.seed, int):
      raise ValueError(f'{where}: seed must be an int, got {self.seed!r}')


def _local(options: BigBirdOptions, causal: bool) -> masks.Mask:
  b, radius = options.block_size, (options.window_blocks - 1) // 2
  local = masks.block_window(b, radius)
  if options.random_blocks:
    local = local | masks.random_blocks(
        options.random_blocks, b, options.seed, radius=radius,
        skip_first=options.global_blocks, causal=causal)
  return local


def positions_of(options: BigBirdOptions, B: int):
  """The global positions, the first g blocks, int `[B, g b]` (or None)."""
  count = options.global_blocks * options.block_size
  if not count:
    return None
  return jnp.broadcast_to(jnp.arange(count, dtype=jnp.int32), (B, count))


def pattern(options: BigBirdOptions | None = None, *, is_causal=False,
            **overrides) -> masks.Mask:
  """The pattern as one mask (without the causal part, which `is_causal`
  adds; it also picks the causal draw): what `blockwise_attention` or the
  dense reference take to compute the same attention."""
  options = BigBirdOptions.create(options, **overrides)
  mask = _local(options, is_causal)
  count = options.global_blocks * options.block_size
  return mask | masks.global_tokens(range(count)) if count else mask


def parts(options: BigBirdOptions, T=None, S=None, is_causal=False):
  """Window and random blocks (global blocks are global positions)."""
  del T, S
  return [patterned.Part(_local(options, is_causal))]


bigbird_attention = patterned.mechanism(
    'bigbird_attention', BigBirdOptions, parts, module=__name__,
    global_positions=positions_of)
bigbird_attention.__doc__ = f"""BigBird attention (blocked ITC).

  Zaheer et al. 2020, arXiv 2007.14062: each block of `block_size` queries
  sees its `window_blocks` neighbouring blocks, `random_blocks` blocks of
  one fixed draw and the first `global_blocks` blocks, which see all. See
  the module docstring for the math and `pattern(options)` for the
  equivalent mask.

  Args:
{patterned.ARGUMENTS_DOC}    block_size, window_blocks, global_blocks, random_blocks, seed: the
      options (`BigBirdOptions`), as keywords or `options=`.
    query_chunk_size, key_chunk_size: tile sizes, options too.

{patterned.RETURNS_DOC}
  Cost: O(B N T b (w + r + g) H) time, O(B N (C_q C_k + T H)) memory.
  """

init_state, step = kv_cache.decoding_pair(bigbird_attention)

registry.register('bigbird', bigbird_attention, options=BigBirdOptions,
                  init_state=init_state, step=step, exact=False)
