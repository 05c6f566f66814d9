"""Exact kernels given `attention.masks` objects: equal to the reference
given the same mask as a dense array, outputs and gradients."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from efficient_attention import attention
from efficient_attention.attention import masks
from tests.attention import test_masks

T, S = test_masks.T, test_masks.S
B, N, K, H = 2, 4, 2, 16


def inputs(dtype=jnp.float32, seed=0):
  keys = jax.random.split(jax.random.key(seed), 3)
  shapes = [(B, T, N, H), (B, S, K, H), (B, S, K, H)]
  return [jax.random.normal(key, shape, dtype) for key, shape in
          zip(keys, shapes)]


def dense_of(mask):
  """`[B|1, N|1, T, S]` bool, for the reference's array path."""
  return masks.evaluate(mask.bind(T, S), N, T, S)


def _grads_program(fn):
  """jit(grad) of `sum(fn(q, k, v, mask=mask) * weights)`, with the output."""
  def loss(q, k, v, mask, weights):
    out = fn(q, k, v, mask=mask)
    return jnp.sum(out.astype(jnp.float32) * weights), out
  return jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True))


# The reference takes every mask as a full [B, N, T, S] array: one program
# (per dtype) serves all the masks below.
_REFERENCE = _grads_program(attention.dot_product_attention)


def outputs_and_grads(program, mask, dtype):
  """Output and gradients of q, k, v from one compiled program (the mask, a
  pytree, is an argument)."""
  q, k, v = inputs(dtype)
  weights = jax.random.normal(jax.random.key(9), (B, T, N, H), jnp.float32)
  grads, out = program(q, k, v, mask, weights)
  return [out] + list(grads)


def check(mask, dtype=jnp.float32, chunks=(16, 5), **options):
  blockwise = _grads_program(functools.partial(
      attention.blockwise_attention, query_chunk_size=chunks[0],
      key_chunk_size=chunks[1], **options))
  reference = _REFERENCE if not options else _grads_program(
      functools.partial(attention.dot_product_attention, **options))
  dense = jnp.broadcast_to(dense_of(mask), (B, N, T, S))
  got = outputs_and_grads(blockwise, mask, dtype)
  want = outputs_and_grads(reference, dense, dtype)
  tolerance = 1e-5 if dtype == jnp.float32 else 2e-2
  for name, a, b in zip(('out', 'dq', 'dk', 'dv'), got, want):
    np.testing.assert_allclose(np.asarray(a, np.float32),
                               np.asarray(b, np.float32), atol=tolerance,
                               rtol=tolerance, err_msg=name)
  return got[0]


# Complements and listed keys run inside Longformer's conformance tests.
@pytest.mark.parametrize('name', sorted(
    n for n in test_masks.MASKS
    if not n.startswith('not_') and n != 'listed_keys'))
def test_blockwise_with_each_mask_equals_the_reference(name):
  check(test_masks.MASKS[name]())


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16],
                         ids=['f32', 'bf16'])
def test_compositions_per_head_masks_and_bfloat16(dtype):
  ids = jnp.asarray(test_masks.SEGMENTS)
  mask = masks.per_head(
      masks.causal() & masks.sliding_window(6),
      masks.causal(S - T) & masks.strided(4)) | masks.global_tokens([2, 30])
  check(mask & masks.document(ids[:, :T], ids), dtype, chunks=(8, 16))


def test_mask_objects_combine_with_the_other_arguments():
  """A Mask with is_causal, lengths, a window, a bias and an array mask."""
  q_len, kv_len = jnp.array([37, 20]), jnp.array([45, 11])
  bias = jax.random.normal(jax.random.key(3), (B, N, T, S))
  extra = jax.random.bernoulli(jax.random.key(4), 0.8, (B, 1, T, S))
  out = check(masks.document(jnp.asarray(test_masks.SEGMENTS[:, :T]),
                             jnp.asarray(test_masks.SEGMENTS)),
              is_causal=True, query_seq_lengths=q_len,
              key_value_seq_lengths=kv_len, local_window_size=(9, 0),
              bias=bias, chunks=(7, 9))
  np.testing.assert_array_equal(out[1, 20:], 0.0)  # rows past the length
  array_and_object = jax.jit(functools.partial(
      attention.blockwise_attention, query_chunk_size=16, key_chunk_size=5))
  q, k, v = inputs()
  both = array_and_object(q, k, v, mask=masks.causal())
  np.testing.assert_allclose(
      both, array_and_object(q, k, v, mask=dense_of(masks.causal())),
      atol=1e-6)
  np.testing.assert_allclose(
      jax.jit(functools.partial(attention.blockwise_attention,
                                is_causal=True))(q, k, v, mask=extra),
      jax.jit(attention.dot_product_attention)(
          q, k, v, mask=extra & dense_of(masks.causal())), atol=1e-5)


