"""Every mechanism stays reachable from Flax Linen through the functions."""

import functools

from flax import linen
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from efficient_attention import attention
from efficient_attention import models
D, HEADS = 32, 4


@pytest.mark.parametrize('mechanism', ['dot_product', 'blockwise'])
def test_linen_layer_with_our_function_equals_our_nnx_layer(mechanism):
  ours = models.MultiHeadAttention(D, HEADS, attention=mechanism,
                                   position=None, use_bias=True,
                                   rngs=nnx.Rngs(0))
  fn = functools.partial(attention.get(mechanism), is_causal=True)
  layer = linen.MultiHeadDotProductAttention(num_heads=HEADS, qkv_features=D,
                                             attention_fn=fn)
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 21, D)),
                  jnp.float32)
  params = layer.init(jax.random.key(0), x)
  # Same weights: Linen's DenseGeneral kernels have our shapes.
  state = nnx.state(ours, nnx.Param)
  for name in ('query', 'key', 'value', 'out'):
    params['params'][name]['kernel'] = state[name]['kernel'][...]
    params['params'][name]['bias'] = state[name]['bias'][...]
  want = ours(x, is_causal=True)
  got = layer.apply(params, x)
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
