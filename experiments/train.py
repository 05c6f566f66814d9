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
step, the parameters, the optimizer and the PRNG key. What a run survives
(kills, preemption, corrupt checkpoints, changed configs, a second run on
the same workdir) is in `train_and_evaluate`'s docstring and the README.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import signal
import time

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from efficient_attention.experiments import checkpoints
from efficient_attention.experiments import data as data_lib
from efficient_attention.experiments import preemption
from efficient_attention.experiments import reporting
from efficient_attention.experiments import resume
from efficient_attention.experiments import model_config
from efficient_attention.experiments import tasks
from efficient_attention.experiments import validation
from efficient_attention.experiments import workdir_lock
from efficient_attention import models
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


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


def _loss(graphdef, params, rest, inputs, targets, weights, segment_ids,
          key, deterministic):
  """Mean cross-entropy and accuracy over the weighted targets; packed
  documents (`segment_ids`, or None) are kept apart."""
  model = nnx.merge(graphdef, params, rest)
  if not deterministic:
    nnx.reseed(model, dropout=key)
  logits = model(inputs, segment_ids=segment_ids,
                 deterministic=deterministic)
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
                targets, weights, segment_ids):
  key = jax.random.fold_in(state['key'], state['step'])
  if redraw_every:
    state = dict(state, rest=_redraw(
        graphdef, state['params'], state['rest'], jax.random.fold_in(key, 1),
        state['step'], redraw_every))
  grad_fn = jax.value_and_grad(
      functools.partial(_loss, graphdef), has_aux=True)
  (loss, accuracy), grads = grad_fn(state['params'], state['rest'], inputs,
                                    targets, weights, segment_ids, key,
                                    deterministic)
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
  train_step: object = None

  def _put(self, inputs, targets, weights=None, segment_ids=None):
    if weights is None:
      weights = np.ones(targets.shape, np.float32)
    return tuple(None if x is None else jax.device_put(x, self.batch_sharding)
                 for x in (inputs, targets, weights, segment_ids))

  def _documents(self, split):
    """Document starts of a text split when `data.pack`, else None."""
    return self.corpus.starts(split) if self.config.data.pack else None

  def batch(self, step):
    """Training batch of `step`: (inputs, targets, weights, segment_ids or
    None), sharded."""
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
        sequence_length=c.data.sequence_length,
        documents=self._documents('train')))

  def eval_batch(self, index):
    c, size = self.config, self.config.train.batch_size
    if c.data.source in tasks.TASKS:  # a stream the training never draws
      return self._put(*tasks.batch(
          c.data.source, seed=c.seed + 1, start=index * size,
          batch_size=size, size=c.data.eval_size or c.data.size))
    return self._put(*data_lib.eval_batch(
        self.corpus.validation, index=index, batch_size=size,
        sequence_length=c.data.sequence_length,
        documents=self._documents('validation')))

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
  model = models.DecoderLM(model_config.transformer_config(config),
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


def structure_of(config) -> dict:
  """`checkpoints.structure` of the state `config` builds (no arrays made)."""
  return checkpoints.structure(jax.eval_shape(
      lambda: initial_state(config, make_optimizer(config))[1]))


def abstract_state(state, sharding=None):
  """`jax.ShapeDtypeStruct`s of `state`: what a checkpoint restores into."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
      state)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       wait_for_lock: float = 0.0) -> dict[str, float]:
  """Trains, evaluates and checkpoints; resumes from `workdir` if it can.

  What it guarantees (README, "What a run survives"): the config and data
  are validated before anything is compiled; one run at a time holds the
  workdir; the newest readable checkpoint is resumed (unreadable ones are
  quarantined, kept, and reported); checkpoints of a model of another
  structure stop the run and are never deleted; SIGTERM or SIGINT save the
  current step before stopping.

  Args:
    config: the experiment config (`experiments/configs/default.py`).
    workdir: checkpoints, metrics and plots go here.
    wait_for_lock: seconds to wait for another run holding `workdir`.

  Returns:
    The final evaluation metrics (dict).

  Raises:
    validation.ConfigError: a bad config or data, before anything runs.
    workdir_lock.Busy: another live run holds `workdir`.
    resume.ConfigMismatch: `workdir` holds checkpoints of a model of
      another structure.
    preemption.Interrupted: SIGTERM or SIGINT stopped training after the
      checkpoint of the current step was saved (a SystemExit, code 128 +
      the signal's number).
  """
  corpus = prepare(config)
  os.makedirs(workdir, exist_ok=True)
  # One lock per run: in a multi-process run, process 0 holds it for all.
  lock = (workdir_lock.hold(workdir, wait_seconds=wait_for_lock)
          if jax.process_index() == 0 else contextlib.nullcontext())
  with lock as stale:
    with preemption.signals() as stop:
      return _train(config, workdir, corpus, stop, stale)


def _start_notes(found, stale, reporter, step) -> list[str]:
  """What this run found in its workdir: events in metrics.jsonl, and
  notes for the console and the final summary."""
  notes = []
  for bad_step, why, where in found.quarantined:
    reporter.write(step, event='quarantine', checkpoint=bad_step,
                   reason=why[:500], moved_to=where)
    notes.append(f'the checkpoint of step {bad_step} could not be read '
                 f'({why[:200]}); it was moved to {where}')
  if found.quarantined:
    notes.append(f'resumed from step {found.step}, the newest readable '
                 'checkpoint' if found.state is not None else
                 'no readable checkpoint was left: started from step 0')
  if found.changes:
    reporter.write(step, event='config_changed', changes={
        p: list(change) for p, change in found.changes.items()})
    notes.append(
        f'config changed since the checkpoint of step {found.step} (the '
        'state\'s structure is the same, so it resumes): ' + ', '.join(
            f'config.{p}: {old!r} -> {new!r}'
            for p, (old, new) in found.changes.items()))
  if stale:
    notes.append(f'took over the stale lock of '
                 f'{workdir_lock.describe(stale)}, which ended without '
                 'releasing it')
  if reporter.torn is not None:
    notes.append('metrics.jsonl ended in a torn line (a run died while '
                 'writing it); it was moved to metrics.jsonl.torn')
  return notes


def _train(config, workdir, corpus, stop, stale):
  t = config.train
  mesh = Mesh(np.array(jax.devices()), ('data',))
  replicated = NamedSharding(mesh, PartitionSpec())
  tx = make_optimizer(config)
  graphdef, state = initial_state(config, tx)
  mngr = checkpoints.manager(workdir, t.keep_checkpoints)
  found = resume.latest(mngr, abstract_state(state, replicated), config,
                        structure_of)
  state = jax.device_put(state if found.state is None else found.state,
                         replicated)
  config_json = resume.config_dict(config)
  checkpoints.write_json(os.path.join(workdir, 'config.json'), config_json)
  step = int(state['step'])
  if step >= t.num_steps:  # a finished run, started again: report, exit
    final = _recorded_eval(workdir, step)
    if final is not None:
      print(f'already finished: step {step} of {t.num_steps}, '
            f'{_summary(final)}; nothing to do (metrics in '
            f'{os.path.join(workdir, "metrics.jsonl")}; a new run needs '
            'another --workdir)', flush=True)
      return final
  reporter = reporting.Reporter(workdir, t.num_steps,
                                t.batch_size * config.data.sequence_length,
                                start_step=step, max_seconds=t.max_seconds)
  reporter.write(step, event='start')
  notes = _start_notes(found, stale, reporter, step)
  print(f'{"resuming at" if step else "starting"} step {step} of '
        f'{t.num_steps}: {config.model.attention} attention, '
        f'{sum(x.size for x in jax.tree.leaves(state["params"])):,} '
        f'parameters, {jax.device_count()} device(s), workdir {workdir}',
        flush=True)
  for note in notes:
    print(f'note: {note}', flush=True)
  deterministic = config.model.dropout_rate == 0.0
  run = Run(config, corpus, graphdef, NamedSharding(mesh, PartitionSpec(
      'data')), jax.jit(lambda p, r, x, y, w, s: _loss(
          graphdef, p, r, x, y, w, s, None, True)),
            jax.jit(functools.partial(_train_step, graphdef, tx,
                                      deterministic,
                                      t.redraw_projections_every),
                    donate_argnums=0))
  saver = functools.partial(_save, mngr, config_json)
  state, step, reason, last_eval = _loop(run, state, step, saver, mngr,
                                         reporter, stop)
  if step > 0 and step not in mngr.all_steps():
    saver(step, state, force=True)
  saver(None, None)  # waits for the saves in flight
  if reason in ('SIGTERM', 'SIGINT', 'preemption'):
    reporter.write(step, event='end', reason=reason, finished=False,
                   num_steps=t.num_steps)
    reporter.close()
    print(f'stopped at step {step} of {t.num_steps} ({reason}): its '
          f'checkpoint is saved in {mngr.directory}; run the same command '
          'again to resume', flush=True)
    raise preemption.Interrupted(stop.signum or signal.SIGTERM, step)
  final = last_eval or _recorded_eval(workdir, step)
  if final is None:
    final = run.evaluate(state)
    reporter.write(step, **final)
  finished = step >= t.num_steps
  why = None
  if reason == 'max_seconds':
    why = (f'config.train.max_seconds={t.max_seconds:g} of training ran '
           'out (0 removes the cap)')
  reporter.write(step, event='end', reason=reason, finished=finished,
                 num_steps=t.num_steps, **({'why': why} if why else {}))
  reporter.close()
  plot = reporting.plot(workdir)
  head = ('done' if finished else
          f'STOPPED EARLY at step {step} of {t.num_steps} ({why}); the '
          'learning-rate schedule did not finish; run the same command '
          'again to go on')
  print(f'{head}: step {step}, {_summary(final)}; checkpoints in '
        f'{mngr.directory}, metrics in {reporter.path}, plot {plot}',
        flush=True)
  for note in notes:
    print(f'note: {note}', flush=True)
  return final


def _summary(final: dict) -> str:
  return (f'validation loss {final["eval_loss"]:.4f}, '
          f'{final["eval_bpb"]:.3f} bits/byte, accuracy '
          f'{final["eval_accuracy"]:.3f}')


def _recorded_eval(workdir: str, step: int) -> dict | None:
  """The evaluation metrics metrics.jsonl holds for `step`, if any (so a
  restart never evaluates, nor records, the same step twice)."""
  rows = [r for r in reporting.read_metrics(workdir)
          if r['step'] == step and 'eval_loss' in r]
  if not rows:
    return None
  return {k: rows[-1][k] for k in ('eval_loss', 'eval_accuracy', 'eval_bpb')}


def _save(mngr, config_json, step, state, force=False):
  """Saves asynchronously (`step` None: waits for the saves in flight).

  A save that fails (a full disk, say) stops the run with the reason; the
  checkpoints already complete are left as they are.
  """
  try:
    if step is None:
      mngr.wait_until_finished()
    else:
      checkpoints.save(mngr, step, state, config_json, force=force)
  except Exception as error:  # pylint: disable=broad-except
    why = f'{type(error).__name__}: {error}'
    raise RuntimeError(
        f'saving a checkpoint in {mngr.directory} failed ({why[:300]}); the '
        'checkpoints completed before it are kept, and a rerun resumes from '
        'the newest of them') from error


def _loop(run, state, step, saver, mngr, reporter, stop):
  """Trains until the last step, a stop request or the time budget.

  Returns:
    `(state, step, reason, last_eval)`: the reason is 'finished',
    'max_seconds', 'preemption' or the signal's name; `last_eval` the
    evaluation metrics of this very step, if it ended on one.
  """
  t = run.config.train
  start, window, last_eval, reason = time.perf_counter(), [], None, 'finished'
  while step < t.num_steps:
    if stop.signum is not None:
      reason = stop.name
      break
    if t.max_seconds and time.perf_counter() - start >= t.max_seconds:
      reason = 'max_seconds'
      break
    state, metrics = run.train_step(state, *run.batch(step))
    step += 1
    window.append(metrics)
    last_eval = None
    if step % t.log_every == 0 or step == t.num_steps:
      loss = float(np.mean([float(m['loss']) for m in window]))
      reporter.write(step, train_loss=loss, train_bpb=loss / math.log(2),
                     train_accuracy=float(np.mean(
                         [float(m['accuracy']) for m in window])))
      reporter.progress(step, loss, elapsed=time.perf_counter() - start)
      window = []
    if step % t.eval_every == 0:
      last_eval = run.evaluate(state)
      reporter.write(step, **last_eval)
    preempted = mngr.reached_preemption(step)
    if step % t.checkpoint_every == 0 or preempted:
      saver(step, state)
    if preempted:
      reason = 'preemption'
      break
  return state, step, reason, last_eval


def trained_state(config, workdir: str):
  """Trains (or resumes, or reuses) one run; its final training state."""
  train_and_evaluate(config, workdir)
  _, state = initial_state(config, make_optimizer(config))
  mngr = checkpoints.manager(workdir, config.train.keep_checkpoints)
  return checkpoints.restore(mngr, mngr.latest_step(), abstract_state(state))
