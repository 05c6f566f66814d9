"""Training and evaluation of a decoder LM from an experiment config.

`train_and_evaluate(config, workdir)`: optax AdamW with warmup and cosine
decay (or the original Transformer's inverse square root), gradient
clipping, optional bfloat16 compute with float32 parameters, a jit-compiled
train step with donated state and per-step keys `fold_in(key, step)`,
periodic evaluation (loss, accuracy, bits per byte) and orbax checkpoints.
The batch is sharded over a `Mesh` data axis and the state replicated, so
the same code runs on one CPU, several devices, or a TPU/GPU host.
Restarting with the same workdir resumes from the newest good checkpoint,
bitwise: data batches are functions of the step, and the state holds the
step, the parameters, the optimizer and the PRNG key.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import attention
from experiments import checkpoints
from experiments import data as data_lib
from experiments import reporting
from experiments import tasks
from experiments import validation
import models

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def _model_config(config) -> models.TransformerConfig:
  m = config.model
  return models.TransformerConfig(
      vocab_size=256, model_dim=m.model_dim, num_layers=m.num_layers,
      num_heads=m.num_heads, num_kv_heads=m.num_kv_heads, mlp_dim=m.mlp_dim,
      mlp=m.mlp, norm=m.norm, dropout_rate=m.dropout_rate,
      attention=m.attention,
      attention_options=tuple(sorted(dict(m.attention_options).items())),
      position=m.position, max_length=config.data.max_length,
      tie_embeddings=m.tie_embeddings, qk_norm=m.qk_norm,
      shared_qk=m.shared_qk,
      dtype=(None if config.train.compute_dtype == 'float32'
             else DTYPES[config.train.compute_dtype]))


def make_optimizer(config) -> optax.GradientTransformation:
  t = config.train
  if t.schedule == 'cosine':
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, t.learning_rate, t.warmup_steps, t.num_steps,
        end_value=0.1 * t.learning_rate)
  else:  # Vaswani et al.: linear warmup, then 1 / sqrt(step).
    schedule = lambda s: t.learning_rate * jnp.minimum(
        (s + 1) / t.warmup_steps, jnp.sqrt(t.warmup_steps / (s + 1)))
  return optax.chain(optax.clip_by_global_norm(t.grad_clip_norm),
                     optax.adamw(schedule, weight_decay=t.weight_decay))


def _loss(graphdef, params, rest, inputs, targets, weights, key,
          deterministic):
  """Mean cross-entropy and accuracy over the weighted targets."""
  model = nnx.merge(graphdef, params, rest)
  if not deterministic:
    nnx.reseed(model, dropout=key)
  logits = model(inputs, deterministic=deterministic)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  total = jnp.maximum(weights.sum(), 1.0)
  accuracy = ((jnp.argmax(logits, -1) == targets) * weights).sum() / total
  return (loss * weights).sum() / total, accuracy


def _redraw(graphdef, params, rest, key, step, every):
  """`rest` with new random-feature projections where `step % every == 0`.

  The draw runs only on those steps (`lax.cond`), not on every step.
  """
  def redrawn(rest):
    model = nnx.merge(graphdef, params, rest)
    models.redraw_projections(model, key)
    return nnx.split(model, nnx.Param, ...)[2]

  return jax.lax.cond((step > 0) & (step % every == 0), redrawn,
                      lambda rest: rest, rest)


def _train_step(graphdef, tx, deterministic, redraw_every, state, inputs,
                targets, weights):
  key = jax.random.fold_in(state['key'], state['step'])
  if redraw_every:
    state = dict(state, rest=_redraw(
        graphdef, state['params'], state['rest'], jax.random.fold_in(key, 1),
        state['step'], redraw_every))
  grad_fn = jax.value_and_grad(
      functools.partial(_loss, graphdef), has_aux=True)
  (loss, accuracy), grads = grad_fn(state['params'], state['rest'], inputs,
                                    targets, weights, key, deterministic)
  updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
  params = optax.apply_updates(state['params'], updates)
  new_state = dict(state, params=params, opt_state=opt_state,
                   step=state['step'] + 1)
  return new_state, {'loss': loss, 'accuracy': accuracy}


def task_size(config, step: int) -> int:
  """The task size of training step `step` (`data.size_schedule`)."""
  size = config.data.size
  for start, later_size in sorted(config.data.size_schedule):
    if step >= start:
      size = later_size
  return size


@dataclasses.dataclass
class Run:
  """What a training run holds besides its state."""

  config: ml_collections.ConfigDict
  corpus: data_lib.Corpus | None  # None for synthetic tasks
  graphdef: nnx.GraphDef
  batch_sharding: NamedSharding
  evaluate_fn: object

  def _put(self, inputs, targets, weights=None):
    if weights is None:
      weights = np.ones(targets.shape, np.float32)
    return tuple(jax.device_put(x, self.batch_sharding)
                 for x in (inputs, targets, weights))

  def batch(self, step):
    """Training batch of `step`: (inputs, targets, weights), sharded."""
    c, size = self.config, self.config.train.batch_size
    if c.data.source in tasks.TASKS:
      inputs, targets, weights = tasks.batch(
          c.data.source, seed=c.seed, start=step * size, batch_size=size,
          size=task_size(c, step))
      if c.data.score_all_tokens:  # evaluation keeps the task's weights
        weights = None
      return self._put(inputs, targets, weights)
    return self._put(*data_lib.train_batch(
        self.corpus.train, seed=c.seed, step=step, batch_size=size,
        sequence_length=c.data.sequence_length))

  def eval_batch(self, index):
    c, size = self.config, self.config.train.batch_size
    if c.data.source in tasks.TASKS:  # a stream the training never draws
      return self._put(*tasks.batch(
          c.data.source, seed=c.seed + 1, start=index * size,
          batch_size=size, size=c.data.eval_size or c.data.size))
    return self._put(*data_lib.eval_batch(
        self.corpus.validation, index=index, batch_size=size,
        sequence_length=c.data.sequence_length))

  def evaluate(self, state):
    c, losses, accuracies = self.config, [], []
    for index in range(c.train.eval_batches):
      loss, accuracy = self.evaluate_fn(state['params'], state['rest'],
                                        *self.eval_batch(index))
      losses.append(float(loss))
      accuracies.append(float(accuracy))
    loss = float(np.mean(losses))
    return {'eval_loss': loss, 'eval_accuracy': float(np.mean(accuracies)),
            'eval_bpb': loss / math.log(2)}


def initial_state(config, tx):
  """Model graph and the fresh training state (params, optimizer, step)."""
  model = models.DecoderLM(_model_config(config),
                           rngs=nnx.Rngs(config.seed))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  state = {'params': params, 'rest': rest, 'opt_state': tx.init(params),
           'step': jnp.int32(0),
           'key': jax.random.key_data(jax.random.key(config.seed + 1))}
  return graphdef, state


def prepare(config) -> data_lib.Corpus | None:
  """Validates `config` and its data before anything is compiled.

  Returns:
    The text corpus, or None for a synthetic task.
  """
  validation.validate_config(config)
  if config.data.source in tasks.TASKS:
    return None
  corpus = data_lib.load(config.data.source, config.data.path,
                         config.data.validation_fraction)
  validation.validate_corpus(config, corpus)
  return corpus


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str):
  """Trains, evaluates and checkpoints; resumes from `workdir` if it can.

  Returns:
    The final evaluation metrics (dict).
  """
  corpus = prepare(config)
  os.makedirs(workdir, exist_ok=True)
  t = config.train
  mesh = Mesh(np.array(jax.devices()), ('data',))
  replicated = NamedSharding(mesh, PartitionSpec())
  tx = make_optimizer(config)
  graphdef, state = initial_state(config, tx)
  mngr = checkpoints.manager(workdir, t.keep_checkpoints)
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
      state)
  restored = checkpoints.restore_latest(mngr, abstract)
  state = jax.device_put(restored if restored is not None else state,
                         replicated)
  deterministic = config.model.dropout_rate == 0.0
  train_step = jax.jit(
      functools.partial(_train_step, graphdef, tx, deterministic,
                        t.redraw_projections_every),
      donate_argnums=0)
  evaluate_fn = jax.jit(lambda p, r, x, y, w: _loss(graphdef, p, r, x, y, w,
                                                     None, True))
  run = Run(config, corpus, graphdef, NamedSharding(mesh, PartitionSpec(
      'data')), evaluate_fn)
  step = int(state['step'])
  reporter = reporting.Reporter(workdir, t.num_steps,
                                t.batch_size * config.data.sequence_length,
                                start_step=step)
  print(f'{"resuming at" if step else "starting"} step {step} of '
        f'{t.num_steps}: {config.model.attention} attention, '
        f'{sum(x.size for x in jax.tree.leaves(state["params"])):,} '
        f'parameters, {jax.device_count()} device(s), workdir {workdir}',
        flush=True)
  start, window = time.perf_counter(), []
  while step < t.num_steps and time.perf_counter() - start < t.max_seconds:
    state, metrics = train_step(state, *run.batch(step))
    step += 1
    window.append(metrics)
    if step % t.log_every == 0 or step == t.num_steps:
      loss = float(np.mean([float(m['loss']) for m in window]))
      reporter.write(step, train_loss=loss, train_bpb=loss / math.log(2),
                     train_accuracy=float(np.mean(
                         [float(m['accuracy']) for m in window])))
      reporter.progress(step, loss)
      window = []
    if step % t.eval_every == 0:
      reporter.write(step, **run.evaluate(state))
    if step % t.checkpoint_every == 0 or mngr.reached_preemption(step):
      checkpoints.save(mngr, step, state)
  final = run.evaluate(state)
  reporter.write(step, **final)
  if step not in mngr.all_steps():
    checkpoints.save(mngr, step, state, force=True)
  mngr.wait_until_finished()
  reporter.close()
  plot = reporting.plot(workdir)
  print(f'done: step {step}, validation loss {final["eval_loss"]:.4f}, '
        f'{final["eval_bpb"]:.3f} bits/byte, accuracy '
        f'{final["eval_accuracy"]:.3f}; checkpoints in {mngr.directory}, '
        f'metrics in {reporter.path}, plot {plot}', flush=True)
  return final


def trained_state(config, workdir: str):
  """Trains (or resumes, or reuses) one run; its final training state."""
  train_and_evaluate(config, workdir)
  _, state = initial_state(config, make_optimizer(config))
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                          state)
  mngr = checkpoints.manager(workdir, config.train.keep_checkpoints)
  return checkpoints.restore_latest(mngr, abstract)
