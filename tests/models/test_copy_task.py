"""The original Transformer learns to copy: loss near zero (about 30 s on
the 2-core CPU, so in the slow suite)."""

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from efficient_attention import models
VOCAB, LENGTH, BOS = 12, 8, 1  # tokens 2..11 are content


def batch(rng, size=64):
  source = rng.integers(2, VOCAB, (size, LENGTH))
  target_in = np.concatenate([np.full((size, 1), BOS), source[:, :-1]], 1)
  return jnp.asarray(source), jnp.asarray(target_in), jnp.asarray(source)


@pytest.mark.slow
def test_encoder_decoder_learns_copy_task():
  config = models.TransformerConfig(
      vocab_size=VOCAB, model_dim=64, num_layers=2, num_heads=4, mlp_dim=128,
      mlp='gelu', norm='layer', post_norm=True, position='sinusoidal',
      attention='blockwise')
  model = models.EncoderDecoder(config, rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)

  @nnx.jit
  def train_step(model, optimizer, source, target_in, target_out):
    def loss_fn(model):
      logits = model(source, target_in)
      return optax.softmax_cross_entropy_with_integer_labels(
          logits, target_out).mean()
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  rng = np.random.default_rng(0)
  for _ in range(400):
    loss = train_step(model, optimizer, *batch(rng))
  source, target_in, target_out = batch(np.random.default_rng(1))
  logits = model(source, target_in)
  accuracy = float((logits.argmax(-1) == target_out).mean())
  assert float(loss) < 0.05, float(loss)
  assert accuracy > 0.99, accuracy
