"""Layer classes per family, and models mixing mechanisms across layers."""

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from efficient_attention import attention
from efficient_attention import models
from efficient_attention.models import layers

SLIDING = attention.AttentionSpec('blockwise', {'query_chunk_size': 4,
                                                'key_chunk_size': 4},
                                  mask='sliding_window(3)')
INFINI = attention.AttentionSpec('infini', {'segment_size': 4,
                                            'chunk_size': 2})
PATTERNS = {
    # Five sliding-window layers per global one, cut to three layers.
    'local_global': (SLIDING,) * 2 + ('blockwise',),
    # Infini-attention in some layers only.
    'infini_some': (INFINI, 'dot_product'),
}


def config(pattern, num_layers=3):
  return models.TransformerConfig(
      vocab_size=50, model_dim=16, num_layers=num_layers, num_heads=4,
      num_kv_heads=2, mlp_dim=32, attention=pattern, max_length=32)


def test_each_mechanism_gets_its_family_layer():
  want = {'blockwise': layers.MultiHeadAttention,
          'dot_product': layers.MultiHeadAttention,
          'linear': layers.MultiHeadAttention,
          'performer': layers.PerformerAttention,
          'lsh': layers.LSHAttention,
          'infini': layers.InfiniAttention,
          'xl': layers.XLAttention,
          'sparse_transformer': layers.MultiHeadAttention,
          'longformer': layers.LongformerAttention,
          'bigbird': layers.MultiHeadAttention,
          'linformer': layers.LinformerAttention}
  assert set(want) == set(attention.names())
  for name, cls in want.items():
    assert layers.layer_class(name) is cls
    layer = models.attention_layer(8, 2, attention=name, rngs=nnx.Rngs(0))
    assert type(layer) is cls
    assert layer.rope_inside == (name in ('infini', 'xl'))
  with pytest.raises(ValueError, match="needs the layer PerformerAttention"):
    models.MultiHeadAttention(8, 2, attention='performer', rngs=nnx.Rngs(0))


def test_the_pattern_repeats_over_layers():
  c = config(PATTERNS['local_global'], num_layers=7)
  specs = [c.layer_spec(i) for i in range(7)]
  assert specs == [SLIDING, SLIDING, attention.AttentionSpec('blockwise')] * 2 + [SLIDING]
  model = models.DecoderLM(config(PATTERNS['infini_some'], 3),
                           rngs=nnx.Rngs(0))
  kinds = [type(b.attention) for b in model.stack.blocks]
  assert kinds == [layers.InfiniAttention, layers.MultiHeadAttention,
                   layers.InfiniAttention]


@pytest.mark.parametrize('pattern', sorted(PATTERNS))
def test_mixed_models_train_and_decode_like_their_forward_pass(pattern):
  model = models.DecoderLM(config(PATTERNS[pattern],
                                  num_layers=len(PATTERNS[pattern])),
                           rngs=nnx.Rngs(0))
  x = jax.random.randint(jax.random.key(1), (2, 10), 0, 50)
  # Training: one optimizer step lowers the loss on this batch.
  optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)

  def loss_fn(model):
    logits = model(x[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(
        logits, x[:, 1:]).mean()

  @nnx.jit
  def train_step(model, optimizer):
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  before = train_step(model, optimizer)
  assert float(train_step(model, optimizer)) < float(before)
  # Decoding: a prompt, then one token at a time, equals the forward pass.
  full = nnx.jit(lambda model, x: model(x))(model, x)
  cache = model.init_cache(2, 16)
  decode = nnx.jit(lambda model, cache, x: model.decode(cache, x))
  logits, cache = decode(model, cache, x[:, :3])
  np.testing.assert_allclose(logits, full[:, :3], atol=1e-5, rtol=1e-5)
  for t in range(3, 10):
    logits, cache = decode(model, cache, x[:, t:t + 1])
    np.testing.assert_allclose(logits[:, 0], full[:, t], atol=1e-5,
                               rtol=1e-5)


def test_longformer_global_rows_use_their_own_projections():
  """With global_projections the layer owns a second set of projections,
  which change the global rows' outputs and nothing else."""
  spec = attention.AttentionSpec('longformer', {
      'window': 2, 'global_tokens': 1, 'global_projections': True,
      'query_chunk_size': 4, 'key_chunk_size': 4})
  layer = models.attention_layer(16, 4, num_kv_heads=2, attention=spec,
                                 rngs=nnx.Rngs(0))
  plain = models.attention_layer(16, 4, num_kv_heads=2, attention='longformer',
                                 rngs=nnx.Rngs(0))
  assert layer.global_query.kernel.shape == layer.query.kernel.shape
  assert plain.global_query is None
  x = jax.random.normal(jax.random.key(1), (2, 11, 16))
  before = layer(x)
  for dense in (layer.global_query, layer.global_key, layer.global_value):
    dense.kernel[...] = dense.kernel[...] * 2 + 0.1
  after = layer(x)
  changed = np.abs(np.asarray(after - before)).max(axis=(0, 2)) > 1e-6
  np.testing.assert_array_equal(changed, np.arange(11) == 0)
  with pytest.raises(ValueError, match='needs separate query projections'):
    models.attention_layer(16, 4, attention=spec, shared_qk=True,
                           rngs=nnx.Rngs(0))
