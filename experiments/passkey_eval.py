"""Variants and long-context evaluation for the passkey experiment.

`experiments/passkey.py` is the command; these are its pieces: a config per
mechanism (the same segment for Infini-attention and Transformer-XL, the
same window for sliding-window attention), example lengths at multiples of
the training one, and whole-key accuracy on examples training never drew.
"""

from __future__ import annotations

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from efficient_attention.experiments import tasks
from efficient_attention.experiments import train

KEY_DIGITS = 5


def variant_config(config, variant: str):
  """`config` with the mechanism of `variant`; same segment or window."""
  segment = config.model.attention_options['segment_size']
  chunk = config.model.attention_options.get('chunk_size', segment)
  options = {'infini': ('infini', {'segment_size': segment,
                                   'chunk_size': chunk}, ''),
             'xl': ('xl', {'segment_size': segment, 'memory_length': segment,
                           'chunk_size': chunk}, ''),
             'window': ('blockwise', {'query_chunk_size': chunk,
                                      'key_chunk_size': chunk},
                        f'sliding_window({segment})')}
  if variant not in options:
    raise ValueError(f'variant must be one of {sorted(options)}, got '
                     f'{variant!r}')
  config = config.copy_and_resolve_references()
  with config.unlocked():
    (config.model.attention, config.model.attention_options,
     config.model.attention_mask) = options[variant]
  return config


def filler_size(config, multiple: int) -> int:
  """Filler bytes that make an example `multiple` times the longest
  training one."""
  overhead = len(tasks.passkey(np.random.default_rng(0), 0)[0])
  longest = max([config.data.size] +
                [size for _, size in config.data.size_schedule])
  return multiple * (longest + overhead) - overhead


def columns(config, multiples) -> dict[str, int]:
  """Filler bytes of each evaluated length: the first training size (when
  training is a curriculum) and `multiples` of the longest one."""
  lengths = {}
  if config.data.size_schedule:
    lengths['first size'] = config.data.size
  lengths.update({f'{m}x': filler_size(config, m) for m in multiples})
  return lengths


def evaluate(config, state, filler: int, num_examples: int,
             batch_size: int = 4):
  """All-digits and per-digit accuracy with `filler` bytes of filler."""
  graphdef, _ = train.initial_state(config, train.make_optimizer(config))

  @jax.jit
  def correct(params, rest, inputs, targets):
    model = nnx.merge(graphdef, params, rest)
    hidden = model.stack(inputs, is_causal=True)[:, -KEY_DIGITS:]
    return jnp.argmax(model.head(hidden), -1) == targets[:, -KEY_DIGITS:]

  digits = []
  for start in range(0, num_examples, batch_size):
    inputs, targets, weights = tasks.batch(
        'passkey', seed=config.seed + 1, start=start,
        batch_size=min(batch_size, num_examples - start),
        size=filler)
    assert (weights[:, -KEY_DIGITS:] > 0).all() and weights.sum() == (
        KEY_DIGITS * len(weights))
    digits.append(np.asarray(correct(state['params'], state['rest'],
                                     inputs, targets)))
  digits = np.concatenate(digits)
  return {'key_accuracy': float(digits.all(-1).mean()),
          'digit_accuracy': float(digits.mean()),
          'tokens': int(inputs.shape[1]) + 1}  # the example's length


def table(results, variants, labels,
          trained: str = 'trained up to ~1k tokens') -> str:
  """Markdown: whole-key accuracy (digit accuracy) per variant and length;
  `trained` heads the first column."""
  names = {'infini': 'Infini-attention', 'xl': 'Transformer-XL',
           'window': 'sliding window'}
  first = results[variants[0]]
  lines = [f'| {trained} | ' + ' | '.join(
      f'{label} ({first[label]["tokens"]:,} tokens)' for label in labels) +
           ' |', '|---|' + '---|' * len(labels)]
  for v in variants:
    cells = [f'{100 * results[v][label]["key_accuracy"]:.0f}% '
             f'({100 * results[v][label]["digit_accuracy"]:.0f}%)'
             for label in labels]
    lines.append(f'| {names[v]} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)
