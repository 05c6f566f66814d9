"""Passkey retrieval beyond the training length: Infini-attention,
Transformer-XL and sliding-window attention (`experiments/configs/passkey.py`).

Trains each mechanism on about 1k-token examples (a five-digit key hidden
in filler text, asked for at the end; Mohtashami & Jaggi 2023, arXiv
2305.16300), then evaluates it on examples 1x, 4x, 16x and 64x as long,
each a forward pass over the whole example (which equals streaming it
segment by segment: tests/models/test_streaming.py). Prints a markdown
table of the share of examples whose five digits are all predicted right
(teacher forced), and in brackets the share of digits.

  python -m experiments.passkey --workdir=/tmp/passkey

Rerunning with the same workdir resumes unfinished training runs and
reuses finished ones.
"""

from __future__ import annotations

import json
import os
import time

from absl import app
from absl import flags
from absl import logging
from flax import nnx
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np

from experiments import tasks
from experiments import train

_CONFIG = config_flags.DEFINE_config_file(
    'config', 'experiments/configs/passkey.py', 'Experiment config file.',
    lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', 'workdir/passkey',
                               'One training run per variant goes here.')
_VARIANTS = flags.DEFINE_list('variants', ['infini', 'xl', 'window'],
                              'Mechanisms: infini, xl, window.')
_MULTIPLES = flags.DEFINE_list('multiples', ['1', '4', '16', '64'],
                               'Evaluation lengths, times the training one.')
_EXAMPLES = flags.DEFINE_integer('examples', 32,
                                 'Evaluation examples per length.')
_OUTPUT = flags.DEFINE_string('output', None, 'Write the results as JSON.')

KEY_DIGITS = 5


def variant_config(config, variant: str):
  """`config` with the mechanism of `variant`; same segment or window."""
  segment = config.model.attention_options['segment_size']
  chunk = config.model.attention_options.get('chunk_size', segment)
  options = {'infini': ('infini', {'segment_size': segment,
                                   'chunk_size': chunk}),
             'xl': ('xl', {'segment_size': segment, 'memory_length': segment,
                           'chunk_size': chunk}),
             'window': ('blockwise', {'local_window_size': (segment, 0),
                                      'query_chunk_size': chunk,
                                      'key_chunk_size': chunk})}
  if variant not in options:
    raise ValueError(f'variant must be one of {sorted(options)}, got '
                     f'{variant!r}')
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.model.attention, config.model.attention_options = options[variant]
  return config


def filler_size(config, multiple: int) -> int:
  """Filler bytes that make an example `multiple` times the training one."""
  overhead = len(tasks.passkey(np.random.default_rng(0), 0)[0])
  return multiple * (config.data.size + overhead) - overhead


def evaluate(config, state, multiple: int, num_examples: int,
             batch_size: int = 4):
  """All-digits and per-digit accuracy at `multiple` x the training length."""
  graphdef, _ = train.initial_state(config, train.make_optimizer(config))

  @jax.jit
  def correct(params, rest, inputs, targets):
    model = nnx.merge(graphdef, params, rest)
    hidden = model.stack(inputs, is_causal=True)[:, -KEY_DIGITS:]
    return jnp.argmax(model.head(hidden), -1) == targets[:, -KEY_DIGITS:]

  digits = []
  for start in range(0, num_examples, batch_size):
    inputs, targets, weights = tasks.batch(
        'passkey', seed=config.seed + 1, start=start,
        batch_size=min(batch_size, num_examples - start),
        size=filler_size(config, multiple))
    assert (weights[:, -KEY_DIGITS:] > 0).all() and weights.sum() == (
        KEY_DIGITS * len(weights))
    digits.append(np.asarray(correct(state['params'], state['rest'],
                                     inputs, targets)))
  digits = np.concatenate(digits)
  return {'key_accuracy': float(digits.all(-1).mean()),
          'digit_accuracy': float(digits.mean()),
          'tokens': int(inputs.shape[1])}


def table(results, variants, multiples) -> str:
  """Markdown: whole-key accuracy (digit accuracy) per variant and length."""
  names = {'infini': 'Infini-attention', 'xl': 'Transformer-XL',
           'window': 'sliding window'}
  first = results[variants[0]]
  lines = ['| trained at ~1k tokens | ' + ' | '.join(
      f'{m}x ({first[m]["tokens"]:,} tokens)' for m in multiples) + ' |',
           '|---|' + '---|' * len(multiples)]
  for v in variants:
    cells = [f'{100 * results[v][m]["key_accuracy"]:.0f}% '
             f'({100 * results[v][m]["digit_accuracy"]:.0f}%)'
             for m in multiples]
    lines.append(f'| {names[v]} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  config, results = _CONFIG.value, {}
  multiples = [int(m) for m in _MULTIPLES.value]
  for variant in _VARIANTS.value:
    variant_cfg = variant_config(config, variant)
    state = train.trained_state(variant_cfg,
                                os.path.join(_WORKDIR.value, variant))
    results[variant] = {}
    for m in multiples:
      start = time.perf_counter()
      results[variant][m] = evaluate(variant_cfg, state, m, _EXAMPLES.value)
      print(f'{variant} at {m}x: {results[variant][m]} '
            f'({time.perf_counter() - start:.0f} s)', flush=True)
  print(table(results, _VARIANTS.value, multiples), flush=True)
  if _OUTPUT.value:
    with open(_OUTPUT.value, 'w') as f:
      json.dump({'config': config.to_dict(), 'results': results}, f,
                indent=1)


if __name__ == '__main__':
  app.run(main)
