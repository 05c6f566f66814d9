"""Packed documents: segment ids keep documents apart in every mechanism
that takes a mask, and positions restart per document."""

from flax import nnx
import jax.numpy as jnp
import numpy as np
import pytest

from efficient_attention import attention
from efficient_attention import models

MASKED = [n for n in attention.names()
          if 'mask' not in attention.get(n).refuses and
          attention.get(n).causal]


def _model(mechanism, position='rope'):
  config = models.TransformerConfig(
      vocab_size=32, model_dim=16, num_layers=1, num_heads=2,
      num_kv_heads=1, mlp_dim=32, max_length=64, attention=mechanism,
      position=position)
  return models.DecoderLM(config, rngs=nnx.Rngs(0))


def test_positions_restart_per_document():
  ids = jnp.array([[0, 0, 0, 1, 1, 2, 2, 2, 2]])
  np.testing.assert_array_equal(models.transformer.segment_positions(ids),
                                [[0, 1, 2, 0, 1, 0, 1, 2, 3]])


@pytest.mark.parametrize('mechanism', [
    m if m in ('blockwise', 'longformer') else
    pytest.param(m, marks=pytest.mark.slow) for m in MASKED])
def test_a_packed_document_is_the_document_alone(mechanism):
  """Each document of a packed row gets the logits it gets alone, and
  changing one document leaves the others' logits unchanged."""
  model = _model(mechanism, position='learned' if mechanism == 'blockwise'
                 else 'rope')
  rng = np.random.default_rng(0)
  first, second = rng.integers(0, 32, 10), rng.integers(0, 32, 14)
  tokens = jnp.asarray(np.concatenate([first, second]))[None]
  ids = jnp.asarray([0] * 10 + [1] * 14)[None]
  packed = model(tokens, segment_ids=ids)
  np.testing.assert_allclose(packed[0, :10], model(tokens[:, :10])[0],
                             atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(packed[0, 10:], model(tokens[:, 10:])[0],
                             atol=1e-5, rtol=1e-5)
  other = tokens.at[0, :10].set(jnp.asarray(rng.integers(0, 32, 10)))
  np.testing.assert_allclose(model(other, segment_ids=ids)[0, 10:],
                             packed[0, 10:], atol=1e-6)


def test_mechanisms_without_masks_refuse_segment_ids():
  model = _model('linear')
  with pytest.raises(ValueError, match='does not support mask'):
    model(jnp.zeros((1, 8), jnp.int32),
          segment_ids=jnp.zeros((1, 8), jnp.int32))
  with pytest.raises(ValueError, match=r'segment_ids must be \[B, T\]'):
    _model('blockwise')(jnp.zeros((1, 8), jnp.int32),
                        segment_ids=jnp.zeros((1, 7), jnp.int32))
