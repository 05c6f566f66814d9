"""Orbax checkpoints of the training state that can be trusted on restore.

Each checkpoint `workdir/checkpoints/<step>/` holds two items, saved through
one `ocp.CheckpointManager` (asynchronous; written to a temporary directory
and renamed when complete, so a kill at any moment leaves either a whole
checkpoint or none; the oldest pruned past `keep` only after a newer one is
complete):

- `default`: the state pytree (`ocp.args.StandardSave`);
- `meta`: JSON with the experiment config that wrote it and a fingerprint of
  the state (one uint32 per leaf, computed on device), checked on restore:
  a flipped bit in an array file is read back by tensorstore without error,
  the fingerprint catches it.

A checkpoint that cannot be read is moved, whole, to `workdir/quarantine/`
(`quarantine`) with a note of why: kept for inspection, out of orbax's way,
never deleted. Checkpoints written before the `meta` item existed restore
without the fingerprint check.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

STATE, META = 'default', 'meta'


class Unreadable(Exception):
  """A checkpoint whose files cannot be read back as the state they held."""


def manager(workdir: str, keep: int) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, create=True, cleanup_tmp_directories=True,
      enable_async_checkpointing=True)
  return ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), 'checkpoints'),
      item_handlers={STATE: ocp.StandardCheckpointHandler(),
                     META: ocp.JsonCheckpointHandler()},
      options=options)


def _path(path) -> tuple[str, ...]:
  """A pytree path as plain names, as orbax's metadata tree spells it."""
  names = tuple(str(getattr(k, 'key', getattr(k, 'idx', getattr(
      k, 'name', k)))) for k in path)
  return names[:-1] if names and names[-1] == 'value' else names


def _as_stored(leaf):
  """Typed PRNG keys are stored as their uint32 key data."""
  if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
    return jax.random.key_data(leaf)
  return leaf


def structure(tree) -> dict[str, tuple[tuple[int, ...], str]]:
  """`{'a/b/c': (shape, dtype)}` of a state (arrays, shape structs or
  orbax metadata), with PRNG keys as their key data."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    if hasattr(leaf, 'dtype') and jax.dtypes.issubdtype(
        leaf.dtype, jax.dtypes.prng_key):
      leaf = jax.eval_shape(jax.random.key_data, leaf)
    out['/'.join(_path(path))] = (tuple(leaf.shape), str(np.dtype(
        leaf.dtype)))
  return out


@jax.jit
def _fingerprints(leaves):
  def one(x):
    x = jnp.ravel(x)
    if x.dtype.itemsize == 4:
      bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
    elif x.dtype.itemsize == 2:
      bits = jax.lax.bitcast_convert_type(x, jnp.uint16).astype(jnp.uint32)
    else:
      bits = x.astype(jnp.uint32)
    # Odd weights: any single flipped bit changes the sum modulo 2^32.
    weights = jnp.arange(x.size, dtype=jnp.uint32) * 2 + 1
    return jnp.sum(bits * weights, dtype=jnp.uint32)
  return [one(x) for x in leaves]


def fingerprint(state) -> dict[str, int]:
  """One uint32 per leaf of `state`, a function of every bit it holds."""
  flat = jax.tree_util.tree_flatten_with_path(state)[0]
  values = jax.device_get(_fingerprints([_as_stored(x) for _, x in flat]))
  return {'/'.join(_path(p)): int(v) for (p, _), v in zip(flat, values)}


def save(mngr: ocp.CheckpointManager, step: int, state, config: dict,
         force: bool = False) -> bool:
  """Saves `state` with its config and fingerprint (asynchronously).

  Returns:
    Whether a save started.
  """
  meta = {'config': config, 'fingerprint': fingerprint(state),
          'saved': datetime.datetime.now().isoformat(timespec='seconds')}
  return mngr.save(step, args=ocp.args.Composite(**{
      STATE: ocp.args.StandardSave(state), META: ocp.args.JsonSave(meta)}),
                   force=force)


def _items(mngr, step) -> set[str]:
  directory = os.path.join(str(mngr.directory), str(step))
  return {d for d in os.listdir(directory)
          if os.path.isdir(os.path.join(directory, d))}


def stored(mngr: ocp.CheckpointManager, step: int):
  """What checkpoint `step` says of itself, without reading its arrays.

  Returns:
    `(config, structure)`: the config dict that wrote it (None for an older
    checkpoint without one) and the structure of its state.

  Raises:
    Unreadable: its metadata cannot be read.
  """
  try:
    items = _items(mngr, step)
    config = None
    if META in items:
      config = mngr.restore(step, args=ocp.args.Composite(**{
          META: ocp.args.JsonRestore()}))[META]['config']
    metadata = mngr.item_metadata(step)[STATE]
    if metadata is None:
      raise Unreadable(f'no {STATE!r} item')
    return config, structure(metadata)
  except Unreadable:
    raise
  except Exception as error:  # pylint: disable=broad-except
    raise Unreadable(f'{type(error).__name__}: {error}') from error


def restore(mngr: ocp.CheckpointManager, step: int, abstract_state):
  """The state of checkpoint `step`, checked against its fingerprint.

  Args:
    mngr: the manager.
    step: which checkpoint.
    abstract_state: a pytree of `jax.ShapeDtypeStruct` (or arrays) giving
      the structure, shapes, dtypes and shardings to restore into.

  Raises:
    Unreadable: a file is missing or corrupt, or the arrays read back do
      not match the fingerprint saved with them.
  """
  try:
    items = _items(mngr, step)
    args = {STATE: ocp.args.StandardRestore(abstract_state)}
    if META in items:
      args[META] = ocp.args.JsonRestore()
    restored = mngr.restore(step, args=ocp.args.Composite(**args))
  except Exception as error:  # pylint: disable=broad-except
    raise Unreadable(f'{type(error).__name__}: {error}') from error
  state = restored[STATE]
  if META in items:
    saved = restored[META]['fingerprint']
    found = fingerprint(state)
    wrong = sorted(k for k in set(saved) | set(found)
                   if saved.get(k) != found.get(k))
    if wrong:
      raise Unreadable(f'{len(wrong)} array(s) differ from what was saved '
                       f'(fingerprint mismatch), first {wrong[0]}')
  return state


def quarantine(mngr: ocp.CheckpointManager, step: int, reason: str) -> str:
  """Moves checkpoint `step` to `workdir/quarantine/` with a note of why.

  Returns:
    Where it went.
  """
  source = os.path.join(str(mngr.directory), str(step))
  stamp = datetime.datetime.now().strftime('%Y%m%dT%H%M%S%f')
  target = os.path.join(os.path.dirname(str(mngr.directory)), 'quarantine',
                        f'step_{step}_{stamp}')
  os.makedirs(os.path.dirname(target), exist_ok=True)
  shutil.move(source, target)
  with open(os.path.join(target, 'QUARANTINED.txt'), 'w') as f:
    f.write(f'checkpoint of step {step}, moved here from {source} on '
            f'{stamp}\nbecause it could not be read: {reason}\n')
  mngr.reload()
  return target


def write_json(path: str, value: Any):
  """Writes `value` as JSON to `path` atomically (a reader never sees half)."""
  temporary = f'{path}.tmp{os.getpid()}'
  with open(temporary, 'w') as f:
    json.dump(value, f, indent=1, sort_keys=True)
    f.flush()
    os.fsync(f.fileno())
  os.replace(temporary, path)
