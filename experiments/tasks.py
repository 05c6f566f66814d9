"""Synthetic tasks that separate attention mechanisms, as byte sequences.

Each example is a deterministic function of `(seed, index)`: an int32
sequence `[L + 1]` and float32 weights `[L + 1]` marking the tokens whose
prediction is scored (the answers). A language model reads `tokens[:-1]`
and predicts `tokens[1:]`; the loss counts only weighted targets.

- `mqar`: multi-query associative recall (Arora et al. 2023, "Zoology",
  arXiv 2312.04927): `size` key-value pairs, then every key again; predict
  its value.
- `copy`: the duplication task of Reformer's Table 2 (Kitaev et al. 2020,
  arXiv 2001.04451): `0 w 0 w` for random symbols w of length `size`;
  predict the second copy.
- `passkey`: a five-digit number hidden in `size` bytes of filler text,
  asked for at the end (Mohtashami & Jaggi 2023, arXiv 2305.16300).
- `parity`: `size` bits, `=`, their parity.
- `addition`: two `size`-digit numbers and their sum, digits written least
  significant first (so each answer digit depends on what came before).

Train short and evaluate longer with `data.size` and `data.eval_size`.
"""

from __future__ import annotations

import numpy as np

_FILLER = b'The grass is green. The sky is blue. The sun is yellow. '


def _encode(parts):
  """`[(bytes or ints, scored)]` -> (tokens int32, weights float32)."""
  tokens, weights = [], []
  for part, scored in parts:
    values = list(part)
    tokens += values
    weights += [float(scored)] * len(values)
  return np.asarray(tokens, np.int32), np.asarray(weights, np.float32)


def mqar(rng, size):
  keys = rng.choice(np.arange(16, 16 + 96), size, replace=False)
  values = rng.integers(128, 128 + 96, size)
  parts = [([k, v], False) for k, v in zip(keys, values)]
  for i in rng.permutation(size):
    parts += [([keys[i]], False), ([values[i]], True)]
  return _encode(parts)


def copy(rng, size):
  symbols = list(rng.integers(1, 64, size))
  return _encode([([0], False), (symbols, False), ([0], False),
                  (symbols, True)])


def passkey(rng, size):
  key = b'%05d' % rng.integers(0, 100000)
  needle = b' The pass key is ' + key + b'. Remember it. '
  filler = (_FILLER * (size // len(_FILLER) + 1))[:size]
  at = int(rng.integers(0, size + 1))
  return _encode([(filler[:at] + needle + filler[at:], False),
                  (b' What is the pass key? The pass key is ', False),
                  (key, True)])


def parity(rng, size):
  bits = rng.integers(0, 2, size)
  return _encode([(bytes(b'01'[b] for b in bits) + b'=', False),
                  (b'01'[int(bits.sum()) % 2:][:1], True)])


def addition(rng, size):
  a, b = (rng.integers(0, 10, size) for _ in range(2))
  total = (a * 10 ** np.arange(size)).sum() + (b * 10 ** np.arange(size)).sum()
  answer = [(int(total) // 10 ** i) % 10 for i in range(size + 1)]
  digits = lambda ds: bytes(ord('0') + int(d) for d in ds)
  return _encode([(digits(a) + b'+' + digits(b) + b'=', False),
                  (digits(answer), True)])


TASKS = {'mqar': mqar, 'copy': copy, 'passkey': passkey, 'parity': parity,
         'addition': addition}
# The sizes each task can make, (smallest, largest or None): mqar draws its
# keys from 96 symbols without replacement; addition's sum must fit int64.
SIZES = {'mqar': (1, 96), 'copy': (1, None), 'passkey': (1, None),
         'parity': (1, None), 'addition': (1, 18)}


def length(task: str, size: int) -> int:
  """Tokens a model reads per example of `task` at `size`."""
  return len(TASKS[task](np.random.default_rng(0), size)[0]) - 1


def batch(task: str, *, seed: int, start: int, batch_size: int, size: int):
  """Examples `start .. start + batch_size - 1`: (inputs, targets, weights).

  inputs and targets are int32 `[batch, L]`, weights float32 `[batch, L]`.
  """
  examples = [TASKS[task](np.random.default_rng((seed, start + i)), size)
              for i in range(batch_size)]
  tokens = np.stack([t for t, _ in examples])
  weights = np.stack([w for _, w in examples])
  return tokens[:, :-1], tokens[:, 1:], weights[:, 1:]
