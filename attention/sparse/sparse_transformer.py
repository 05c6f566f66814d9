"""The Sparse Transformer's factorised attention.

Child, Gray, Radford & Sutskever 2019, "Generating Long Sequences with
Sparse Transformers" (arXiv 1904.10509), Section 4 and Figure 3. Full
attention is replaced by two patterns A(1), A(2) whose composition reaches
every earlier position in two steps, each of about sqrt(N) keys per query
when the period l is about sqrt(N):

  strided  A(1): |i - j| < l            (the previous l positions)
           A(2): (i - j) mod l = 0      (every l-th position back)
  fixed    A(1): floor(j / l) = floor(i / l)   (the query's own block)
           A(2): j mod l >= l - c              (each block's last c, the
                                                "summary" positions)

with `j <= i` as well when `is_causal` (the paper's autoregressive model;
without it the same patterns attend both ways, as the paper's image and
text models do not need). Of the paper's three ways to combine them, this
implements the two that keep each head a plain softmax: the two patterns
on alternating heads (`part='both'`: head h takes A(1 + h % 2)), and one
pattern per layer (`part='first'` or `'second'` in alternating layers of a
model; `TransformerConfig` layer patterns do this). The merged head (one
softmax over A(1) | A(2)) is the mask `window | strided` given to
`blockwise_attention`, at the cost of every tile it touches, which for a
strided pattern is all of them.

Shapes: `query [B, T, N, H]`, `key/value [B, S, K, H]`, as every
mechanism. Cost: each head attends to about l (A(1)) or T / l (A(2), or
T c / l for fixed) keys per query: O(B N T (l + T / l) H) time, at
l = sqrt(T) O(B N T^1.5 H); memory O(B N (C^2 + T H)). A(2) of the strided
pattern is computed in residue-major order and A(2) of the fixed one over
the gathered summary keys (`attention.sparse.layouts`), so neither visits
tiles the pattern leaves empty. Decoding keeps the full KV cache (A(2)
reaches the whole past) and visits the tiles up to the step's position.
"""

from __future__ import annotations

import dataclasses

from efficient_attention.attention import masks
from efficient_attention.attention import options as options_lib
from efficient_attention.attention import registry
from efficient_attention.attention.decoding import kv_cache
from efficient_attention.attention.exact import blockwise
from efficient_attention.attention.masks import patterns
from efficient_attention.attention.sparse import patterned


@dataclasses.dataclass(frozen=True)
class SparseTransformerOptions(blockwise.BlockwiseOptions):
  """The pattern of `sparse_transformer_attention` and its tile sizes."""

  pattern: str = 'strided'  # 'strided' or 'fixed' (the paper's Figure 3)
  stride: int = 128  # l: window length and stride (strided), block
                     # length (fixed); about sqrt(T) balances the halves
  summary: int = 8  # c: summary positions at the end of each block
                    # (fixed only; the paper used c = 8 to 32)
  part: str = 'both'  # 'both': head h takes half 1 + h % 2; 'first' or
                      # 'second': every head takes that half (alternate
                      # them across layers for the per-layer factorisation)
  query_chunk_size: int = 128  # C_q, query rows per tile
  key_chunk_size: int = 128  # C_k, key columns per tile

  def __post_init__(self):
    super().__post_init__()
    where = 'SparseTransformerOptions'
    options_lib.check_choice(where, 'pattern', self.pattern,
                             ('strided', 'fixed'))
    options_lib.check_choice(where, 'part', self.part,
                             ('both', 'first', 'second'))
    options_lib.check_positive_int(where, 'stride', self.stride)
    options_lib.check_positive_int(where, 'summary', self.summary)
    if self.pattern == 'fixed' and self.summary > self.stride:
      raise ValueError(f'{where}: summary={self.summary} must be at most '
                       f'stride={self.stride}')


def parts(options: SparseTransformerOptions, T=None, S=None,
          is_causal=False):
  """The two halves of the pattern, or the one that `options.part` picks."""
  del T, S, is_causal
  l, c = options.stride, options.summary
  if options.pattern == 'strided':
    halves = [patterned.Part(masks.sliding_window(l - 1, l - 1)),
              patterned.Part(masks.strided(l), 'residue', l)]
  else:
    halves = [patterned.Part(masks.chunked(l)),
              patterned.Part(patterns.BlockEnds(l, c), 'ends', l, c)]
  return {'both': halves, 'first': halves[:1],
          'second': halves[1:]}[options.part]


def pattern(options: SparseTransformerOptions | None = None,
            **overrides) -> masks.Mask:
  """The pattern as one mask (per head for `part='both'`; without the
  causal half, which `is_causal` adds): what `blockwise_attention` or the
  dense reference take to compute the same attention."""
  options = SparseTransformerOptions.create(options, **overrides)
  return patterned.pattern_mask(parts(options))


sparse_transformer_attention = patterned.mechanism(
    'sparse_transformer_attention', SparseTransformerOptions, parts,
    module=__name__)
sparse_transformer_attention.__doc__ = f"""Sparse Transformer attention.

  Child et al. 2019, arXiv 1904.10509: the strided or fixed pattern,
  factorised over heads (`part='both'`) or one half per call (`'first'`,
  `'second'`, for the per-layer factorisation). See the module docstring
  for the math and `pattern(options)` for the equivalent mask.

  Args:
{patterned.ARGUMENTS_DOC}    pattern, stride, summary, part, query_chunk_size, key_chunk_size: the
      options (`SparseTransformerOptions`), as keywords or `options=`.

{patterned.RETURNS_DOC}
  Cost: O(B N T (l + T / l) H) time (each head attends about l or T / l
  keys per query), O(B N (C_q C_k + T H)) memory.
  """

init_state, step = kv_cache.decoding_pair(sparse_transformer_attention)

registry.register('sparse_transformer', sparse_transformer_attention,
                  options=SparseTransformerOptions, init_state=init_state,
                  step=step, exact=False)
