"""Variants and hash-round evaluation for the duplication experiment.

`experiments/duplication.py` is the command; these are its pieces: a config
per variant ("full": `lsh` with one chunk, exact shared-QK attention; or
"lsh-P": P hash rounds) and accuracy on
examples the training never drew, with new hashes for every batch.
"""

from __future__ import annotations

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from efficient_attention.experiments import tasks
from efficient_attention.experiments import train
from efficient_attention import models
def variant_config(config, variant: str):
  """`config` with the attention options of `variant` ('full' or 'lsh-P')."""
  options = dict(config.model.attention_options)
  if variant == 'full':  # one chunk: exact shared-QK attention
    options.update(chunk_size=config.data.max_length, num_hashes=1)
  elif variant.startswith('lsh-') and variant[4:].isdigit():
    options.update(num_hashes=int(variant[4:]))
  else:
    raise ValueError(f'variant must be full or lsh-P, got {variant!r}')
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.model.attention_options = options
  return config


def evaluate(config, state, num_batches: int):
  """Token accuracy and exact-sequence accuracy on the second copy."""
  graphdef, _ = train.initial_state(config, train.make_optimizer(config))

  @jax.jit
  def scores(params, rest, key, inputs, targets, weights):
    model = nnx.merge(graphdef, params, rest)
    models.redraw_projections(model, key)  # new hashes for this batch
    correct = jnp.argmax(model(inputs), -1) == targets
    scored = weights > 0
    return ((correct & scored).sum() / scored.sum(),
            jnp.all(correct | ~scored, axis=-1).mean())

  size, results = config.train.batch_size, []
  for index in range(num_batches):
    inputs, targets, weights = tasks.batch(
        config.data.source, seed=config.seed + 1, start=index * size,
        batch_size=size, size=config.data.eval_size or config.data.size)
    key = jax.random.fold_in(jax.random.key(config.seed + 2), index)
    results.append([float(x) for x in scores(
        state['params'], state['rest'], key, inputs, targets, weights)])
  token, sequence = np.mean(results, axis=0)
  return {'token_accuracy': float(token), 'sequence_accuracy': float(sequence)}


def table(results, trained, evaluated) -> str:
  """Markdown: token accuracy (whole second copies right) per variant."""
  name = lambda v: 'full' if v == 'full' else f'LSH-{v[4:]}'
  lines = ['| trained with | ' + ' | '.join(
      f'eval {name(e)}' for e in evaluated) + ' |',
           '|---|' + '---|' * len(evaluated)]
  for t in trained:
    cells = [f'{100 * results[t][e]["token_accuracy"]:.1f}% '
             f'({100 * results[t][e]["sequence_accuracy"]:.1f}%)'
             for e in evaluated]
    lines.append(f'| {name(t)} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)
