"""Our functions in the `attention_fn=` slot of Flax's attention layers.

With the same weights, a Flax layer gives the same output with our function
as with its own default attention.
"""

import functools

from flax import linen
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from efficient_attention import attention
FUNCTIONS = {
    'dot_product': attention.dot_product_attention,
    'blockwise': functools.partial(attention.blockwise_attention,
                                   query_chunk_size=16, key_chunk_size=7),
}
B, T, D, HEADS = 2, 37, 32, 4


def inputs():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((B, T, D)), jnp.float32)
  y = jnp.asarray(rng.standard_normal((B, 23, D)), jnp.float32)
  return x, y


@pytest.mark.parametrize('name', FUNCTIONS)
def test_linen_layer_matches_its_default(name):
  x, y = inputs()
  kwargs = dict(num_heads=HEADS, qkv_features=D)
  default = linen.MultiHeadDotProductAttention(**kwargs)
  ours = linen.MultiHeadDotProductAttention(attention_fn=FUNCTIONS[name],
                                            **kwargs)
  causal = linen.make_causal_mask(jnp.ones((B, T)))
  params = default.init(jax.random.key(0), x, x, mask=causal)
  for args, mask in [((x, x), causal), ((x, y), None), ((x, x), None)]:
    want = jax.jit(default.apply)(params, *args, mask=mask)
    got = jax.jit(ours.apply)(params, *args, mask=mask)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('num_kv_heads', [HEADS, 2, 1])
@pytest.mark.parametrize('name', FUNCTIONS)
def test_nnx_layer_matches_its_default(name, num_kv_heads):
  x, y = inputs()
  make = functools.partial(nnx.MultiHeadAttention, num_heads=HEADS,
                           in_features=D, num_kv_heads=num_kv_heads,
                           decode=False)
  default = make(rngs=nnx.Rngs(0))
  ours = make(rngs=nnx.Rngs(0), attention_fn=FUNCTIONS[name])
  padding = jnp.arange(T)[None, :] < jnp.array([[T], [30]])
  mask = nnx.make_attention_mask(padding, padding)
  cases = [dict(inputs_q=x, mask=nnx.make_causal_mask(jnp.ones((B, T)))),
           dict(inputs_q=x, is_causal=True),
           dict(inputs_q=x, inputs_k=y, inputs_v=y)]
  run = lambda m, **kw: nnx.jit(lambda m: m(**kw))(m)  # eager is slower
  for kwargs in cases:
    want = run(default, **kwargs)
    got = run(ours, **kwargs)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
  # Padded queries see no key: ours gives zeros before the output
  # projection where Flax averages, so compare the real rows only.
  want, got = run(default, inputs_q=x, mask=mask), run(ours, inputs_q=x,
                                                        mask=mask)
  np.testing.assert_allclose(got[1, :30], want[1, :30], atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(got[0], want[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('name', FUNCTIONS)
def test_nnx_attention_dropout_is_refused_not_ignored(name):
  layer = nnx.MultiHeadAttention(num_heads=HEADS, in_features=D,
                                 dropout_rate=0.1, decode=False,
                                 attention_fn=FUNCTIONS[name],
                                 rngs=nnx.Rngs(0))
  x, _ = inputs()
  with pytest.raises(ValueError, match='dropout'):
    layer(x, deterministic=False)
  assert layer(x, deterministic=True).shape == (B, T, D)


def test_a_partial_is_silently_non_causal_attention_fn_is_not():
  """NNX passes is_causal on every call, overriding a partial's setting;
  attention.attention_fn keeps it (and checks its options when built)."""
  x, _ = inputs()
  make = functools.partial(nnx.MultiHeadAttention, num_heads=HEADS,
                           in_features=D, decode=False)
  causal = make(rngs=nnx.Rngs(0), attention_fn=FUNCTIONS['blockwise'])
  want = nnx.jit(lambda m: m(x, is_causal=True))(causal)
  trap = make(rngs=nnx.Rngs(0), attention_fn=functools.partial(
      FUNCTIONS['blockwise'], is_causal=True))
  assert not np.allclose(nnx.jit(lambda m: m(x))(trap), want, atol=1e-3)
  slot = make(rngs=nnx.Rngs(0), attention_fn=attention.attention_fn(
      'blockwise', is_causal=True, query_chunk_size=16, key_chunk_size=7))
  np.testing.assert_allclose(nnx.jit(lambda m: m(x))(slot), want,
                             atol=1e-5, rtol=1e-5)
  with pytest.raises(ValueError, match="unknown option 'query_chunk'"):
    attention.attention_fn('blockwise', query_chunk=16)
