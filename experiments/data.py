"""Byte-level text data as plain NumPy: the standard library, or a file.

The default corpus is Python's own standard library: every `.py` file under
`sysconfig`'s stdlib path, without `site-packages` and test directories,
sorted by path. Files go to validation by a hash of their relative path
(deterministic on every machine with the same Python), so no text is in
both splits. `path` instead reads one local file (enwik8, say) and holds out
its last bytes.

A training batch is a pure function of `(seed, step)`: the iterator's whole
state is the step, which the checkpoint holds.
"""

from __future__ import annotations

import dataclasses
import os
import sysconfig
import zlib

import numpy as np

_SKIP_DIRS = {'site-packages', 'dist-packages', 'test', 'tests',
              'idle_test', '__pycache__'}


def stdlib_files() -> list[str]:
  """Sorted paths of the standard library's `.py` sources (no tests)."""
  root = sysconfig.get_paths()['stdlib']
  found = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
    found += [os.path.join(dirpath, f) for f in filenames if f.endswith('.py')]
  if not found:
    raise FileNotFoundError(f'no .py files under the stdlib path {root}')
  return sorted(found)


@dataclasses.dataclass(frozen=True)
class Corpus:
  """Training and validation bytes as uint8 arrays, and where each split's
  documents (files) start."""

  train: np.ndarray
  validation: np.ndarray
  train_starts: np.ndarray = dataclasses.field(
      default_factory=lambda: np.zeros(1, np.int64))
  validation_starts: np.ndarray = dataclasses.field(
      default_factory=lambda: np.zeros(1, np.int64))

  def starts(self, split: str) -> np.ndarray:
    """Offsets of the documents of `split` ('train' or 'validation')."""
    return {'train': self.train_starts,
            'validation': self.validation_starts}[split]


def load(source: str, path: str = '', validation_fraction: float = 0.05):
  """Loads the corpus named by the data config."""
  if not 0 < validation_fraction < 1:
    raise ValueError('data.validation_fraction must be in (0, 1), got '
                     f'{validation_fraction}')
  if source == 'stdlib':
    root = sysconfig.get_paths()['stdlib']
    buckets = int(round(1 / validation_fraction))
    splits = {True: [], False: []}
    for name in stdlib_files():
      held_out = zlib.crc32(os.path.relpath(name, root).encode()) % buckets == 0
      with open(name, 'rb') as f:
        splits[held_out].append(f.read())
    as_array = lambda parts: np.frombuffer(b''.join(parts), np.uint8)
    starts = lambda parts: np.cumsum([0] + [len(p) for p in parts[:-1]])
    return Corpus(as_array(splits[False]), as_array(splits[True]),
                  starts(splits[False]), starts(splits[True]))
  if source == 'file':
    if not path or not os.path.isfile(path):
      raise ValueError(f"data.path must name a file for source='file', got "
                       f'{path!r}')
    data = np.fromfile(path, np.uint8)
    cut = int(len(data) * (1 - validation_fraction))
    return Corpus(data[:cut], data[cut:])
  raise ValueError(f"data.source must be 'stdlib' or 'file', got {source!r}")


def _windows(data, starts, length):
  return np.stack([data[s:s + length + 1] for s in starts]).astype(np.int32)


def _batch(data, starts, length, documents):
  """`(inputs, targets)`; with `documents` (their start offsets) packed:
  `(inputs, targets, weights, segment_ids)`, where a window's bytes carry
  the index of their document (from 0 in each row) and a target in
  another document than its input weighs 0."""
  windows = _windows(data, starts, length)
  if documents is None:
    return windows[:, :-1], windows[:, 1:]
  positions = np.asarray(starts)[:, None] + np.arange(length + 1)[None, :]
  document = np.searchsorted(documents, positions, side='right') - 1
  document = (document - document[:, :1]).astype(np.int32)
  weights = (document[:, 1:] == document[:, :-1]).astype(np.float32)
  return windows[:, :-1], windows[:, 1:], weights, document[:, :-1]


def train_batch(data, *, seed: int, step: int, batch_size: int,
                sequence_length: int, documents=None):
  """Random windows `(inputs, targets)`, each int32 `[batch, length]`; with
  `documents`, packed (see `_batch`)."""
  rng = np.random.default_rng((seed, step))
  starts = rng.integers(0, len(data) - sequence_length - 1, batch_size)
  return _batch(data, starts, sequence_length, documents)


def eval_batch(data, *, index: int, batch_size: int, sequence_length: int,
               documents=None):
  """The `index`-th batch of consecutive, non-overlapping windows; with
  `documents`, packed (see `_batch`)."""
  count = (len(data) - 1) // sequence_length
  starts = (np.arange(batch_size) + index * batch_size) % count
  return _batch(data, starts * sequence_length, sequence_length, documents)
