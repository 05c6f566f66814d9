"""Attention masks as lazy objects over absolute positions.

A `Mask` says which keys each query may see as a function of integer arrays
that broadcast together, `mask(batch, head, q, k) -> bool` (FlexAttention's
`mask_mod(b, h, q_idx, kv_idx)`). Kernels evaluate it per tile from `iota`
positions and never form a `[T, S]` array. Masks compose with `&`, `|`
and `~`.

A mask also summarises a grid of tiles without looking inside them,
`mask.summary(grid) -> (some, every)`, bool `[B|1, num_q, num_k]`: `some`
is False only for tiles with no visible pair, `every` True only for tiles
whose pairs are all visible. A kernel visits the tiles with `some` and
skips the elementwise mask where `every` holds, so sparsity is tiles not
visited. Masks of positions alone are summarised with NumPy while tracing;
masks of data (segment ids, lengths, per-example prefixes or global tokens)
on device, from each chunk's smallest and largest values. The masks::

  causal(offset=0)             k <= q + offset (offset S - T: bottom-right)
  sliding_window(left, right)  q - left <= k <= q + right
  chunked(size)                q // size == k // size (block-local)
  block_window(size, l, r)     key blocks l before to r after q's block
  strided(stride)              (q - k) % stride == 0    Child et al. 2019,
  fixed(block, summary)        same block, or k among   arXiv 1904.10509
                               the last `summary` of its block
  global_tokens(positions)     q or k listed: Longformer, arXiv 2004.05150
  listed_keys(positions)       k listed (per example)
  random_blocks(n, size, seed) n key blocks drawn per query block: BigBird,
                               arXiv 2007.14062 (one fixed draw)
  document(segment_ids)        same segment (packed sequences)
  prefix_lm(length)            causal, and every key before `length`
  key_lengths(lengths)         k < lengths[b]
  key_starts(starts)           k >= starts[b]
  query_lengths(lengths)       q < lengths[b]
  per_head(m0, m1, ...)        head h uses m[h % count]
  from_array(mask)             jax.nn's boolean array, as a mask object

`mask.dense(T, S)` is the boolean matrix (leading B for per-example masks,
N for per-head ones), `mask.layout(T, S, Cq, Ck)` the tiles a kernel visits
and `render(layout)` draws them as text.
"""

from efficient_attention.attention.masks.base import (Grid, Mask, all_of, checked_batch, evaluate,
                                  per_head, render, split)
from efficient_attention.attention.masks.data import (document, from_array, global_tokens,
                                  listed_keys, key_lengths,
                                  key_starts, prefix_lm, query_lengths,
                                  random_blocks)
from efficient_attention.attention.masks.patterns import (block_window, causal, chunked, fixed,
                                      sliding_window,
                                      strided)



def from_arguments(is_causal, window, q_len, kv_len) -> list:
  """The masks `jax.nn.dot_product_attention`'s arguments ask for: causal,
  a `(left, right)` window, query and key lengths (None where unused)."""
  return [causal() if is_causal else None,
          sliding_window(*window) if window else None,
          query_lengths(q_len) if q_len is not None else None,
          key_lengths(kv_len) if kv_len is not None else None]


__all__ = [
    'block_window',
    'Grid',
    'Mask',
    'all_of',
    'checked_batch',
    'causal',
    'chunked',
    'document',
    'evaluate',
    'fixed',
    'from_array',
    'from_arguments',
    'global_tokens',
    'key_lengths',
    'key_starts',
    'listed_keys',
    'per_head',
    'prefix_lm',
    'query_lengths',
    'random_blocks',
    'render',
    'sliding_window',
    'split',
    'strided',
]
