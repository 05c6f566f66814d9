"""Progress lines, JSON-lines metrics (and TensorBoard), and the final plot.

`metrics.jsonl` is append-only, one JSON object a line, each with its
`step`: metrics, and events (`{"event": "start", ...}` when a run starts or
resumes, `"end"` with the reason it stopped, `"quarantine"`,
`"config_changed"`). A process killed in the middle of a write leaves a torn
last line; the next run moves it to `metrics.jsonl.torn` and goes on, and
`read_metrics` skips any line it cannot parse, so no earlier line is lost.
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import logging


class Reporter:
  """Writes metrics to `workdir/metrics.jsonl` and progress to the console."""

  def __init__(self, workdir: str, total_steps: int, tokens_per_step: int,
               start_step: int = 0, max_seconds: float = 0.0):
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self.max_seconds = max_seconds  # 0: no time cap
    self.torn = repair(self.path)
    self.total_steps, self.tokens_per_step = total_steps, tokens_per_step
    self.tty = sys.stdout.isatty()
    self.last_time, self.last_step = time.perf_counter(), start_step
    self.tensorboard = None
    try:
      import tensorboardX  # pylint: disable=g-import-not-at-top
      self.tensorboard = tensorboardX.SummaryWriter(
          os.path.join(workdir, 'tensorboard'))
    except ImportError:
      pass

  def write(self, step: int, **metrics):
    """Appends one line (and flushes it to disk) and logs to TensorBoard."""
    with open(self.path, 'a') as f:
      f.write(json.dumps({'step': step, **metrics}) + '\n')
      f.flush()
      os.fsync(f.fileno())
    if self.tensorboard is not None and 'event' not in metrics:
      for name, value in metrics.items():
        self.tensorboard.add_scalar(name, value, step)

  def progress(self, step: int, loss: float, elapsed: float = 0.0):
    """A progress line (a live bar on a terminal) with rate and ETA.

    With a time cap (`max_seconds`) that the current rate would hit first,
    the ETA is the cap's, and the line says at about which step it stops.
    """
    now = time.perf_counter()
    steps_per_s = (step - self.last_step) / max(now - self.last_time, 1e-9)
    self.last_time, self.last_step = now, step
    eta = (self.total_steps - step) / max(steps_per_s, 1e-9)
    capped = ''
    if self.max_seconds and elapsed + eta > self.max_seconds:
      eta = max(self.max_seconds - elapsed, 0.0)
      capped = (f' (max_seconds cap: stops near step '
                f'{min(step + round(eta * steps_per_s), self.total_steps)})')
    line = (f'step {step}/{self.total_steps}  loss {loss:.4f}  '
            f'{steps_per_s:.2f} steps/s  '
            f'{steps_per_s * self.tokens_per_step:,.0f} tokens/s  '
            f'ETA {eta:.0f}s{capped}')
    if self.tty:
      done = int(30 * step / self.total_steps)
      print(f'\r[{"#" * done}{"." * (30 - done)}] {line}', end='', flush=True)
    else:
      print(line, flush=True)

  def close(self):
    if self.tty:
      print()
    if self.tensorboard is not None:
      self.tensorboard.close()


def repair(path: str) -> str | None:
  """Cuts a torn last line (no newline: its writer died) off `path`.

  A fragment that still parses as a JSON object is kept, completed with its
  newline; anything else is appended to `path + '.torn'`. Earlier lines are
  never touched.

  Returns:
    The fragment moved aside, or None when there was nothing to repair.
  """
  if not os.path.exists(path):
    return None
  with open(path, 'rb+') as f:
    size = f.seek(0, os.SEEK_END)
    end = size
    while end > 0:  # back to the last newline, a block at a time
      start = max(0, end - 4096)
      f.seek(start)
      block = f.read(end - start)
      cut = block.rfind(b'\n')
      if cut >= 0:
        end = start + cut + 1
        break
      end = start
    if end == size:
      return None
    f.seek(end)
    fragment = f.read()
    try:
      complete = isinstance(json.loads(fragment), dict)
    except ValueError:
      complete = False
    if complete:
      f.write(b'\n')
      return None
    f.truncate(end)
  with open(path + '.torn', 'ab') as torn:
    torn.write(fragment + b'\n')
  text = fragment.decode(errors='replace')
  logging.warning('%s ended in a torn line (%d bytes), moved to %s.torn: %r',
                  path, len(fragment), path, text[:80])
  return text


def read_metrics(workdir: str, *, timeline: bool = True) -> list[dict]:
  """The rows of `workdir/metrics.jsonl`; unparsable lines are skipped.

  Args:
    workdir: the run's directory.
    timeline: drop the rows that a later resume superseded: a run that
      restarts from the checkpoint of step s (its `start` event) redoes the
      steps after s, so earlier rows past s describe work that was lost.

  Returns:
    One dict per line, in file order.
  """
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return []
  rows, skipped = [], 0
  with open(path) as f:
    for line in f:
      try:
        row = json.loads(line)
      except ValueError:
        row = None
      if isinstance(row, dict) and 'step' in row:
        rows.append(row)
      elif line.strip():
        skipped += 1
  if skipped:
    logging.warning('%s: skipped %d unreadable line(s)', path, skipped)
  if not timeline:
    return rows
  kept = []
  for row in rows:
    if row.get('event') == 'start':
      kept = [r for r in kept if r['step'] <= row['step']]
    kept.append(row)
  return kept


def plot(workdir: str) -> str:
  """Training and evaluation curves from metrics.jsonl, as curves.png."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import pyplot  # pylint: disable=g-import-not-at-top
  rows = read_metrics(workdir)
  figure, axis = pyplot.subplots(figsize=(7, 4))
  for key, label in [('train_bpb', 'train'), ('eval_bpb', 'validation')]:
    points = [(r['step'], r[key]) for r in rows if key in r]
    if points:
      axis.plot(*zip(*points), label=label, marker='.' if key == 'eval_bpb'
                else None)
  axis.set_xlabel('step')
  axis.set_ylabel('bits per byte')
  axis.grid(alpha=0.3)
  axis.legend()
  path = os.path.join(workdir, 'curves.png')
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  pyplot.close(figure)
  return path
