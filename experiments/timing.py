"""Timing for benchmarks: warm up, wait for an idle process, alternate.

Both benchmarks time their contenders the same way: each is run once to
compile and touch its memory, then they are timed in turn, each run
starting only once the process is idle, and the median of each is kept.
"""

from __future__ import annotations

import json
import statistics
import time

import jax


def warm_up(thunks):
  """Runs each thunk once (first-touch allocation); total seconds."""
  start = time.perf_counter()
  for thunk in thunks.values():
    jax.block_until_ready(thunk())
  return time.perf_counter() - start


def settle(interval=0.05, max_wait=10.0):
  """Waits until this process is idle.

  XLA frees a run's temporaries after its result is ready; freeing jax.nn's
  gigabytes takes a core for a fraction of a second, which would otherwise
  be charged to the next timed run (measured: 0.72 s -> 1.07 s for
  blockwise after jax.nn at N=8192).
  """
  deadline = time.perf_counter() + max_wait
  while time.perf_counter() < deadline:
    cpu = time.process_time()
    time.sleep(interval)
    if time.process_time() - cpu < 0.1 * interval:
      return


def median_seconds(thunks, repeats):
  """Times the (warm) thunks alternating; median seconds of each."""
  times = {name: [] for name in thunks}
  for _ in range(repeats):
    for name, thunk in thunks.items():
      settle()
      start = time.perf_counter()
      jax.block_until_ready(thunk())
      times[name].append(time.perf_counter() - start)
  return {name: statistics.median(ts) for name, ts in times.items()}


def write_rows(path: str | None, rows, **context) -> None:
  """Writes `{device, **context, rows}` as JSON to `path` (nothing when
  None)."""
  if path:
    with open(path, 'w') as f:
      json.dump(dict(device=jax.devices()[0].device_kind, **context,
                     rows=rows), f, indent=1)
