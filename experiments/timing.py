"""Timing for benchmarks: warm up, wait for an idle process, alternate.

Every benchmark times its contenders the same way: each is run once to
compile and touch its memory, then they are timed in turn, each run
starting only once the process is idle, and the median of each is kept.
Also here: the FLOPs of exact attention and the square-matmul rate they are
read against, the peak resident-set growth of one call, and the JSON every
benchmark writes.
"""

from __future__ import annotations

import ctypes
import gc
import json
import statistics
import time

import jax
import jax.numpy as jnp


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


def matmul_rate(dtype, sizes=(1024, 2048, 4096), repeats=5):
  """Best median GFLOP/s of square matmuls of these sizes."""
  best = 0.0
  for n in sizes:
    a = jnp.ones((n, n), dtype)
    f = jax.jit(lambda x, y: x @ y).lower(a, a).compile()
    thunks = {'mm': lambda: f(a, a)}
    warm_up(thunks)
    seconds = median_seconds(thunks, repeats)['mm']
    best = max(best, 2 * n**3 / seconds / 1e9)
  return best


def attention_flops(b, n, t, s, h, causal, mode):
  """FLOPs exact attention must do: forward `4 B N T S H`, halved when
  causal; forward and backward 3.5x that."""
  forward = 4 * b * n * t * s * h * (0.5 if causal else 1.0)
  return forward * (3.5 if mode == 'forward_backward' else 1.0)


def _status(field: str) -> int:
  """A `/proc/self/status` field in bytes (Linux)."""
  with open('/proc/self/status') as f:
    for line in f:
      if line.startswith(field + ':'):
        return int(line.split()[1]) * 1024
  raise RuntimeError(f'no {field} in /proc/self/status')


def _release_free_memory():
  """Returns freed heap memory to the system (glibc's malloc_trim), so
  that memory a call reuses from earlier frees counts as growth."""
  try:
    ctypes.CDLL('libc.so.6').malloc_trim(0)
  except (OSError, AttributeError):  # not glibc: the peak may read low
    pass


def peak_rss_growth(run) -> int:
  """Bytes by which one call of `run` raises this process's resident set at
  its peak over the resident set before it (Linux: freed heap memory is
  released and the peak reset through `/proc/self/clear_refs` first)."""
  gc.collect()
  _release_free_memory()
  with open('/proc/self/clear_refs', 'w') as f:
    f.write('5')  # resets VmHWM (the peak) to the current resident set
  before = _status('VmRSS')
  result = run()
  jax.block_until_ready(result)
  peak = _status('VmHWM')
  del result
  return peak - before
