"""Experiment launcher: a config file, a workdir, then training.

  python -m efficient_attention.experiments.main --workdir=/tmp/run \
      [--config=path/to/config.py] [--config.model.attention=dot_product ...]

The config defaults to the package's `experiments/configs/default.py`, from
any directory. `--print_config` prints every field, its value after the
overrides and what it allows, and exits. A misspelt override or option
fails before anything is traced, in one line naming it and its nearest
valid names.

Rerunning with a workdir that holds a checkpoint resumes from it. SIGTERM
or Ctrl-C saves the current step and exits with 128 + the signal's number;
a bad config, a busy workdir or checkpoints of another model exit with 1
and a message.
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from efficient_attention.experiments import cli
from efficient_attention.experiments import configs
from efficient_attention.experiments import resume
from efficient_attention.experiments import train
from efficient_attention.experiments import validation
from efficient_attention.experiments import workdir_lock

if __name__ == '__main__':  # ml_collections parses overrides right here
  cli.check_overrides()
_CONFIG = config_flags.DEFINE_config_file(
    'config', configs.path('default'), 'Experiment config file.',
    lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', 'workdir/default',
                               'Checkpoints, metrics and plots go here.')
_PRINT = flags.DEFINE_bool(
    'print_config', False, 'Print every config field with its value (after '
    'the --config.* overrides) and what it allows, then exit.')
_WAIT = flags.DEFINE_float(
    'wait_for_lock', 0.0, 'Seconds to wait when another run holds the '
    'workdir (0: refuse at once, inf: wait until it is free).')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if _PRINT.value:
    print(validation.format_config(_CONFIG.value))
    return
  if not flags.FLAGS['verbosity'].present:  # Keep orbax's INFO lines out of
    logging.set_verbosity(logging.WARNING)  # the progress; -v 0 shows them.
  if os.environ.get('JAX_COORDINATOR_ADDRESS'):  # multi-host launch
    jax.distributed.initialize()
  try:
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value,
                             wait_for_lock=_WAIT.value)
  except (validation.ConfigError, resume.ConfigMismatch,
          workdir_lock.Busy) as error:  # the message says it all
    sys.exit(f'error: {error}')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
