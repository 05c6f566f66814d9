"""What a run finds in its workdir when it starts: resume, or refuse.

`latest` walks the checkpoints newest first. One whose files cannot be read
is quarantined (`checkpoints.quarantine`: moved aside, kept) and the next
older one tried. One written by a model of another structure is never read
and never deleted: the run stops with a `ConfigMismatch` that names the
config fields responsible, with their old and new values. Changes that keep
the structure (`num_steps`, logging, the learning rate, ...) are allowed and
reported.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable

import ml_collections

from efficient_attention.experiments import checkpoints
from efficient_attention.experiments import validation


class ConfigMismatch(ValueError):
  """The workdir's checkpoints hold a state of another structure."""


@dataclasses.dataclass
class Found:
  """The outcome of looking for a checkpoint to resume from."""

  state: Any  # the restored state, or None: start afresh
  step: int  # its step (0 when starting afresh)
  quarantined: list[tuple[int, str, str]]  # (step, why, where it went)
  changes: dict[str, tuple[Any, Any]]  # allowed: field -> (old, new)


def config_dict(config) -> dict:
  """`config` as plain JSON values (tuples become lists)."""
  if isinstance(config, ml_collections.ConfigDict):
    return json.loads(config.to_json_best_effort(sort_keys=True))
  return json.loads(json.dumps(config, sort_keys=True, default=str))


def changes(old: dict, new: dict) -> dict[str, tuple[Any, Any]]:
  """`{'section.field': (old, new)}` for every field that differs."""
  before, after = validation.flatten(old), validation.flatten(new)
  missing = object()
  found = {}
  for path in sorted(set(before) | set(after)):
    a, b = before.get(path, missing), after.get(path, missing)
    if a != b:
      found[path] = (None if a is missing else a, None if b is missing else b)
  return found


def _with_value(config, path: str, value):
  """A copy of `config` with `path` set back to `value` (a JSON value)."""
  copy = config.copy_and_resolve_references()
  *sections, field = path.split('.')
  place = copy
  for section in sections:
    place = place[section]
  current = place[field]
  if isinstance(current, tuple) and isinstance(value, list):
    value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
  with copy.unlocked():
    place[field] = value
  return copy


def _responsible(config, diff, structure_of) -> list[str]:
  """The changed fields that alter the state's structure on their own."""
  now = structure_of(config)
  fields = []
  for path, (old, _) in diff.items():
    try:
      alters = structure_of(_with_value(config, path, old)) != now
    except Exception:  # pylint: disable=broad-except
      alters = True  # cannot tell: name it rather than hide it
    if alters:
      fields.append(path)
  return fields or list(diff)


def _mismatch(directory, step, diff, fields, stored, expected) -> str:
  lines = [f'the checkpoints in {directory} (newest readable: step {step}) '
           'hold a model of another structure than this config builds; '
           'nothing was read or deleted.']
  if fields:
    lines.append('Fields that change the structure (checkpoint -> now):')
    lines += [f'  config.{p}: {diff[p][0]!r} -> {diff[p][1]!r}'
              for p in fields]
    others = [p for p in diff if p not in fields]
    if others:
      lines.append('Other changes (allowed on resume): ' + ', '.join(
          f'config.{p}: {diff[p][0]!r} -> {diff[p][1]!r}' for p in others))
  else:  # a checkpoint written before configs were saved with it
    differing = sorted(k for k in set(stored) | set(expected)
                       if stored.get(k) != expected.get(k))
    lines.append(f'{len(differing)} arrays differ (checkpoint -> now), '
                 'for example:')
    lines += [f'  {k}: {stored.get(k)} -> {expected.get(k)}'
              for k in differing[:5]]
  lines.append('Resume with the old values, or start a new run with another '
               '--workdir.')
  return '\n'.join(lines)


def latest(mngr, abstract_state, config,
           structure_of: Callable[[Any], dict]) -> Found:
  """The newest readable checkpoint whose structure matches `config`.

  Args:
    mngr: the run's `checkpoints.manager`.
    abstract_state: the state this config builds (shapes, dtypes,
      shardings): what a checkpoint is restored into.
    config: the experiment config of this run.
    structure_of: config -> `checkpoints.structure` of the state it builds.

  Raises:
    ConfigMismatch: the newest readable checkpoint was written by a model
      of another structure.
  """
  expected = checkpoints.structure(abstract_state)
  quarantined = []
  for step in sorted(mngr.all_steps(), reverse=True):
    try:
      saved_config, stored = checkpoints.stored(mngr, step)
      diff = {} if saved_config is None else changes(saved_config,
                                                     config_dict(config))
      if stored != expected:
        raise ConfigMismatch(_mismatch(
            mngr.directory, step, diff,
            _responsible(config, diff, structure_of) if diff else [],
            stored, expected))
      state = checkpoints.restore(mngr, step, abstract_state)
    except checkpoints.Unreadable as error:
      where = checkpoints.quarantine(mngr, step, str(error))
      quarantined.append((step, str(error), where))
      continue
    return Found(state, step, quarantined, diff)
  return Found(None, 0, quarantined, {})
