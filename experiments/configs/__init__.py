"""Experiment configs: `path(name)` is the file of `configs/<name>.py`, found
from the installed package, so the launchers' defaults work from any
directory."""

import os


def path(name: str) -> str:
  """The config file `experiments/configs/<name>.py`, wherever installed."""
  return os.path.join(os.path.dirname(os.path.abspath(__file__)),
                      f'{name}.py')
