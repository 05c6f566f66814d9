"""The duplication experiment (Reformer's Table 2) end to end, tiny."""

import pytest

from efficient_attention.experiments import duplication_eval as duplication
from efficient_attention.experiments import train
from efficient_attention.experiments.configs import duplication as duplication_config


def tiny():
  config = duplication_config.get_config()
  config.data.size, config.data.max_length = 7, 16  # 15 input tokens
  config.model.attention_options = {'num_hashes': 4, 'chunk_size': 4,
                                    'num_buckets': 4}
  config.model.model_dim, config.model.mlp_dim = 16, 32
  config.model.num_heads = config.model.num_kv_heads = 2
  config.train.batch_size, config.train.num_steps = 4, 4
  config.train.warmup_steps, config.train.eval_batches = 1, 1
  return config


def test_variants_change_only_the_hashing():
  config = tiny()
  full = duplication.variant_config(config, 'full').model.attention_options
  assert full['chunk_size'] == 16 and full['num_hashes'] == 1
  two = duplication.variant_config(config, 'lsh-2').model.attention_options
  assert dict(two) == {'num_hashes': 2, 'chunk_size': 4, 'num_buckets': 4}
  assert config.model.attention_options['num_hashes'] == 4  # not mutated
  with pytest.raises(ValueError, match='full or lsh-P'):
    duplication.variant_config(config, 'lsh')


@pytest.mark.slow  # a training run
def test_train_then_evaluate_with_other_hash_counts(tmp_path):
  config = tiny()
  train_config = duplication.variant_config(config, 'lsh-2')
  state = train.trained_state(train_config, str(tmp_path / 'lsh-2'))
  assert int(state['step']) == 4
  # Reused, not retrained, on a second call.
  again = train.trained_state(train_config, str(tmp_path / 'lsh-2'))
  assert int(again['step']) == 4
  results = {'lsh-2': {e: duplication.evaluate(
      duplication.variant_config(config, e), state, 2)
                       for e in ('full', 'lsh-1')}}
  for scores in results['lsh-2'].values():
    assert 0.0 <= scores['sequence_accuracy'] <= scores['token_accuracy']
    assert scores['token_accuracy'] <= 1.0
  # The hashes of each batch come from the config's seed: reproducible.
  assert duplication.evaluate(duplication.variant_config(config, 'lsh-1'),
                              state, 2) == results['lsh-2']['lsh-1']
  text = duplication.table(results, ['lsh-2'], ['full', 'lsh-1'])
  assert text.splitlines()[0] == '| trained with | eval full | eval LSH-1 |'
  assert text.splitlines()[2].startswith('| LSH-2 | ')
