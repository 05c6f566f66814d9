"""Progress lines, JSON-lines metrics (and TensorBoard), and the final plot."""

from __future__ import annotations

import json
import os
import sys
import time


class Reporter:
  """Writes metrics to `workdir/metrics.jsonl` and progress to the console."""

  def __init__(self, workdir: str, total_steps: int, tokens_per_step: int,
               start_step: int = 0):
    self.path = os.path.join(workdir, 'metrics.jsonl')
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
    with open(self.path, 'a') as f:
      f.write(json.dumps({'step': step, **metrics}) + '\n')
    if self.tensorboard is not None:
      for name, value in metrics.items():
        self.tensorboard.add_scalar(name, value, step)

  def progress(self, step: int, loss: float):
    """A progress line (a live bar on a terminal) with rate and ETA."""
    now = time.perf_counter()
    steps_per_s = (step - self.last_step) / max(now - self.last_time, 1e-9)
    self.last_time, self.last_step = now, step
    eta = (self.total_steps - step) / max(steps_per_s, 1e-9)
    line = (f'step {step}/{self.total_steps}  loss {loss:.4f}  '
            f'{steps_per_s:.2f} steps/s  '
            f'{steps_per_s * self.tokens_per_step:,.0f} tokens/s  '
            f'ETA {eta:.0f}s')
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


def read_metrics(workdir: str) -> list[dict]:
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


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
