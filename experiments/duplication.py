"""Reformer's duplication task (Kitaev et al. 2020, Table 2) at a CPU size.

Trains one-layer shared-QK models on `0 w 0 w` (`experiments/configs/
duplication.py`) with full attention and with LSH, then evaluates every
trained model with full attention and with 8, 4, 2 and 1 hash rounds on
examples the training never drew. Every evaluation batch draws new hashes.
Prints a markdown table of the accuracy on the second copy's tokens, and
in brackets the share of sequences whose whole second copy is right.

  python -m efficient_attention.experiments.duplication --workdir=/tmp/duplication

"Full" is `lsh` with one chunk over the whole sequence: exact shared-QK
attention, the same parameters as LSH. Rerunning with the same workdir
resumes unfinished training runs and reuses finished ones.
"""

from __future__ import annotations

import json
import os

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from efficient_attention.experiments import cli
from efficient_attention.experiments import configs
from efficient_attention.experiments import duplication_eval
from efficient_attention.experiments import train

if __name__ == '__main__':  # ml_collections parses overrides right here
  cli.check_overrides()
_CONFIG = config_flags.DEFINE_config_file(
    'config', configs.path('duplication'), 'Experiment config file.',
    lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', 'workdir/duplication',
                               'One training run per variant goes here.')
_TRAIN = flags.DEFINE_list('train', ['full', 'lsh-4'],
                           'Variants to train: full or lsh-P (P rounds).')
_EVAL = flags.DEFINE_list('eval', ['full', 'lsh-8', 'lsh-4', 'lsh-2', 'lsh-1'],
                          'Variants to evaluate each trained model with.')
_EVAL_BATCHES = flags.DEFINE_integer(
    'eval_batches', 16, 'Evaluation batches (of train.batch_size each).')
_OUTPUT = flags.DEFINE_string('output', None, 'Write the results as JSON.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  config, results = _CONFIG.value, {}
  for variant in _TRAIN.value:
    state = train.trained_state(
        duplication_eval.variant_config(config, variant),
        os.path.join(_WORKDIR.value, variant))
    results[variant] = {
        e: duplication_eval.evaluate(duplication_eval.variant_config(
            config, e), state, _EVAL_BATCHES.value) for e in _EVAL.value}
  print(duplication_eval.table(results, _TRAIN.value, _EVAL.value),
        flush=True)
  if _OUTPUT.value:
    with open(_OUTPUT.value, 'w') as f:
      json.dump({'config': config.to_dict(), 'results': results}, f,
                indent=1)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
