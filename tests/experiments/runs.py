"""A tiny training run shared by the training-job tests: its config, a text
file to train on, and a launcher for the command line."""

import os
import subprocess
import sys

import numpy as np

from efficient_attention.experiments.configs import default

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))

TINY = {
    'model.model_dim': 32, 'model.num_layers': 1, 'model.num_heads': 2,
    'model.num_kv_heads': 1, 'model.mlp_dim': 64,
    'data.sequence_length': 32, 'train.batch_size': 8,
    'train.num_steps': 6, 'train.warmup_steps': 2, 'train.log_every': 2,
    'train.eval_every': 3, 'train.eval_batches': 2,
    'train.checkpoint_every': 3,
}


def write_text_file(path):
  """20,000 random words to train on; returns `path`."""
  words = ['attention', 'is', 'all', 'you', 'need', 'memory', 'linear']
  path.write_text(' '.join(np.random.default_rng(0).choice(words, 20000)))
  return path


def tiny_config(text_file, **changes):
  """The default config at TINY sizes on `text_file`, with `changes`
  ({'section.field': value})."""
  config = default.get_config()
  config.data.source, config.data.path = 'file', str(text_file)
  for name, value in {**TINY, **changes}.items():
    section, field = name.split('.')
    config[section][field] = value
  return config


def launch(workdir, text_file, *flags, env=None, **kwargs):
  """`python -m efficient_attention.experiments.main` on the TINY config, plus `flags`, as a
  process whose output (stdout and stderr) is one text stream."""
  args = [sys.executable, '-m', 'efficient_attention.experiments.main', f'--workdir={workdir}',
          '--config.data.source=file', f'--config.data.path={text_file}']
  args += [f'--config.{k}={v}' for k, v in TINY.items()] + list(flags)
  return subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True,
                          env={**os.environ, **(env or {})}, **kwargs)
