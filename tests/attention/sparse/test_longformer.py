"""Longformer: the pattern against the paper's definition, the mechanism
against the dense reference under the same pattern (window, dilation,
global tokens, both paths), and decoding in constant memory."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from efficient_attention import attention
from efficient_attention.attention.decoding import ring_cache
from efficient_attention.attention.sparse import longformer as lf
from tests.attention.sparse import reference

B, T, N, H = 2, 37, 4, 16
CHUNKS = dict(query_chunk_size=16, key_chunk_size=5)  # divide nothing
# Per example: a repeat (counted once), an unused entry, one past T.
GLOBALS = np.array([[5, 20, -1, 5], [36, 0, 3, 50]], np.int32)


def paper_pattern(w, d, globals_, T, causal):
  """Beltagy et al. 2020, Section 3.1, from its sets, per example."""
  out = np.zeros((len(globals_), T, T), bool)
  for b, listed in enumerate(globals_):
    for i in range(T):
      for j in range(T):
        local = abs(i - j) <= w * d and (i - j) % d == 0
        out[b, i, j] = (local or i in listed or j in listed) and (
            j <= i or not causal)
  return out


def test_pattern_is_the_papers():
  mask = lf.pattern(window=3, dilation=2, global_tokens=1,
                    global_positions=GLOBALS, batch_size=B)
  listed = [set(row[(row >= 0) & (row < T)]) | {0} for row in GLOBALS]
  np.testing.assert_array_equal(mask.dense(T, T),
                                paper_pattern(3, 2, listed, T, False))


def inputs(dtype, seed=0):
  keys = jax.random.split(jax.random.key(seed), 4)
  shapes = [(B, T, N, H), (B, T, 2, H), (B, T, 2, H), (B, T, N, H)]
  return [jax.random.normal(k, s, dtype) for k, s in zip(keys, shapes)]


def check(options, dtype=jnp.float32, global_positions=None, **kwargs):
  dense = lf.pattern(global_positions=global_positions, batch_size=B,
                     **options).dense(T, T)
  dense = jnp.asarray(np.broadcast_to(dense, (B, T, T))[:, None])
  reference.assert_same(
      functools.partial(attention.longformer_attention,
                        global_positions=global_positions, **options,
                        **CHUNKS, **kwargs),
      functools.partial(attention.dot_product_attention, mask=dense,
                        **kwargs), inputs(dtype), dtype)


@pytest.mark.parametrize('dilation,global_tokens,listed,is_causal,dtype', [
    (1, 1, True, True, jnp.float32),
    (3, 0, True, False, jnp.float32),
    pytest.param(2, 2, False, True, jnp.bfloat16, marks=pytest.mark.slow),
    (1, 0, False, False, jnp.bfloat16),
    pytest.param(3, 2, True, True, jnp.bfloat16, marks=pytest.mark.slow),
], ids=['window-globals-causal', 'dilated-listed', 'dilated-first-bf16',
        'window-bf16', 'dilated-all-bf16'])
def test_equals_the_dense_reference_under_its_pattern(
    dilation, global_tokens, listed, is_causal, dtype):
  check(dict(window=4, dilation=dilation, global_tokens=global_tokens),
        dtype, global_positions=GLOBALS if listed else None,
        is_causal=is_causal)


def test_mask_path_with_lengths():
  """query_offset=0 takes the mask path (as decoding does): same result,
  with padded queries and keys."""
  check(dict(window=4, dilation=2, global_tokens=1), query_offset=0,
        global_positions=GLOBALS, is_causal=True,
        query_seq_lengths=jnp.array([37, 20]),
        key_value_seq_lengths=jnp.array([30, 11]))


def test_window_only_decodes_from_a_ring_of_constant_size():
  options = dict(window=3, dilation=2, **CHUNKS)
  q, k, v, _ = inputs(jnp.float32)
  want = attention.longformer_attention(q, k, v, is_causal=True, **options)
  sizes = set()
  for max_length in (40, 4096):
    state = lf.init_state(B, 2, H, max_length=max_length, **options)
    sizes.add(jax.tree.map(jnp.shape, state))
  assert len(sizes) == 1
  assert isinstance(state, ring_cache.RingCache)
  assert state.key.shape == (B, 6, 2, H)  # window * dilation
  step = jax.jit(functools.partial(lf.step, **options))
  for t in range(0, T, 4):  # four tokens a step
    out, state = step(state, q[:, t:t + 4], k[:, t:t + 4], v[:, t:t + 4])
    np.testing.assert_allclose(out, want[:, t:t + 4], atol=2e-6)


def test_global_positions_cannot_decode_and_options_are_checked():
  q, k, v, _ = inputs(jnp.float32)
  state = lf.init_state(B, 2, H, max_length=40, window=3)
  with pytest.raises(ValueError, match='no global_positions'):
    lf.step(state, q[:, :1], k[:, :1], v[:, :1], window=3,
            global_positions=GLOBALS)
  with pytest.raises(ValueError, match="unknown option 'windw'"):
    attention.longformer_attention(q, k, v, windw=3)
  with pytest.raises(ValueError, match='dilation must be a positive int'):
    attention.longformer_attention(q, k, v, dilation=0)
  with pytest.raises(ValueError, match=r'global_positions must be .*\[B, P\]'):
    attention.longformer_attention(q, k, v, global_positions=jnp.arange(3))


def global_reference(options, is_causal):
  """Section 3.1 with two sets of projections: the local rows under the
  pattern (global keys from the local set), the global rows over every
  key from the global set."""
  dense = lf.pattern(global_positions=GLOBALS, batch_size=B,
                     **options).dense(T, T)
  dense = jnp.asarray(np.broadcast_to(dense, (B, T, T))[:, None])
  listed = np.zeros((B, T), bool)
  listed[:, :options['global_tokens']] = True
  for b, row in enumerate(GLOBALS):
    listed[b, row[(row >= 0) & (row < T)]] = True

  def fn(q, k, v, gq, gk, gv):
    local = attention.dot_product_attention(q, k, v, mask=dense,
                                            is_causal=is_causal)
    rows = attention.dot_product_attention(gq, gk, gv, is_causal=is_causal)
    return jnp.where(listed[:, :, None, None], rows, local)
  return fn


@pytest.mark.parametrize('path', ['reordered', 'mask'])
def test_global_rows_attend_with_their_own_projections(path):
  """Outputs and the gradients of all six inputs against the reference;
  `return_residual` takes the mask path."""
  options = dict(window=4, dilation=2, global_tokens=1)
  q, k, v, weights = inputs(jnp.float32)
  gq, gk, gv, _ = inputs(jnp.float32, seed=1)

  def got(*qkv):
    out = attention.longformer_attention(
        *qkv[:3], global_query=qkv[3], global_key=qkv[4],
        global_value=qkv[5], global_positions=GLOBALS, is_causal=True,
        global_projections=True, return_residual=path == 'mask',
        **options, **CHUNKS)
    return out[0] if path == 'mask' else out

  want = global_reference(options, is_causal=True)
  program = lambda fn: jax.jit(jax.grad(
      lambda *x: (jnp.sum(fn(*x) * weights), fn(*x)), argnums=range(6),
      has_aux=True))
  (got_grads, got_out), (want_grads, want_out) = (
      program(fn)(q, k, v, gq, gk, gv) for fn in (got, want))
  np.testing.assert_allclose(got_out, want_out, atol=2e-6)
  for name, a, b in zip(['q', 'k', 'v', 'gq', 'gk', 'gv'], got_grads,
                        want_grads):
    np.testing.assert_allclose(a, b, atol=2e-5, err_msg=name)
    assert float(jnp.abs(b).max()) > 0, name


def test_global_projections_are_checked():
  q, k, v, _ = inputs(jnp.float32)
  fn = functools.partial(attention.longformer_attention, window=3,
                         global_tokens=1)
  with pytest.raises(ValueError, match="needs the global rows' own"):
    fn(q, k, v, global_projections=True)
  with pytest.raises(ValueError, match=r"missing \['global_value'\]"):
    fn(q, k, v, global_query=q, global_key=k)
  with pytest.raises(ValueError, match='global_key must have the shape of '
                     'key'):
    fn(q, k, v, global_query=q, global_key=q, global_value=v)
  with pytest.raises(ValueError, match='cannot combine with query_offset'):
    fn(q, k, v, global_query=q, global_key=k, global_value=v,
       query_offset=0)
  state = lf.init_state(B, 2, H, max_length=40, window=3, global_tokens=1)
  with pytest.raises(ValueError, match='second cache'):
    lf.step(state, q[:, :1], k[:, :1], v[:, :1], window=3, global_tokens=1,
            global_projections=True)
