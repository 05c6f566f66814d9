"""Experiment launcher: a config file, a workdir, then training.

  python -m experiments.main --config=experiments/configs/default.py \
      --workdir=/tmp/run [--config.model.attention=dot_product ...]

Rerunning with a workdir that holds a checkpoint resumes from it.
"""

import os

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from experiments import train

_CONFIG = config_flags.DEFINE_config_file(
    'config', 'experiments/configs/default.py', 'Experiment config file.',
    lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', 'workdir/default',
                               'Checkpoints, metrics and plots go here.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not flags.FLAGS['verbosity'].present:  # Keep orbax's INFO lines out of
    logging.set_verbosity(logging.WARNING)  # the progress; -v 0 shows them.
  if os.environ.get('JAX_COORDINATOR_ADDRESS'):  # multi-host launch
    jax.distributed.initialize()
  train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == '__main__':
  app.run(main)
