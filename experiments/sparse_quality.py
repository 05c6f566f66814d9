r"""A quality check that catches a broken sparse pattern: far-token
classification.

Each example is N random filler tokens; position 0 holds a classification
token, and one position in the far half holds one of C class tokens (which
appear nowhere else). An encoder (`models.Encoder`, CLS pooling) must
answer the class: information from far away has to reach position 0. Each
mechanism trains the same model for the same steps from the same seed;
dense blockwise attention is the baseline, and a window-only Longformer (no
global token, a window far shorter than the distance) is the control that
must stay at chance (1 / C): a pattern that loses far tokens looks like it.

  python -m efficient_attention.experiments.sparse_quality
  python -m efficient_attention.experiments.sparse_quality --steps=50 --length=256

Prints a markdown table: accuracy on held-out examples, seconds per
training step, and the compiled training step's temporary memory.
"""

from __future__ import annotations

import time

from absl import app
from absl import flags
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from efficient_attention import models
from efficient_attention.experiments import timing

_LENGTH = flags.DEFINE_integer('length', 512, 'N, tokens per example.')
_STEPS = flags.DEFINE_integer('steps', 300, 'Training steps per mechanism.')
_BATCH = flags.DEFINE_integer('batch_size', 32, 'Examples per step.')
_CLASSES = flags.DEFINE_integer('classes', 4, 'C, classes (chance 1 / C).')
_EVAL = flags.DEFINE_integer('eval_examples', 512, 'Held-out examples.')
_MECHANISMS = flags.DEFINE_list(
    'mechanisms', ['dense', 'sparse_transformer', 'longformer', 'bigbird',
                   'linformer', 'window_only'], 'Rows of the table.')
_OUTPUT = flags.DEFINE_string('output', None, 'Write results as JSON.')

VOCAB = 64  # 0: classification token; 1..C: classes; the rest: filler


def variants(length: int):
  """name -> (registered mechanism, options), sized for `length`."""
  period = max(8, int(round(np.sqrt(length) / 8)) * 8)
  return {
      'dense': ('blockwise', dict(query_chunk_size=128, key_chunk_size=128)),
      'sparse_transformer': ('sparse_transformer', dict(
          pattern='strided', stride=period, query_chunk_size=64,
          key_chunk_size=64)),
      'longformer': ('longformer', dict(window=16, global_tokens=1,
                                        query_chunk_size=64,
                                        key_chunk_size=64)),
      'bigbird': ('bigbird', dict(block_size=16, global_blocks=1,
                                  random_blocks=2, query_chunk_size=16,
                                  key_chunk_size=16)),
      'linformer': ('linformer', dict(projected_length=64,
                                      sequence_length=length)),
      'window_only': ('longformer', dict(window=16, global_tokens=0,
                                         query_chunk_size=64,
                                         key_chunk_size=64)),
  }


def examples(seed: int, count: int, length: int, classes: int):
  """`(tokens [count, length], labels [count])`: the class token sits in
  the far half, `length / 2` to `length - 1`."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(1 + classes, VOCAB, (count, length))
  tokens[:, 0] = 0
  labels = rng.integers(0, classes, count)
  where = rng.integers(length // 2, length, count)
  tokens[np.arange(count), where] = 1 + labels
  return jnp.asarray(tokens, jnp.int32), jnp.asarray(labels, jnp.int32)


def _model(name: str, length: int, classes: int):
  mechanism, options = variants(length)[name]
  config = models.TransformerConfig(
      vocab_size=VOCAB, model_dim=64, num_layers=3, num_heads=4,
      num_kv_heads=4, mlp_dim=128, max_length=length, attention=mechanism,
      attention_options=tuple(options.items()))
  return models.Encoder(config, num_classes=classes, pooling='cls',
                        rngs=nnx.Rngs(0))


def run(name: str, length: int, steps: int, batch: int, classes: int,
        eval_examples: int) -> dict:
  """Trains one mechanism; its held-out accuracy, time and memory."""
  model = _model(name, length, classes)
  optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)

  def loss_fn(model, tokens, labels):
    logits = model.classify(model(tokens))
    return optax.softmax_cross_entropy_with_integer_labels(
        logits, labels).mean()

  @nnx.jit
  def step(model, optimizer, tokens, labels):
    loss, grads = nnx.value_and_grad(loss_fn)(model, tokens, labels)
    optimizer.update(model, grads)
    return loss

  tokens, labels = examples(0, batch, length, classes)
  graphdef, state = nnx.split((model, optimizer))
  memory = jax.jit(lambda state, x, y: step(
      *nnx.merge(graphdef, state), x, y)).lower(
          state, tokens, labels).compile().memory_analysis()
  step(model, optimizer, tokens, labels)  # compile
  start = time.perf_counter()
  for i in range(1, steps):
    loss = step(model, optimizer, *examples(i, batch, length, classes))
  jax.block_until_ready(loss)
  seconds = (time.perf_counter() - start) / max(steps - 1, 1)
  predict = nnx.jit(lambda model, x: jnp.argmax(model.classify(model(x)), -1))
  tokens, labels = examples(10**6, eval_examples, length, classes)
  correct = sum(int((predict(model, tokens[i:i + 64]) ==
                     labels[i:i + 64]).sum())
                for i in range(0, eval_examples, 64))
  return dict(mechanism=name, accuracy=correct / eval_examples,
              final_loss=float(loss), seconds_per_step=seconds,
              temp_bytes=memory.temp_size_in_bytes, steps=steps,
              length=length)


def main(argv):
  del argv
  length, classes = _LENGTH.value, _CLASSES.value
  print(f'far-token classification: N={length}, C={classes} (chance '
        f'{1 / classes:.2f}), {_STEPS.value} steps of {_BATCH.value}, '
        f'3 layers of 64, on {jax.devices()[0].device_kind}')
  print('| mechanism | options | accuracy | final loss | s / step | '
        'train step temp MB |')
  print('|---|---|---|---|---|---|')
  results = []
  for name in _MECHANISMS.value:
    row = run(name, length, _STEPS.value, _BATCH.value, classes,
              _EVAL.value)
    results.append(row)
    mechanism, options = variants(length)[name]
    shown = ', '.join(f'{k}={v}' for k, v in options.items()
                      if 'chunk' not in k)
    print(f"| {name} | `{mechanism}` {shown} | {row['accuracy']:.3f} | "
          f"{row['final_loss']:.3f} | {row['seconds_per_step']:.3f} | "
          f"{row['temp_bytes'] / 1e6:.1f} |", flush=True)
  timing.write_rows(_OUTPUT.value, results)


if __name__ == '__main__':
  app.run(main)
