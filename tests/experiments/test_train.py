"""The training job: every mechanism, projections, data, devices, bf16.

What it survives (kills, corruption, signals, locks) is tested in
test_faults.py; config validation in test_validation.py.
"""

import json
import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from efficient_attention import attention
from efficient_attention.experiments import data
from efficient_attention.experiments import train
from tests.experiments import runs

@pytest.fixture(name='text_file')
def fixture_text_file(tmp_path):
  return runs.write_text_file(tmp_path / 'text.txt')


# Every mechanism trains in the default suite through test_tasks.py's
# task x mechanism pairs; on text, blockwise only (the rest: test-slow).
@pytest.mark.parametrize('mechanism', [
    m if m == 'blockwise' else pytest.param(m, marks=pytest.mark.slow)
    for m in attention.names() if attention.get(m).causal])
def test_short_training_run_for_each_mechanism(text_file, tmp_path,
                                               mechanism):
  config = runs.tiny_config(text_file, **{'model.attention': mechanism})
  final = train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert np.isfinite(final['eval_loss']) and final['eval_bpb'] < 8
  lines = (tmp_path / 'run' / 'metrics.jsonl').read_text().splitlines()
  assert any('train_loss' in json.loads(line) for line in lines)
  assert (tmp_path / 'run' / 'curves.png').stat().st_size > 0


def _projections(workdir):
  checkpoint_dir = os.path.join(workdir, 'checkpoints')
  last = max(int(d) for d in os.listdir(checkpoint_dir) if d.isdigit())
  state = ocp.StandardCheckpointer().restore(
      os.path.join(checkpoint_dir, str(last), 'default'))
  leaves = [x for x in jax.tree.leaves(state['rest']) if np.ndim(x) == 2]
  assert leaves, 'no projection in the checkpoint'
  return leaves


def test_performer_projections_are_redrawn_when_asked(text_file, tmp_path):
  changes = {'model.attention': 'performer', 'train.num_steps': 3,
             'train.checkpoint_every': 3}
  config = runs.tiny_config(text_file, **changes)
  initial = train.initial_state(config, train.make_optimizer(config))
  start = [x for x in jax.tree.leaves(initial[1]['rest']) if np.ndim(x) == 2]
  # Without redraws the projection stays: test_random_features.py.
  train.train_and_evaluate(runs.tiny_config(
      text_file, **changes, **{'train.redraw_projections_every': 2}),
                           str(tmp_path))
  for old, new in zip(start, _projections(str(tmp_path))):
    assert old.shape == new.shape and not np.allclose(old, new)


def test_stdlib_corpus_is_split_by_file_deterministically():
  first = data.load('stdlib')
  assert len(first.train) > 10**6 and len(first.validation) > 10**4
  again = data.load('stdlib')
  assert np.array_equal(first.validation, again.validation)
  x, y = data.train_batch(first.train, seed=0, step=5, batch_size=4,
                          sequence_length=16)
  x2, _ = data.train_batch(first.train, seed=0, step=5, batch_size=4,
                           sequence_length=16)
  assert np.array_equal(x, x2) and np.array_equal(x[:, 1:], y[:, :-1])


def test_eight_devices_reach_the_loss_of_one(tmp_path, text_file):
  """One device here, eight simulated ones in a process of their own."""
  metrics = {}
  train.train_and_evaluate(runs.tiny_config(text_file), str(tmp_path / '1'))
  env = {'XLA_FLAGS': os.environ.get('XLA_FLAGS', '') +
         ' --xla_force_host_platform_device_count=8'}
  process = runs.launch(tmp_path / '8', text_file, env=env)
  output, _ = process.communicate(timeout=300)
  assert process.returncode == 0, output
  assert '8 device(s)' in output
  for devices in (1, 8):
    lines = (tmp_path / str(devices) / 'metrics.jsonl').read_text()
    metrics[devices] = [row for row in map(json.loads, lines.splitlines())
                        if 'event' not in row]
  assert jax.device_count() == 1 and len(metrics[1]) > 3
  for one, eight in zip(metrics[1], metrics[8], strict=True):
    for key in one:
      np.testing.assert_allclose(eight[key], one[key], rtol=2e-5, err_msg=key)
  shutil.rmtree(tmp_path)


def test_bfloat16_compute_and_rsqrt_schedule(text_file, tmp_path):
  config = runs.tiny_config(text_file, **{'train.compute_dtype': 'bfloat16',
                                     'train.schedule': 'rsqrt'})
  final = train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert np.isfinite(final['eval_loss'])
  params = ocp.StandardCheckpointer().restore(
      str(tmp_path / 'run' / 'checkpoints' / '6' / 'default'))['params']
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(params))
