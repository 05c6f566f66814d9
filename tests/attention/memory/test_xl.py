"""Transformer-XL attention against a dense definition, and its cache."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from efficient_attention import attention
from efficient_attention.attention import positional
from efficient_attention.attention.memory import xl

B, T, N, K, H = 2, 37, 4, 2, 16


def inputs(seed=0, length=T, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  return tuple(jnp.asarray(rng.standard_normal((B, length, n, H)), dtype)
               for n in (N, K, K))


def definition(q, k, v, *, L, M, rope_base=None, stop_gradient=True):
  """Dense attention where token t sees keys in [t // L * L - M, t]; keys
  and values of earlier segments enter with their gradient stopped."""
  t = jnp.arange(q.shape[1])
  if rope_base is not None:
    q, k = (positional.rope(x, t, base=rope_base) for x in (q, k))
  segment = t // L
  visible = (t[None, :] <= t[:, None]) & (t[None, :] >= segment[:, None] * L
                                          - M)
  older = segment[None, :] < segment[:, None]  # [T, S]: a cached key
  G = N // K
  qg = q.reshape(B, T, K, G, H).astype(jnp.float32)
  sg = jax.lax.stop_gradient if stop_gradient else (lambda x: x)
  logits = jnp.where(older[None, None, None],
                     jnp.einsum('BTKGH,BSKH->BKGTS', qg, sg(k)),
                     jnp.einsum('BTKGH,BSKH->BKGTS', qg, k)) / H**0.5
  p = jax.nn.softmax(jnp.where(visible, logits, -1e30), axis=-1)
  out = (jnp.einsum('BKGTS,BSKH->BTKGH', jnp.where(older, p, 0), sg(v)) +
         jnp.einsum('BKGTS,BSKH->BTKGH', jnp.where(older, 0, p), v))
  return out.reshape(B, T, N, H)


@pytest.mark.parametrize('L,M,chunk,rope_base', [
    (8, 5, 4, None), (8, 16, 3, 100.0),
    pytest.param(5, 12, 7, None, marks=pytest.mark.slow),
    pytest.param(64, 0, 16, None, marks=pytest.mark.slow),
    pytest.param(6, 0, 4, 10000.0, marks=pytest.mark.slow)])
def test_equals_the_definition_outputs_and_gradients(L, M, chunk, rope_base):
  q, k, v = inputs()
  options = dict(L=L, M=M, rope_base=rope_base)
  fn = jax.jit(functools.partial(xl.xl_attention, segment_size=L,
                                 memory_length=M, chunk_size=chunk,
                                 rope_base=rope_base))
  np.testing.assert_allclose(fn(q, k, v), definition(q, k, v, **options),
                             atol=1e-5, rtol=1e-5)
  w = jnp.asarray(np.random.default_rng(9).standard_normal(q.shape))
  loss = lambda f: lambda *a: jnp.sum(f(*a) * w)
  got = jax.jit(jax.grad(loss(fn), argnums=(0, 1, 2)))(q, k, v)
  want = jax.jit(jax.grad(loss(functools.partial(definition, **options)),
                          argnums=(0, 1, 2)))(q, k, v)
  for g, e in zip(got, want):
    np.testing.assert_allclose(g, e, atol=1e-4, rtol=1e-4)


def test_gradient_is_stopped_at_the_cache_unless_asked():
  q, k, v = inputs()

  def last_segment(value, stop):
    out = xl.xl_attention(q, k, value, segment_size=8, memory_length=8,
                          stop_gradient=stop)
    return jnp.sum(out[:, 32:] ** 2)

  grad = jax.jit(jax.grad(last_segment), static_argnums=1)
  stopped = grad(v, True)
  np.testing.assert_array_equal(stopped[:, :32], 0.0)
  assert jnp.abs(stopped[:, 32:]).max() > 0
  flowing = grad(v, False)
  assert jnp.abs(flowing[:, 24:32]).max() > 1e-3  # the cached tokens
  np.testing.assert_array_equal(flowing[:, :24], 0.0)  # out of reach


def test_decoding_equals_one_call_and_state_size_is_fixed():
  q, k, v = inputs()
  options = dict(segment_size=8, memory_length=5, rope_base=100.0)
  whole = xl.xl_attention(q, k, v, **options)
  state = xl.init_state(B, K, H, segment_size=8, memory_length=5)
  step = jax.jit(functools.partial(xl.step, **options))
  # Whole segments from a segment's start (the parallel path), runs of
  # tokens across boundaries (one at a time), rows of different lengths.
  shapes = jax.tree.map(jnp.shape, state)
  for start, stop in ((0, 16), (16, 19), (19, 24), (24, 32)):
    out, state = step(state, q[:, start:stop], k[:, start:stop],
                      v[:, start:stop])
    np.testing.assert_allclose(out, whole[:, start:stop], atol=1e-5,
                               rtol=1e-5)
    assert jax.tree.map(jnp.shape, state) == shapes
  out, state = step(state, q[:, 32:], k[:, 32:], v[:, 32:],
                    num_new=jnp.array([5, 2]))
  np.testing.assert_allclose(out[0], whole[0, 32:], atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(out[1, :2], whole[1, 32:34], atol=1e-5,
                             rtol=1e-5)
  np.testing.assert_array_equal(state.cached, [5, 5])
  np.testing.assert_array_equal(state.fill, [5, 2])


def test_future_tokens_never_move_earlier_outputs():
  q, k, v = inputs()
  fn = jax.jit(functools.partial(xl.xl_attention, segment_size=8,
                                 memory_length=6, rope_base=10000.0))
  base = fn(q, k, v)
  noise = inputs(seed=3)
  for t0 in (3, 8, 20):
    moved = fn(*(x.at[:, t0:].set(y[:, t0:]) for x, y in zip(
        (q, k, v), noise)))
    np.testing.assert_array_equal(moved[:, :t0], base[:, :t0])
    assert not np.allclose(moved[:, t0:], base[:, t0:])


def test_compiled_memory_does_not_grow_with_length():
  def temp_bytes(length):
    spec = jax.ShapeDtypeStruct((2, length, 4, 64), jnp.float32)
    fn = jax.jit(functools.partial(xl.xl_attention, segment_size=1024,
                                   memory_length=1024))
    return fn.lower(spec, spec, spec).compile().memory_analysis(
        ).temp_size_in_bytes

  assert temp_bytes(65536) == temp_bytes(8192)


def test_lengths_bfloat16_and_errors():
  q, k, v = inputs()
  fn = functools.partial(xl.xl_attention, segment_size=8, memory_length=5)
  out = fn(q, k, v, key_value_seq_lengths=jnp.array([37, 20]),
           query_seq_lengths=jnp.array([37, 20]))
  short = fn(q[1:, :20], k[1:, :20], v[1:, :20])
  np.testing.assert_allclose(out[1, :20], short[0], atol=1e-6)
  np.testing.assert_array_equal(out[1, 20:], 0.0)
  half = fn(*(x.astype(jnp.bfloat16) for x in (q, k, v)))
  assert half.dtype == jnp.bfloat16
  np.testing.assert_allclose(half.astype(jnp.float32), fn(q, k, v),
                             atol=5e-2, rtol=5e-2)
  with pytest.raises(ValueError,
                     match='memory_length must be a non-negative int'):
    fn(q, k, v, memory_length=-1)
  with pytest.raises(ValueError, match='segment_size must be a positive'):
    fn(q, k, v, segment_size=0)
  with pytest.raises(ValueError, match='is_causal must be True'):
    fn(q, k, v, is_causal=False)
  with pytest.raises(ValueError, match='does not support local_window_size'):
    fn(q, k, v, local_window_size=4)
  state = xl.init_state(B, K, H, segment_size=8, memory_length=5)
  with pytest.raises(ValueError, match='do not match the state'):
    xl.step(state, q[:, :1], k[:, :1], v[:, :1], segment_size=8)