def test_rows_that_see_nothing_are_zero_with_finite_gradients():
  mask = masks.chunked(8) & masks.key_lengths(jnp.array([45, 0]))
  out, dq, dk, dv = outputs_and_grads(_grads_program(functools.partial(
      attention.blockwise_attention, query_chunk_size=16,
      key_chunk_size=5)), mask, jnp.float32)
  np.testing.assert_array_equal(out[1], 0.0)
  assert all(np.isfinite(x).all() for x in (dq, dk, dv))


def test_a_data_mask_is_a_jit_argument_not_a_constant():
  traces = []

  @jax.jit
  def f(q, k, v, mask):
    traces.append(1)
    return attention.blockwise_attention(q, k, v, mask=mask,
                                         query_chunk_size=8,
                                         key_chunk_size=8)
  q, k, v = inputs()
  ids = [jnp.asarray(np.sort(np.random.default_rng(s).integers(0, 4, (B, S))))
         for s in (0, 1)]
  for segment_ids in ids:
    out = f(q, k, v, masks.document(segment_ids[:, :T], segment_ids))
    np.testing.assert_allclose(out, attention.dot_product_attention(
        q, k, v, mask=dense_of(masks.document(segment_ids[:, :T],
                                              segment_ids))), atol=1e-5)
  assert len(traces) == 1


def test_dot_product_takes_mask_objects_too():
  q, k, v = inputs()
  mask = masks.causal() & masks.sliding_window(5, 1)
  np.testing.assert_array_equal(
      attention.dot_product_attention(q, k, v, mask=mask),
      attention.dot_product_attention(q, k, v, mask=dense_of(mask)))


def test_a_mask_for_another_batch_size_raises():
  q, k, v = inputs()
  mask = masks.key_lengths(jnp.array([3, 4, 5]))
  for fn in (attention.blockwise_attention, attention.dot_product_attention):
    with pytest.raises(ValueError, match='mask holds data for 3 examples, '
                       'the inputs have B=2'):
      fn(q, k, v, mask=mask)


@pytest.mark.parametrize('offset', [7, (3, 12)], ids=['int', 'per-row'])
def test_a_query_offset_places_the_queries_for_every_rule(offset):
  """Causality, windows, masks and ALiBi read absolute query positions."""
  q, k, v = inputs()
  q = q[:, :9]
  offset = offset if isinstance(offset, int) else jnp.array(offset)
  options = dict(is_causal=True, local_window_size=(10, 0),
                 alibi_slopes=jnp.linspace(0.1, 1.0, N), query_offset=offset,
                 mask=masks.chunked(16))
  rows = np.broadcast_to(np.asarray(offset).reshape(-1, 1), (B, 1)) + (
      np.arange(9)[None, :])

  @jax.jit  # one program: the eager reference compiles op by op
  def run(q, k, v):
    return (attention.blockwise_attention(q, k, v, query_chunk_size=4,
                                          key_chunk_size=8, **options),
            attention.dot_product_attention(q, k, v, **options),
            attention.dot_product_attention(
                jnp.zeros((B, S, N, H)).at[np.arange(B)[:, None], rows].set(
                    q), k, v, **dict(options, query_offset=None)))

  got, want, full = run(q, k, v)
  np.testing.assert_allclose(got, want, atol=1e-5)
  # The reference itself: the same as its query rows at those positions.
  np.testing.assert_allclose(want, full[np.arange(B)[:, None], rows],
                             atol=1e-5)


@pytest.mark.parametrize('name', [  # one KV cache serves both
    'blockwise', pytest.param('dot_product', marks=pytest.mark.slow)])
def test_masks_work_in_decoding(name):
  """Token by token through the KV cache, with a per-head sparse pattern
  and packed documents, equals one causal call with the same mask."""
  mechanism = attention.get(name)
  q, k, v = inputs()
  q, k, v = q[:, :24], k[:, :24], v[:, :24]
  ids = jnp.asarray(test_masks.SEGMENTS[:, :24])
  mask = masks.per_head(masks.sliding_window(4), masks.strided(5) |
                        masks.fixed(8, 2)) & masks.document(ids)
  full = mechanism(q, k, v, is_causal=True, mask=mask)
  state = mechanism.init_state(B, K, H, max_length=32)
  step = jax.jit(functools.partial(mechanism.step, mask=mask))
  for t in range(24):
    out, state = step(state, q[:, t:t + 1], k[:, t:t + 1], v[:, t:t + 1])
    np.testing.assert_allclose(out[:, 0], full[:, t], atol=1e-5,
                               err_msg=f'position {t}')


@pytest.mark.parametrize('seed', range(3))
def test_random_compositions_through_the_kernel(seed):
  """Property test: random trees of &, | and per-head masks."""
  rng = np.random.default_rng(100 + seed)
  check(test_masks.random_tree(rng, 2) & test_masks.random_tree(rng, 1),
        chunks=(8, 7))
