"""Randomised layers (Performer, LSH) keep their draw as non-trainable state."""

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from efficient_attention import models
def performer_lm():
  config = models.TransformerConfig(
      vocab_size=32, model_dim=32, num_layers=2, num_heads=4, num_kv_heads=2,
      mlp_dim=64, attention='performer',
      attention_options=(('num_features', 16), ('chunk_size', 4)))
  return models.DecoderLM(config, rngs=nnx.Rngs(0))


def projections(model):
  return [m.projection[...] for _, m in nnx.iter_modules(model)
          if isinstance(m, models.MultiHeadAttention)]


def tokens():
  return jnp.asarray(np.random.default_rng(0).integers(0, 32, (2, 12)))


def test_projection_is_state_but_not_a_parameter():
  model = performer_lm()
  first, second = projections(model)
  assert first.shape == (16, 8)  # [F, H]
  assert not np.allclose(first, second)  # each layer draws its own
  params = jax.tree.leaves(nnx.state(model, nnx.Param))
  assert not any(p.shape == (16, 8) for p in params)
  assert len(jax.tree.leaves(nnx.state(model, models.RandomProjection))) == 2


def test_training_leaves_the_projection_and_redraw_changes_it():
  model = performer_lm()
  before, x = projections(model), tokens()
  optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
  loss = lambda m: optax.softmax_cross_entropy_with_integer_labels(
      m(x[:, :-1]), x[:, 1:]).mean()
  forward = nnx.jit(lambda m: m(x))
  logits = forward(model)
  nnx.jit(lambda m, o: o.update(m, nnx.grad(loss)(m)))(model, optimizer)
  assert not np.allclose(forward(model), logits)  # the parameters moved
  for old, new in zip(before, projections(model)):
    np.testing.assert_array_equal(new, old)
  logits = forward(model)
  models.redraw_projections(model, jax.random.key(7))
  redrawn = projections(model)
  assert not np.allclose(redrawn[0], before[0])
  assert not np.allclose(forward(model), logits)
  again = performer_lm()
  models.redraw_projections(again, jax.random.key(7))
  np.testing.assert_array_equal(projections(again)[1], redrawn[1])


def test_lsh_layers_keep_a_hashing_key_that_redraw_changes():
  config = models.TransformerConfig(
      vocab_size=32, model_dim=32, num_layers=2, num_heads=4, mlp_dim=64,
      attention='lsh', attention_options=(('chunk_size', 4),
                                          ('num_buckets', 4)))
  model = models.DecoderLM(config, rngs=nnx.Rngs(0))
  keys = projections(model)
  assert [k.shape for k in keys] == [(2,), (2,)]
  assert not np.array_equal(keys[0], keys[1])
  assert not any(p.dtype == jnp.uint32 for p in jax.tree.leaves(
      nnx.state(model, nnx.Param)))
  forward = nnx.jit(lambda m: m(tokens()))
  logits = forward(model)
  np.testing.assert_array_equal(forward(model), logits)  # same key, same
  models.redraw_projections(model, jax.random.key(7))
  assert not np.array_equal(projections(model)[0], keys[0])
  assert not np.allclose(forward(model), logits)  # new buckets
