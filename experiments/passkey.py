"""Passkey retrieval beyond the training length: Infini-attention,
Transformer-XL and sliding-window attention (`experiments/configs/passkey.py`).

Trains each mechanism on about 1k-token examples (a five-digit key hidden
in filler text, asked for at the end; Mohtashami & Jaggi 2023, arXiv
2305.16300), then evaluates it on examples of the first curriculum size
and 1x, 4x, 16x and 64x as long as the longest training ones, each a
forward pass over the whole example (which equals streaming it
segment by segment: tests/models/test_streaming.py). Prints a markdown
table of the share of examples whose five digits are all predicted right
(teacher forced), and in brackets the share of digits.

  python -m efficient_attention.experiments.passkey --workdir=/tmp/passkey

Rerunning with the same workdir resumes unfinished training runs and
reuses finished ones. The pieces are in `experiments/passkey_eval.py`.
"""

from __future__ import annotations

import json
import os
import time

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from efficient_attention.experiments import cli
from efficient_attention.experiments import configs
from efficient_attention.experiments import passkey_eval
from efficient_attention.experiments import train

if __name__ == '__main__':  # ml_collections parses overrides right here
  cli.check_overrides()
_CONFIG = config_flags.DEFINE_config_file(
    'config', configs.path('passkey'), 'Experiment config file.',
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


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  config, results = _CONFIG.value, {}
  lengths = passkey_eval.columns(config, [int(m) for m in _MULTIPLES.value])
  for variant in _VARIANTS.value:
    variant_cfg = passkey_eval.variant_config(config, variant)
    state = train.trained_state(variant_cfg,
                                os.path.join(_WORKDIR.value, variant))
    results[variant] = {}
    for label, filler in lengths.items():
      start = time.perf_counter()
      results[variant][label] = passkey_eval.evaluate(
          variant_cfg, state, filler, _EXAMPLES.value)
      print(f'{variant} at {label}: {results[variant][label]} '
            f'({time.perf_counter() - start:.0f} s)', flush=True)
  print(passkey_eval.table(results, _VARIANTS.value, list(lengths)),
        flush=True)
  if _OUTPUT.value:
    with open(_OUTPUT.value, 'w') as f:
      json.dump({'config': config.to_dict(), 'results': results}, f,
                indent=1)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
