"""Sliding-window decoding from a ring of the window's keys."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from efficient_attention import attention
from efficient_attention.attention.decoding import ring_cache

B, T, N, K, H, LEFT = 2, 29, 4, 2, 16, 6


def inputs(seed=0):
  keys = jax.random.split(jax.random.key(seed), 3)
  return (jax.random.normal(keys[0], (B, T, N, H)),
          jax.random.normal(keys[1], (B, T, K, H)),
          jax.random.normal(keys[2], (B, T, K, H)))


@pytest.mark.parametrize('name', ['blockwise', 'dot_product'])
def test_ring_decoding_equals_the_windowed_causal_call(name):
  mechanism = attention.get(name)
  options = dict(local_window_size=(LEFT, 0),
                 alibi_slopes=jnp.linspace(0.2, 1.0, N))
  q, k, v = inputs()
  full = mechanism(q, k, v, is_causal=True, **options)
  state = mechanism.init_state(B, K, H, max_length=1 << 20,
                               local_window_size=(LEFT, 0))
  assert isinstance(state, ring_cache.RingCache)
  assert state.key.shape == (B, LEFT, K, H)  # not the max_length
  step = jax.jit(functools.partial(mechanism.step, **options))
  # Prompts of 9 and 4 tokens in one call (ragged), a 3-token step (more
  # than fits before the ring wraps for row 1), then one token at a time.
  lengths = jnp.array([9, 4])
  out, state = step(state, q[:, :9], k[:, :9], v[:, :9], num_new=lengths)
  np.testing.assert_allclose(out[0], full[0, :9], atol=1e-5)
  np.testing.assert_allclose(out[1, :4], full[1, :4], atol=1e-5)
  rows = [9, 4]
  while max(rows) < T:
    size = 3 if rows[0] == 9 else 1
    take = lambda x: jnp.stack([x[b, rows[b]:rows[b] + size]
                                for b in range(B)])
    out, state = step(state, take(q), take(k), take(v))
    for b in range(B):
      np.testing.assert_allclose(out[b], full[b, rows[b]:rows[b] + size],
                                 atol=1e-5, err_msg=f'row {b} at {rows[b]}')
    rows = [r + size for r in rows]
  np.testing.assert_array_equal(state.length, rows)


def test_the_ring_is_constant_in_the_stream_length():
  """No max_length to run past: a row can stream for ever."""
  mechanism = attention.get('blockwise')
  state = mechanism.init_state(1, K, H, max_length=64,
                               local_window_size=LEFT)
  state = state._replace(length=jnp.array([10**9]))  # a billion tokens in
  q, k, v = (x[:1, :1] for x in inputs())
  out, new = mechanism.step(state, q, k, v, local_window_size=LEFT)
  assert np.isfinite(out).all() and int(new.length[0]) == 10**9 + 1
  assert jax.tree.map(jnp.shape, new) == jax.tree.map(jnp.shape, state)


def test_a_ring_refuses_another_window():
  mechanism = attention.get('blockwise')
  state = mechanism.init_state(1, K, H, max_length=64,
                               local_window_size=(LEFT, 0))
  q, k, v = (x[:1, :1] for x in inputs())
  with pytest.raises(ValueError, match='decodes a causal window of left=6'):
    mechanism.step(state, q, k, v, local_window_size=(LEFT + 1, 0))
