"""SIGTERM and SIGINT stop training cleanly, after a checkpoint is saved.

Clusters preempt jobs with SIGTERM and a grace period; Ctrl-C sends SIGINT.
While `signals()` is active the first such signal only sets a flag: the
training loop finishes its step, lets an in-flight asynchronous save
complete, saves the current step, and raises `Interrupted` (a `SystemExit`
with code 128 + the signal's number, as a shell reports a process killed
by it). A second signal restores the default handler and re-sends itself:
the process dies at once, and orbax's write-then-rename leaves either a
whole checkpoint or a temporary directory that the next run removes.

Orbax's own preemption support (`CheckpointManager.reached_preemption`)
relies on the preemption notifier of `jax.distributed`'s coordination
service, which a single process without `jax.distributed.initialize()`
does not have: there it never fires. So a single process handles the
signals here, and a multi-process run (where all hosts must save the same
step) leaves them to JAX and stops when `reached_preemption` says so.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import sys
import threading

import jax

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(SystemExit):
  """Training stopped on a signal after saving a checkpoint of `step`."""

  def __init__(self, signum: int, step: int):
    super().__init__(128 + signum)
    self.signum, self.step = signum, step

  def __str__(self):
    return (f'stopped by {signal.Signals(self.signum).name} at step '
            f'{self.step}, after saving its checkpoint')


@dataclasses.dataclass
class StopRequest:
  """Set by the first SIGTERM or SIGINT; training checks it every step."""

  signum: int | None = None

  @property
  def name(self) -> str | None:
    return None if self.signum is None else signal.Signals(self.signum).name


@contextlib.contextmanager
def signals():
  """Catches SIGTERM and SIGINT into a `StopRequest` while active.

  Only in the main thread of a single-process run (elsewhere Python cannot
  set handlers, or JAX's coordination service owns the signals).
  """
  request = StopRequest()
  if (threading.current_thread() is not threading.main_thread() or
      jax.process_count() > 1):
    yield request
    return

  def handler(signum, frame):
    del frame
    if request.signum is not None:  # the second one: die now
      signal.signal(signum, previous[signum])
      os.kill(os.getpid(), signum)
      return
    request.signum = signum
    # os.write, not print: a handler that prints while the main thread is
    # inside a print raises "reentrant call".
    os.write(sys.stderr.fileno(), (
        f'\n{signal.Signals(signum).name} received: finishing this step and '
        'saving a checkpoint before stopping (send it again to stop at '
        'once)\n').encode())

  previous = {s: signal.signal(s, handler) for s in SIGNALS}
  try:
    yield request
  finally:
    for s, h in previous.items():
      signal.signal(s, h)
