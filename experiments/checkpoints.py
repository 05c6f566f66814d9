"""Orbax checkpoints of the training state, with a fallback on corruption.

Saves go through `ocp.CheckpointManager` (asynchronous, written to a
temporary directory and renamed when complete, the oldest pruned past
`keep`). On start the newest checkpoint is restored; one that cannot be read
(half-written, corrupt) is reported and the one before it is used.
"""

from __future__ import annotations

import os

from absl import logging
import orbax.checkpoint as ocp


def manager(workdir: str, keep: int) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, create=True, cleanup_tmp_directories=True,
      enable_async_checkpointing=True)
  return ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), 'checkpoints'), options=options)


def save(mngr: ocp.CheckpointManager, step: int, state, force=False):
  """Saves `state` at `step` (asynchronously); True if a save started."""
  return mngr.save(step, args=ocp.args.StandardSave(state), force=force)


def restore_latest(mngr: ocp.CheckpointManager, abstract_state):
  """The newest readable checkpoint's state, or None when there is none.

  Args:
    mngr: the manager.
    abstract_state: a pytree of `jax.ShapeDtypeStruct` (or arrays) giving
      the structure, shapes, dtypes and shardings to restore into.
  """
  for step in sorted(mngr.all_steps(), reverse=True):
    try:
      return mngr.restore(step, args=ocp.args.StandardRestore(abstract_state))
    except Exception as error:  # pylint: disable=broad-except
      logging.warning('Checkpoint at step %d in %s cannot be read (%s: %s); '
                      'trying the previous one.', step, mngr.directory,
                      type(error).__name__, error)
      print(f'warning: checkpoint at step {step} is unreadable '
            f'({type(error).__name__}); falling back to an earlier one',
            flush=True)
  return None
