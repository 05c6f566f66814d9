"""Synthetic tasks: correct answers, determinism, and a training run each."""

import numpy as np
import pytest

from efficient_attention import attention
from efficient_attention.experiments import tasks
from efficient_attention.experiments import train
from efficient_attention.experiments.configs import default


def example(task, size, index=0, seed=0):
  return tasks.TASKS[task](np.random.default_rng((seed, index)), size)


def text(tokens):
  return bytes(int(t) for t in tokens)


def test_addition_and_parity_answers_are_right():
  for index in range(20):
    tokens, weights = example('addition', 4, index)
    question = text(tokens[weights == 0])
    a, b = question.rstrip(b'=').split(b'+')
    value = lambda digits: int(digits[::-1])  # least significant first
    assert value(text(tokens[weights == 1])) == value(a) + value(b)
    tokens, weights = example('parity', 9, index)
    assert int(text(tokens[weights == 1])) == text(tokens[:9]).count(b'1') % 2


def test_mqar_values_follow_their_keys_and_copy_repeats():
  tokens, weights = example('mqar', 8)
  pairs = dict(zip(tokens[0:16:2], tokens[1:16:2]))
  answers = np.flatnonzero(weights)
  assert len(answers) == 8
  for at in answers:
    assert pairs[tokens[at - 1]] == tokens[at]
  tokens, weights = example('copy', 10)
  np.testing.assert_array_equal(tokens[weights == 1], tokens[1:11])


def test_passkey_is_hidden_and_asked_for():
  tokens, weights = example('passkey', 300)
  key = text(tokens[weights == 1])
  assert len(key) == 5 and text(tokens).count(key) == 2


@pytest.mark.parametrize('task', sorted(tasks.TASKS))
def test_examples_are_functions_of_seed_and_index(task):
  first = tasks.batch(task, seed=3, start=10, batch_size=4, size=6)
  again = tasks.batch(task, seed=3, start=10, batch_size=4, size=6)
  other = tasks.batch(task, seed=4, start=10, batch_size=4, size=6)
  for x, y in zip(first, again):
    np.testing.assert_array_equal(x, y)
  assert not np.array_equal(first[0], other[0])


def _task_mechanism_pairs():
  """Every task in the default suite, each with another mechanism (five of
  the seven); the rest slow. Every mechanism's gradients are checked in
  test_registry, the Performer also trains in test_train; XL's training
  runs are in the slow suite."""
  # The job trains language models: mechanisms that cannot be causal
  # (Linformer) cannot train here.
  names = [n for n in attention.names() if attention.get(n).causal]
  task_names = sorted(tasks.TASKS)
  fast = {(t, names[i % len(names)]) for i, t in enumerate(task_names)}
  return [pytest.param(t, m, marks=() if (t, m) in fast else pytest.mark.slow)
          for t in task_names for m in names]


@pytest.mark.parametrize('task,mechanism', _task_mechanism_pairs())
def test_short_training_run(tmp_path, task, mechanism):
  config = default.get_config()
  config.data.source, config.data.size, config.data.eval_size = task, 6, 9
  config.model.attention = mechanism
  config.model.model_dim, config.model.num_layers = 32, 1
  config.model.num_heads, config.model.num_kv_heads = 2, 1
  config.model.mlp_dim = 64
  t = config.train
  t.batch_size, t.num_steps, t.warmup_steps = 4, 2, 1
  t.log_every, t.eval_every, t.eval_batches, t.checkpoint_every = 1, 2, 1, 2
  final = train.train_and_evaluate(config, str(tmp_path))
  assert np.isfinite(final['eval_loss']) and 0 <= final['eval_accuracy'] <= 1
