"""Sparse Transformer: the patterns against the paper's definitions, and
the mechanism against the dense reference given the same pattern as a
dense mask, on both of its paths (reordered tiles, and the mask path that
decoding and position-dependent scores take)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from efficient_attention import attention
from efficient_attention.attention import masks
from efficient_attention.attention.sparse import layouts
from efficient_attention.attention.sparse import sparse_transformer as st
from tests.attention.sparse import reference

B, T, N, H = 2, 37, 4, 16
L, C = 6, 2  # stride (block length) and summary size: 37 = 6 * 6 + 1
CHUNKS = dict(query_chunk_size=16, key_chunk_size=5)  # divide nothing


def paper_pattern(pattern, half, l, c, T, causal):
  """A(half) of Child et al. 2019, Section 4.1, written from its sets."""
  allowed = np.zeros((T, T), bool)
  for i in range(T):
    for j in range(T):
      if pattern == 'strided':
        allowed[i, j] = abs(i - j) < l if half == 1 else (i - j) % l == 0
      else:
        allowed[i, j] = (j // l == i // l if half == 1 else
                         j % l >= l - c)
      allowed[i, j] &= (j <= i) or not causal
  return allowed


@pytest.mark.parametrize('pattern', ['strided', 'fixed'])
def test_pattern_is_the_papers(pattern):
  mask = st.pattern(pattern=pattern, stride=L, summary=C)
  dense = mask.dense(T, T, num_heads=2)
  causal = masks.causal().dense(T, T)
  for head, half in ((0, 1), (1, 2)):
    np.testing.assert_array_equal(
        dense[head], paper_pattern(pattern, half, L, C, T, False))
    np.testing.assert_array_equal(
        dense[head] & causal, paper_pattern(pattern, half, L, C, T, True))
  assert st.pattern(pattern=pattern, stride=L, summary=C,
                    part='second').dense(T, T).sum() == dense[1].sum()


def inputs(dtype, K=2, seed=0):
  keys = jax.random.split(jax.random.key(seed), 4)
  shapes = [(B, T, N, H), (B, T, K, H), (B, T, K, H), (B, T, N, H)]
  return [jax.random.normal(k, s, dtype) for k, s in zip(keys, shapes)]


def check(options, dtype, K=2, is_causal=True, user_mask=None, **kwargs):
  """Output and gradients equal the reference under the dense pattern."""
  pattern = st.pattern(**options).dense(T, T, num_heads=N)
  dense = pattern if user_mask is None else pattern & np.asarray(user_mask)
  return reference.assert_same(
      lambda q, k, v, mask: attention.sparse_transformer_attention(
          q, k, v, mask=mask, is_causal=is_causal, **options, **CHUNKS,
          **kwargs),
      lambda q, k, v, mask: attention.dot_product_attention(
          q, k, v, mask=mask, is_causal=is_causal, **kwargs),
      inputs(dtype, K), dtype, got_rest=(user_mask,),
      want_rest=(jnp.asarray(dense),))


# Each pattern and half, causal and not, GQA with G even (grouped) and odd
# (repeated keys), on the reordered path; float32 and bfloat16. The
# default suite runs the reordered halves ('first' is a window or block
# mask on the blockwise kernel, which test_masked_kernels covers) and
# bfloat16 on the strided factorisation over heads.
CASES = [
    ('strided', 'both', True, 2), ('strided', 'second', False, 2),
    ('fixed', 'both', False, 4), ('fixed', 'second', True, 1),
    ('strided', 'first', True, 4), ('fixed', 'first', False, 2),
]
F32, BF16 = jnp.float32, jnp.bfloat16


def _case(case, dtype):
  slow = case[1] == 'first' or (dtype == BF16 and case[:2] != (
      'strided', 'both'))
  return pytest.param(*case, dtype, marks=[pytest.mark.slow] if slow else [],
                      id='-'.join(map(str, case)) + ('-bf16' if dtype == BF16
                                                     else '-f32'))


@pytest.mark.parametrize('pattern,part,is_causal,K,dtype',
                         [_case(c, d) for d in (F32, BF16) for c in CASES])
def test_equals_the_dense_reference_under_its_pattern(pattern, part,
                                                      is_causal, K, dtype):
  check(dict(pattern=pattern, part=part, stride=L, summary=C), dtype, K=K,
        is_causal=is_causal)


@pytest.mark.parametrize('pattern', [
    'strided', pytest.param('fixed', marks=pytest.mark.slow)])
def test_mask_path_and_lengths_and_user_masks(pattern):
  """query_offset=0 and ALiBi take the mask path; lengths, a window and a
  user mask combine with the pattern on both paths."""
  options = dict(pattern=pattern, stride=L, summary=C)
  lengths = dict(query_seq_lengths=jnp.array([37, 20]),
                 key_value_seq_lengths=jnp.array([30, 11]))
  user = jnp.asarray(np.random.default_rng(0).random((B, 1, T, T)) < 0.8)
  reordered = check(options, jnp.float32, user_mask=user, **lengths)
  by_mask = check(options, jnp.float32, user_mask=user, query_offset=0,
                  **lengths)
  np.testing.assert_allclose(reordered, by_mask, atol=2e-6)
  check(options, jnp.float32, alibi_slopes=jnp.linspace(0.1, 1.0, N),
        local_window_size=(20, 0))


def test_reordering_visits_only_the_tiles_of_the_pattern():
  """Residue-major, the strided half is block-diagonal: at T = 1024 and
  l = 32 (blocks of 32) it visits 32 of 1024 tiles of 32 x 32; its
  summary is sound (never skips a visible pair, never calls a tile full
  that is not) for either layout."""
  T_, l = 1024, 32
  M = T_ // l
  residue = layouts.Layout('residue', l, M)
  strided = masks.strided(l) & masks.causal() & masks.key_lengths(T_)
  mask = masks.chunked(M) & layouts.at_positions(strided, residue, residue)
  layout = mask.layout(T_, T_, 32, 32)
  assert (layout > 0).sum() == 32
  ends = layouts.Layout('ends', l, 4)
  for m, S in ((mask, T_), (layouts.at_positions(
      masks.causal() & masks.key_lengths(T_), layouts.Layout(), ends),
                            T_ // l * 4)):
    dense = m.dense(T_, S).reshape(T_ // 32, 32, S // 32, 32)
    layout = m.layout(T_, S, 32, 32)
    assert not (dense.any((1, 3)) & (layout == 0)).any()
    assert dense.all((1, 3))[layout == 2].all()


def test_options_are_checked():
  q, k, v, _ = inputs(jnp.float32)
  with pytest.raises(ValueError, match="unknown option 'strid'"):
    attention.sparse_transformer_attention(q, k, v, strid=4)
  with pytest.raises(ValueError, match='pattern must be one of'):
    attention.sparse_transformer_attention(q, k, v, pattern='dilated')
  with pytest.raises(ValueError, match='summary=9 must be at most stride=8'):
    st.SparseTransformerOptions(pattern='fixed', stride=8, summary=9)


@pytest.mark.parametrize('pattern', [
    'fixed', pytest.param('strided', marks=pytest.mark.slow)])
def test_log_sum_exp_on_both_paths(pattern):
  q, k, v, _ = inputs(jnp.float32)
  options = dict(pattern=pattern, stride=L, summary=C, **CHUNKS)
  dense = jnp.asarray(st.pattern(**options).dense(T, T, num_heads=N))
  want = attention.dot_product_attention(q, k, v, mask=dense, is_causal=True,
                                         return_residual=True)
  for offset in (None, 0):  # reordered, mask path
    got = attention.sparse_transformer_attention(
        q, k, v, is_causal=True, query_offset=offset, return_residual=True,
        **options)
    for a, b in zip(got, want):
      np.testing.assert_allclose(a, b, atol=2e-5, rtol=2e-5)
