"""Packed text batches (`config.data.pack`): windows spanning several
documents keep them apart, in the segment ids, the loss weights and the
model's outputs and losses."""

import functools

from flax import nnx
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from efficient_attention import models
from efficient_attention.experiments import data
from efficient_attention.experiments import train
from efficient_attention.experiments import validation
from tests.experiments import runs

# Three documents of 9, 12 and 15 bytes, one window over all of them.
DOCS = [b'the cat.\n', b'a dog ran.\n\n', b'birds sing now.']
STREAM = np.frombuffer(b''.join(DOCS), np.uint8)
STARTS = np.cumsum([0] + [len(d) for d in DOCS[:-1]])


def test_a_window_carries_its_documents_and_no_target_across_them():
  inputs, targets, weights, ids = data.eval_batch(
      STREAM, index=0, batch_size=1, sequence_length=35, documents=STARTS)
  np.testing.assert_array_equal(ids[0], [0] * 9 + [1] * 12 + [2] * 14)
  # The target of the last byte of a document is the next one's first.
  np.testing.assert_array_equal(np.nonzero(weights[0] == 0)[0], [8, 20])
  np.testing.assert_array_equal(inputs[0, 1:], targets[0, :-1])


def test_one_documents_change_leaves_the_others_losses_unchanged():
  config = models.TransformerConfig(
      vocab_size=256, model_dim=16, num_layers=1, num_heads=2,
      num_kv_heads=1, mlp_dim=32, max_length=64, attention='blockwise')
  model = models.DecoderLM(config, rngs=nnx.Rngs(0))
  batch = functools.partial(data.eval_batch, index=0, batch_size=1,
                            sequence_length=35, documents=STARTS)

  def token_losses(stream):
    inputs, targets, weights, ids = batch(stream)
    logits = model(jnp.asarray(inputs), segment_ids=jnp.asarray(ids))
    losses = optax.softmax_cross_entropy_with_integer_labels(
        logits, jnp.asarray(targets))
    return np.asarray(losses * weights)[0]

  changed = STREAM.copy()
  changed[9:21] = np.frombuffer(b'A DOG RAN!\n\n', np.uint8)  # document 1
  base, other = token_losses(STREAM), token_losses(changed)
  np.testing.assert_allclose(other[:8], base[:8], atol=1e-6)  # document 0
  np.testing.assert_allclose(other[21:], base[21:], atol=1e-6)  # document 2
  assert np.abs(other[9:20] - base[9:20]).max() > 1e-3


def test_the_job_trains_packed_and_refuses_what_cannot_be_packed(tmp_path):
  text = runs.write_text_file(tmp_path / 'text.txt')
  final = train.train_and_evaluate(
      runs.tiny_config(text, **{'data.pack': True}), str(tmp_path / 'run'))
  assert np.isfinite(final['eval_loss'])
  with pytest.raises(validation.ConfigError,
                     match="data.pack = True .* model.attention 'linear'"):
    validation.validate_config(runs.tiny_config(text, **{
        'data.pack': True, 'model.attention': 'linear'}))
  config = runs.tiny_config(text, **{'data.pack': True})
  config.data.source = 'copy'
  with pytest.raises(validation.ConfigError, match='a text source'):
    validation.validate_config(config)


def test_the_standard_library_corpus_knows_its_files():
  corpus = data.Corpus(STREAM, STREAM, STARTS, STARTS[:1])
  np.testing.assert_array_equal(corpus.starts('train'), STARTS)
  assert list(corpus.starts('validation')) == [0]
