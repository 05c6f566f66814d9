"""The passkey experiment's pieces, end to end at a tiny size."""

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
import numpy as np
import pytest

from efficient_attention.experiments import model_config
from efficient_attention.experiments import passkey_eval as passkey
from efficient_attention.experiments import tasks
from efficient_attention.experiments import train
from efficient_attention.experiments import validation
from efficient_attention.experiments.configs import passkey as passkey_config


def tiny():
  config = passkey_config.get_config()
  # Filler bytes: 20 for steps 0 and 1, then 40 (121 tokens per example).
  config.data.size, config.data.size_schedule = 20, ((2, 40),)
  config.data.eval_size = 40
  config.model.attention_options = {'segment_size': 32, 'chunk_size': 16}
  config.model.model_dim, config.model.mlp_dim = 16, 32
  config.train.batch_size, config.train.num_steps = 2, 3
  config.train.warmup_steps, config.train.eval_batches = 1, 1
  return config


def test_variants_and_lengths():
  config = tiny()
  xl = passkey.variant_config(config, 'xl').model
  assert xl.attention == 'xl' and xl.attention_options['memory_length'] == 32
  window = passkey.variant_config(config, 'window').model
  assert window.attention == 'blockwise'
  assert window.attention_mask == 'sliding_window(32)'
  spec = model_config.transformer_config(
      passkey.variant_config(config, 'window')).layer_spec(0)
  assert spec.window == (32, 0)  # decodes on a ring of 32 tokens
  assert config.model.attention == 'infini'  # not mutated
  with pytest.raises(ValueError, match='variant must be one of'):
    passkey.variant_config(config, 'lsh')
  length = lambda m: len(tasks.passkey(np.random.default_rng(1),
                                       passkey.filler_size(config, m))[0])
  assert length(4) == 4 * length(1) and length(1) == 121


@pytest.mark.slow  # train + three evaluations
def test_train_evaluate_and_table(tmp_path):
  config = tiny()
  results = {}
  lengths = passkey.columns(config, [1, 4])
  assert lengths == {'first size': 20, '1x': 40, '4x': 4 * 121 - 81}
  for variant in ('infini',):  # training a second variant adds only time
    variant_config = passkey.variant_config(config, variant)
    state = train.trained_state(variant_config, str(tmp_path / variant))
    assert int(state['step']) == 3
    results[variant] = {label: passkey.evaluate(variant_config, state,
                                                filler, 3)
                        for label, filler in lengths.items()}
    for scores in results[variant].values():
      assert 0.0 <= scores['key_accuracy'] <= scores['digit_accuracy'] <= 1
  assert results['infini']['4x']['tokens'] == 4 * 121
  results['window'] = results['infini']  # the table's second row
  text = passkey.table(results, ['infini', 'window'], list(lengths))
  assert text.splitlines()[0] == (
      '| trained up to ~1k tokens | first size (101 tokens) '
      '| 1x (121 tokens) | 4x (484 tokens) |')
  assert text.splitlines()[3].startswith('| sliding window | ')


def test_curriculum_sizes_and_their_validation():
  config = tiny()
  assert [train.task_size(config, step) for step in range(4)] == [
      20, 20, 40, 40]
  config.data.size_schedule = ((5, 0),)
  with pytest.raises(ValueError, match='data.size_schedule'):
    validation.validate_config(config)


def test_training_can_score_every_token():
  mesh = Mesh(np.array(jax.devices()[:1]), ('data',))
  for score_all in (False, True):
    config = tiny()
    config.data.score_all_tokens = score_all
    run = train.Run(config, None, None,
                    NamedSharding(mesh, PartitionSpec('data')), None)
    _, _, weights, segment_ids = run.batch(0)
    assert segment_ids is None  # tasks are not packed
    assert bool((np.asarray(weights) == 1).all()) == score_all
    _, _, weights, _ = run.eval_batch(0)  # evaluation scores the key only
    assert np.asarray(weights).sum() == 5 * config.train.batch_size
