"""The rest of the `jax.nn` and Flax interface: `return_residual` (the
log-sum-exp) where a mechanism has one, and attention weights sown into a
Flax module by `dot_product_attention`, as Flax's own function sows them."""

import functools

from flax import linen
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from efficient_attention import attention
from efficient_attention.attention import arguments

EXACT = {
    'dot_product': attention.dot_product_attention,
    'blockwise': functools.partial(attention.blockwise_attention,
                                   query_chunk_size=4, key_chunk_size=3),
}


def _inputs(batch=(2,), T=7, S=7, N=4, K=2, H=8):
  keys = jax.random.split(jax.random.key(0), 3)
  return (jax.random.normal(keys[0], batch + (T, N, H)),
          jax.random.normal(keys[1], batch + (S, K, H)),
          jax.random.normal(keys[2], batch + (S, K, H)))


_SLOW = pytest.mark.slow


@pytest.mark.parametrize('name, batch', [
    ('blockwise', (2,)), ('dot_product', (2, 3)), ('blockwise', ()),
    pytest.param('dot_product', (2,), marks=_SLOW),
    pytest.param('dot_product', (), marks=_SLOW),
    pytest.param('blockwise', (2, 3), marks=_SLOW)],
                         ids=['B-blockwise', 'two-axes-dot_product',
                              'unbatched-blockwise', 'B-dot_product',
                              'unbatched-dot_product', 'two-axes-blockwise'])
def test_the_residual_is_jax_nn_s_log_sum_exp(name, batch):
  q, k, v = _inputs(batch)
  lengths = None if len(batch) != 1 else jnp.array([7, 5])
  fn = jax.jit(functools.partial(EXACT[name], is_causal=True,
                                 key_value_seq_lengths=lengths,
                                 return_residual=True))
  out, lse = fn(q, k, v)
  flat = lambda x: x.reshape((-1,) + x.shape[-3:]) if len(batch) > 1 else x
  want_out, want_lse = jax.jit(functools.partial(  # jax.nn: rank 3 or 4
      jax.nn.dot_product_attention, is_causal=True, return_residual=True))(
          flat(q), flat(k), flat(v), key_value_seq_lengths=lengths)
  want_out = want_out.reshape(out.shape)
  want_lse = want_lse.reshape(batch + want_lse.shape[-2:])
  assert lse.shape == want_lse.shape == batch + (7, 4)
  assert lse.dtype == q.dtype
  np.testing.assert_allclose(out, want_out, atol=2e-6)
  np.testing.assert_allclose(lse, want_lse, atol=2e-6)
  # The output and its gradient are those of the call without residual.
  grads = jax.jit(lambda q: (
      jax.grad(lambda q: fn(q, k, v)[0].sum())(q),
      jax.grad(lambda q: EXACT[name](q, k, v, is_causal=True,
                                     key_value_seq_lengths=lengths).sum())(q),
      jax.grad(lambda q: fn(q, k, v)[1].sum())(q)))(q)
  np.testing.assert_allclose(grads[0], grads[1], atol=1e-5)
  # The residual carries no gradient, as in jax.nn.
  assert not grads[2].any()


@pytest.mark.parametrize('name', EXACT)
def test_a_query_that_sees_no_key_has_residual_minus_inf(name):
  q, k, v = _inputs()
  out, lse = EXACT[name](q, k, v, key_value_seq_lengths=jnp.array([0, 3]),
                         return_residual=True)
  assert np.all(np.isneginf(lse[0])) and np.all(out[0] == 0)
  assert np.all(np.isfinite(lse[1]))
  out, lse = EXACT[name](q, k[:, :0], v[:, :0], return_residual=True)
  assert out.shape == q.shape and np.all(np.isneginf(lse))


@pytest.mark.parametrize('name', sorted(
    n for n in attention.names()
    if attention.get(n).fn.__name__ not in arguments.WITH_RESIDUAL))
def test_mechanisms_without_a_log_sum_exp_refuse_return_residual(name):
  q, k, v = _inputs(T=8, S=8)
  with pytest.raises(ValueError, match='no log-sum-exp.*return_residual'):
    attention.get(name)(q, k, v, is_causal=attention.get(name).causal,
                        return_residual=True)


def test_dot_product_sows_weights_into_nnx_as_flax_does():
  x = jax.random.normal(jax.random.key(1), (2, 5, 16))
  weights = []
  for fn in (nnx.dot_product_attention, attention.dot_product_attention):
    layer = nnx.MultiHeadAttention(num_heads=4, in_features=16, decode=False,
                                   attention_fn=fn, rngs=nnx.Rngs(0))
    forward = nnx.capture(lambda layer, x: layer(x, sow_weights=True),
                          nnx.Intermediate)
    _, intermediates = forward(layer, x)
    [sown] = jax.tree.leaves(intermediates)
    weights.append(sown)
  assert weights[1].shape == (2, 4, 5, 5)
  np.testing.assert_allclose(weights[1], weights[0], atol=1e-6)


def test_dot_product_sows_weights_into_linen_with_batch_axes():
  x = jax.random.normal(jax.random.key(1), (2, 3, 5, 16))  # two batch axes
  sown = []
  for fn in (linen.dot_product_attention, attention.dot_product_attention):
    layer = linen.MultiHeadDotProductAttention(num_heads=4, attention_fn=fn)
    params = layer.init(jax.random.key(0), x)
    _, state = layer.apply(params, x, sow_weights=True,
                           mutable=['intermediates'])
    [weights] = jax.tree.leaves(state['intermediates'])
    sown.append(weights)
  assert sown[1].shape == (2, 3, 4, 5, 5)
  np.testing.assert_allclose(sown[1], sown[0], atol=1e-6)


def test_blockwise_refuses_to_sow_weights_it_never_forms():
  q, k, v = _inputs()
  layer = nnx.MultiHeadAttention(num_heads=4, in_features=16, decode=False,
                                 attention_fn=attention.blockwise_attention,
                                 rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match='cannot sow attention weights'):
    layer(jnp.ones((1, 4, 16)), sow_weights=True)
  del q, k, v


@pytest.mark.parametrize('name', [
    'blockwise', pytest.param('dot_product', marks=_SLOW)])
def test_under_vmap_in_float16_as_jax_s_own_tests_call_it(name):
  """JAX's testDotProductAttention vmaps the function over the batch (so it
  sees unbatched [T, N, H]), with GQA and float16; outputs and gradients."""
  q, k, v = (x.astype(jnp.float16) for x in _inputs(T=9, S=9))
  fn = jax.vmap(EXACT[name], in_axes=(0, 0, 0, None, None))
  out, vjp = jax.vjp(fn, q, k, v, None, None)
  grads = vjp(jnp.ones_like(out))[:3]
  # Eager: jax.nn's float16 backward under jit asks XLA's CPU backend for
  # an F16_F16_F32 dot, which it refuses (jax 0.10.2).
  want, want_vjp = jax.vjp(jax.nn.dot_product_attention, q,
                           jnp.repeat(k, 2, 2), jnp.repeat(v, 2, 2))
  dq, dk, dv = want_vjp(jnp.ones_like(want))
  dk, dv = (x.reshape(2, 9, 2, 2, 8).sum(3) for x in (dk, dv))
  assert out.dtype == jnp.float16
  for got, ref in zip((out,) + tuple(grads), (want, dq, dk, dv)):
    np.testing.assert_allclose(np.asarray(got, np.float32),
                               np.asarray(ref, np.float32), atol=1e-2)
