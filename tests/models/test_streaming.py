"""Models that stream a long input segment by segment (Infini, XL)."""

import dataclasses

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from efficient_attention import models
SEGMENT = 8
OPTIONS = {
    'infini': (('chunk_size', 4), ('segment_size', SEGMENT)),
    'xl': (('chunk_size', 4), ('memory_length', 6),
           ('segment_size', SEGMENT)),
}


def model_for(mechanism, **changes):
  c = models.TransformerConfig(
      vocab_size=50, model_dim=32, num_layers=2, num_heads=4, num_kv_heads=2,
      mlp_dim=64, attention=mechanism, attention_options=OPTIONS[mechanism],
      **changes)
  model = models.DecoderLM(c, rngs=nnx.Rngs(0))
  if mechanism == 'infini':  # Gates away from 1/2, different per head.
    for _, layer in nnx.iter_modules(model):
      if isinstance(layer, models.MultiHeadAttention):
        layer.learned[...] = jnp.linspace(-2.0, 2.0, 4)[None]
  return model


def tokens(B=2, T=40, seed=0):
  return jnp.asarray(np.random.default_rng(seed).integers(0, 50, (B, T)),
                     jnp.int32)


@pytest.mark.parametrize('mechanism', sorted(OPTIONS))
def test_streaming_segments_equals_one_call(mechanism):
  model = model_for(mechanism)
  x = tokens()
  whole = nnx.jit(lambda m, x: m(x))(model, x)
  decode = nnx.jit(lambda m, cache, t: m.decode(cache, t))
  cache, outs = model.init_cache(2, 64), []
  for start, stop in ((0, 16), (16, 24), (24, 27), (27, 32), (32, 40)):
    logits, cache = decode(model, cache, x[:, start:stop])
    outs.append(logits)
  np.testing.assert_allclose(jnp.concatenate(outs, 1), whole, atol=1e-4,
                             rtol=1e-4)
  # The state's size is fixed: the same shapes after 16 or 40 tokens.
  short = decode(model, model.init_cache(2, 64), x[:, :16])[1]
  assert (jax.tree.map(jnp.shape, short['layers']) ==
          jax.tree.map(jnp.shape, cache['layers']))


@pytest.mark.parametrize('mechanism', sorted(OPTIONS))
def test_reset_starts_a_new_document(mechanism):
  model = model_for(mechanism)
  x = tokens()
  decode = nnx.jit(lambda m, cache, t: m.decode(cache, t))
  cache = model.init_cache(2, 64)
  _, cache = decode(model, cache, x[:, :16])
  cache = models.reset_rows(cache, jnp.array([False, True]),
                            model.init_cache(2, 64))
  later, _ = decode(model, cache, x[:, 16:32])
  fresh = nnx.jit(lambda m, x: m(x))(model, x[:, 16:32])
  np.testing.assert_allclose(later[1], fresh[1], atol=1e-4, rtol=1e-4)
  assert not np.allclose(later[0], fresh[0], atol=1e-2)


def test_memory_is_content_only_and_the_gate_is_learned():
  """RoPE is the mechanism's: rotating inputs would give other outputs."""
  fresh = models.DecoderLM(models.TransformerConfig(
      vocab_size=50, model_dim=32, num_layers=1, num_heads=4,
      attention='infini'), rngs=nnx.Rngs(0))
  np.testing.assert_array_equal(
      fresh.stack.blocks[0].attention.learned[...], -3.0)  # g = 0.05
  model = model_for('infini')
  layer = model.stack.blocks[0].attention
  assert layer.learned[...].shape == (1, 4)
  assert isinstance(layer.learned, nnx.Param)
  arguments = layer._kernel_arguments()
  assert arguments['rope_base'] == layer.rope_base
  np.testing.assert_array_equal(arguments['gate_logits'], layer.learned[0])
  x = jax.random.normal(jax.random.key(0), (2, 24, 32))
  query, key, value = layer._project(x, x, jnp.arange(24), jnp.arange(24))
  # Projected queries and keys carry no rotation: the plain projection.
  np.testing.assert_array_equal(query, layer.query(x))
  np.testing.assert_array_equal(key, layer.key(x))
  grads = nnx.jit(nnx.grad(lambda m: jnp.sum(m(tokens(T=24)) ** 2)))(model)
  assert jnp.abs(grads.stack.blocks[0].attention.learned[...]).max() > 0
