"""The training job: configs, every mechanism, resume, corruption, devices."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import attention
from experiments import data
from experiments import train
from experiments.configs import default

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))

TINY = {
    'model.model_dim': 32, 'model.num_layers': 1, 'model.num_heads': 2,
    'model.num_kv_heads': 1, 'model.mlp_dim': 64,
    'data.sequence_length': 32, 'train.batch_size': 8,
    'train.num_steps': 6, 'train.warmup_steps': 2, 'train.log_every': 2,
    'train.eval_every': 3, 'train.eval_batches': 2,
    'train.checkpoint_every': 3,
}


def tiny_config(text_file, **changes):
  config = default.get_config()
  config.data.source, config.data.path = 'file', str(text_file)
  for name, value in {**TINY, **changes}.items():
    section, field = name.split('.')
    config[section][field] = value
  return config


@pytest.fixture(name='text_file')
def fixture_text_file(tmp_path):
  path = tmp_path / 'text.txt'
  words = ['attention', 'is', 'all', 'you', 'need', 'memory', 'linear']
  rng = np.random.default_rng(0)
  path.write_text(' '.join(rng.choice(words, 20000)))
  return path


# Infini and XL train in the default suite through test_passkey.py.
@pytest.mark.parametrize('mechanism', [
    pytest.param(m, marks=pytest.mark.slow) if m in ('infini', 'xl') else m
    for m in attention.names()])
def test_short_training_run_for_each_mechanism(text_file, tmp_path,
                                               mechanism):
  config = tiny_config(text_file, **{'model.attention': mechanism})
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
  initial = train.initial_state(tiny_config(text_file, **changes),
                                train.make_optimizer(tiny_config(text_file)))
  start = [x for x in jax.tree.leaves(initial[1]['rest']) if np.ndim(x) == 2]
  # Without redraws the projection stays: test_random_features.py.
  train.train_and_evaluate(tiny_config(
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


def _launch(workdir, text_file, *flags, env=None):
  args = [sys.executable, '-m', 'experiments.main', f'--workdir={workdir}',
          '--config.data.source=file', f'--config.data.path={text_file}']
  args += [f'--config.{k}={v}' for k, v in TINY.items()] + list(flags)
  return subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True,
                          env={**os.environ, **(env or {})})


def _final_params(workdir):
  checkpoint_dir = os.path.join(workdir, 'checkpoints')
  last = max(int(d) for d in os.listdir(checkpoint_dir) if d.isdigit())
  state = ocp.StandardCheckpointer().restore(
      os.path.join(checkpoint_dir, str(last), 'default'))
  return last, state['params']


def _assert_trees_equal(a, b):
  flat_a, flat_b = (sorted(_flatten(t)) for t in (a, b))
  assert [k for k, _ in flat_a] == [k for k, _ in flat_b]
  for (key, x), (_, y) in zip(flat_a, flat_b):
    np.testing.assert_array_equal(x, y, err_msg=key)


def _flatten(tree, prefix=''):
  if isinstance(tree, dict):
    return [item for k, v in tree.items()
            for item in _flatten(v, f'{prefix}/{k}')]
  return [(prefix, np.asarray(tree))]


LONG = ('--config.train.num_steps=300', '--config.train.checkpoint_every=50',
        '--config.train.eval_every=1000', '--config.train.log_every=50')


def test_sigkill_then_resume_is_bitwise_equal_to_an_uninterrupted_run(
    tmp_path, text_file):
  whole = _launch(tmp_path / 'whole', text_file, *LONG)
  assert whole.wait(timeout=300) == 0, whole.stdout.read()
  workdir = tmp_path / 'killed'
  victim = _launch(workdir, text_file, *LONG)
  checkpoint_dir = workdir / 'checkpoints'
  deadline = time.time() + 240
  while time.time() < deadline and victim.poll() is None:
    if checkpoint_dir.exists() and any(
        d.isdigit() and int(d) >= 50 for d in os.listdir(checkpoint_dir)):
      victim.send_signal(signal.SIGKILL)
      break
    time.sleep(0.01)
  assert victim.wait(timeout=60) == -signal.SIGKILL, 'the run ended first'
  assert not (workdir / 'curves.png').exists()
  resumed = _launch(workdir, text_file, *LONG)
  output, _ = resumed.communicate(timeout=300)
  assert resumed.returncode == 0, output
  assert 'resuming at step' in output
  step_a, params_a = _final_params(tmp_path / 'whole')
  step_b, params_b = _final_params(workdir)
  assert step_a == step_b == 300
  _assert_trees_equal(params_a, params_b)


def test_corrupt_latest_checkpoint_falls_back_to_the_previous(
    tmp_path, text_file):
  config = tiny_config(text_file)
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(config, workdir)  # checkpoints at 3 and 6
  latest = os.path.join(workdir, 'checkpoints', '6')
  for dirpath, _, filenames in os.walk(latest):
    for name in filenames:
      with open(os.path.join(dirpath, name), 'wb') as f:
        f.write(b'not a checkpoint')
  config.train.num_steps = 9
  final = train.train_and_evaluate(config, workdir)
  assert np.isfinite(final['eval_loss'])
  steps = sorted(json.loads(line)['step'] for line in open(
      os.path.join(workdir, 'metrics.jsonl')) if 'train_loss' in line)
  # Resumed from step 3: steps 4..6 were trained twice, logged at 4 and 6.
  assert steps.count(4) == 2 and steps.count(6) == 2


def test_eight_devices_reach_the_loss_of_one(tmp_path, text_file):
  runs = {}
  for devices in (1, 8):
    env = {'XLA_FLAGS': os.environ.get('XLA_FLAGS', '') +
           f' --xla_force_host_platform_device_count={devices}'}
    process = _launch(tmp_path / str(devices), text_file, env=env)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output
    assert f'{devices} device(s)' in output
    lines = (tmp_path / str(devices) / 'metrics.jsonl').read_text()
    runs[devices] = [json.loads(line) for line in lines.splitlines()]
  for one, eight in zip(runs[1], runs[8]):
    for key in one:
      np.testing.assert_allclose(eight[key], one[key], rtol=2e-5, err_msg=key)
  shutil.rmtree(tmp_path)


def test_bfloat16_compute_and_rsqrt_schedule(text_file, tmp_path):
  config = tiny_config(text_file, **{'train.compute_dtype': 'bfloat16',
                                     'train.schedule': 'rsqrt'})
  final = train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert np.isfinite(final['eval_loss'])
  params = ocp.StandardCheckpointer().restore(
      str(tmp_path / 'run' / 'checkpoints' / '6' / 'default'))['params']
  assert all(x.dtype == np.float32 for _, x in _flatten(params))
