r"""Blockwise attention against PyTorch's CPU scaled_dot_product_attention.

What a PyTorch user gets on a CPU (`torch.nn.functional.
scaled_dot_product_attention`, which dispatches to its CPU flash kernel)
against `attention.blockwise_attention` at its defaults, both causal, both
given the same inputs (B, N heads of H, in float32 or bfloat16; torch in its
native `[B, N, T, H]` layout, ours in `[B, T, N, H]`), timed alternating in
one process (`experiments.timing`: warm-up, idle process, median), forward
and forward+backward (gradients of `sum(out)` in float32 for q, k and v).

Memory is the peak resident-set growth of one call, each (contender, dtype,
pass, N) in a fresh child process: inputs made and (for JAX) the program
compiled, torch warmed up on a small problem, then the kernel's peak RSS is
reset (`/proc/self/clear_refs`) and one call's peak over the RSS before it
is read (`VmHWM - VmRSS`). Compiled temporary memory (`memory_analysis`) is
given for ours too.

FLOPs as `experiments.benchmark` counts them (forward `4 B N T S H`, halved
when causal; forward+backward 3.5x that), as a share of the rate of a
square matmul of the row's dtype timed in the same alternation as the two
contenders (so a machine busy with something else slows all three). The table also names the
kernel torch ran (from its profiler) and the largest difference between the
two outputs.

  pip install -e '.[torch]'    # torch is a benchmark-only extra
  python -m efficient_attention.experiments.benchmark_torch \
      --lengths=2048,4096,8192,16384,32768 --output=benchmark_torch.json
"""

from __future__ import annotations

import functools
import json
import os
import platform
import subprocess
import sys

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from efficient_attention import attention
from efficient_attention.experiments import timing

_LENGTHS = flags.DEFINE_list('lengths', ['2048', '4096', '8192'],
                             'Sequence lengths T = S.')
_DTYPES = flags.DEFINE_list('dtypes', ['float32', 'bfloat16'],
                            'Input dtypes.')
_MODES = flags.DEFINE_list('modes', ['forward', 'forward_backward'],
                           'forward and/or forward_backward.')
_BATCH = flags.DEFINE_integer('batch', 1, 'Batch size B.')
_HEADS = flags.DEFINE_integer('heads', 8, 'Heads N (= K).')
_HEAD_DIM = flags.DEFINE_integer('head_dim', 64, 'Head dimension H.')
_CAUSAL = flags.DEFINE_bool('causal', True, 'Causal attention.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed runs per measurement.')
_MEMORY = flags.DEFINE_bool('memory', True, 'Measure peak RSS growth, one '
                            'child process per cell.')
_TORCH = flags.DEFINE_bool('torch', True, 'Run torch (needs the torch '
                           'extra); --notorch measures ours alone.')
_MATMUL_SIZE = flags.DEFINE_integer('matmul_size', 2048, 'Square matmul '
                                    'size of the reference rate.')
_OUTPUT = flags.DEFINE_string('output', None, 'Write results as JSON.')
_CELL = flags.DEFINE_string('memory_cell', None, 'Internal: measure one '
                            'cell contender,dtype,mode,N and print JSON.')

OURS, TORCH = 'blockwise', 'torch sdpa'


def inputs(b, n, h, length, dtype):
  """q, k, v as float32 NumPy `[B, T, N, H]`, the same for every contender
  (each casts them to the dtype measured)."""
  del dtype
  rng = np.random.default_rng(length)
  return [rng.standard_normal((b, length, n, h), np.float32)
          for _ in range(3)]


def ours(mode, causal, dtype, arrays):
  """(compiled program, its arguments)."""
  attend = functools.partial(attention.blockwise_attention, is_causal=causal)
  fn = attend
  if mode == 'forward_backward':
    loss = lambda q, k, v: jnp.sum(attend(q, k, v).astype(jnp.float32))
    fn = jax.grad(loss, argnums=(0, 1, 2))
  args = [jnp.asarray(x, dtype) for x in arrays]
  return jax.jit(fn).lower(*args).compile(), args


def torch_call(mode, causal, dtype, arrays):
  """A thunk running torch's SDPA on `[B, N, T, H]` copies of `arrays`."""
  import torch  # pylint: disable=g-import-not-at-top
  sdpa = torch.nn.functional.scaled_dot_product_attention
  to = getattr(torch, dtype)
  q, k, v = (torch.from_numpy(x).to(to).transpose(1, 2).contiguous()
             for x in arrays)
  if mode == 'forward':
    def run():
      with torch.no_grad():
        return sdpa(q, k, v, is_causal=causal)
    return run
  for x in (q, k, v):
    x.requires_grad_(True)

  def run():
    out = sdpa(q, k, v, is_causal=causal)
    return torch.autograd.grad(out.float().sum(), (q, k, v))
  return run


def torch_kernel(run) -> str:
  """The aten SDPA kernels one call of `run` dispatched to."""
  import torch  # pylint: disable=g-import-not-at-top
  with torch.profiler.profile(
      activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
    run()
  names = sorted({e.key for e in profile.key_averages()
                  if 'scaled_dot_product' in e.key and
                  e.key != 'aten::scaled_dot_product_attention'})
  return ', '.join(names) or 'unknown'


def measure_cell(contender, dtype, mode, length) -> dict:
  """Peak RSS growth of one call, in this (fresh) process."""
  b, n, h, causal = _BATCH.value, _HEADS.value, _HEAD_DIM.value, _CAUSAL.value
  if contender == TORCH:
    torch_call(mode, causal, dtype, inputs(b, n, h, 128, dtype))()  # warm-up
    run = torch_call(mode, causal, dtype, inputs(b, n, h, length, dtype))
  else:
    compiled, args = ours(mode, causal, jnp.dtype(dtype),
                          inputs(b, n, h, length, dtype))
    run = functools.partial(compiled, *args)
  return dict(rss_growth_bytes=timing.peak_rss_growth(run))


def rss_growth(contender, dtype, mode, length) -> int:
  """`measure_cell` in a child process (the flags passed on)."""
  forwarded = [a for a in sys.argv[1:] if not a.startswith('--memory_cell')]
  out = subprocess.run(
      [sys.executable, '-m', 'efficient_attention.experiments.benchmark_torch',
       *forwarded, f'--memory_cell={contender},{dtype},{mode},{length}'],
      capture_output=True, text=True, check=False)
  if out.returncode:
    raise RuntimeError(f'memory cell {contender} {dtype} {mode} {length} '
                       f'failed:\n{out.stderr[-3000:]}')
  return json.loads(out.stdout.strip().splitlines()[-1])['rss_growth_bytes']


def to_numpy(result):
  """The first output (forward) or dq, as float32 NumPy `[B, T, N, H]`."""
  first = result[0] if isinstance(result, (tuple, list)) else result
  if hasattr(first, 'detach'):  # torch, [B, N, T, H]
    return first.detach().float().transpose(1, 2).numpy()
  return np.asarray(first, np.float32)


def measure(length, dtype, mode):
  """One row: both contenders timed alternating, their memory, agreement."""
  b, n, h, causal = _BATCH.value, _HEADS.value, _HEAD_DIM.value, _CAUSAL.value
  arrays = inputs(b, n, h, length, dtype)
  compiled, args = ours(mode, causal, jnp.dtype(dtype), arrays)
  thunks = {OURS: functools.partial(compiled, *args)}
  row = dict(length=length, dtype=dtype, mode=mode,
             temp_bytes=compiled.memory_analysis().temp_size_in_bytes)
  if _TORCH.value:
    thunks[TORCH] = torch_call(mode, causal, dtype, arrays)
    row['torch_kernel'] = torch_kernel(thunks[TORCH])
  # The matmul is timed in the same alternation: its rate is this row's
  # reference, whatever else the machine was doing meanwhile.
  size = _MATMUL_SIZE.value
  a = jnp.ones((size, size), dtype)
  matmul = jax.jit(lambda x, y: x @ y).lower(a, a).compile()
  thunks['matmul'] = lambda: matmul(a, a)
  timing.warm_up(thunks)
  medians = timing.median_seconds(thunks, _REPEATS.value)
  row['matmul_gflops'] = rate = 2 * size**3 / medians.pop('matmul') / 1e9
  flops = timing.attention_flops(b, n, length, length, h, causal, mode)
  for name, seconds in medians.items():
    row[f'{name} seconds'] = seconds
    row[f'{name} of matmul'] = flops / seconds / 1e9 / rate
  if _TORCH.value:
    outs = [to_numpy(thunks[name]()) for name in (OURS, TORCH)]
    row['max_difference'] = float(np.abs(outs[0] - outs[1]).max())
    row['torch / ours'] = row[f'{TORCH} seconds'] / row[f'{OURS} seconds']
  del thunks, compiled, args
  if _MEMORY.value:
    for name in (OURS, TORCH) if _TORCH.value else (OURS,):
      row[f'{name} rss_growth_bytes'] = rss_growth(name, dtype, mode, length)
  return row


def _format(row) -> str:
  def cell(key, fmt, scale=1.0):
    value = row.get(key)
    return '' if value is None else format(value * scale, fmt)
  growth = [row.get(f'{name} rss_growth_bytes') for name in (OURS, TORCH)]
  ratio = f'{growth[0] / growth[1]:.2f}' if all(growth) else ''
  return ' | '.join([
      f"| {row['length']}", row['dtype'], row['mode'],
      cell(f'{OURS} seconds', '.4f'), cell(f'{TORCH} seconds', '.4f'),
      cell('torch / ours', '.2f'), cell('matmul_gflops', '.0f'),
      cell(f'{OURS} of matmul', '.0%'),
      cell(f'{TORCH} of matmul', '.0%'),
      cell(f'{OURS} rss_growth_bytes', '.0f', 1e-6),
      cell(f'{TORCH} rss_growth_bytes', '.0f', 1e-6), ratio,
      cell('temp_bytes', '.0f', 1e-6), cell('max_difference', '.1e')]) + ' |'


def main(argv):
  del argv
  if _CELL.value:
    contender, dtype, mode, length = _CELL.value.split(',')
    print(json.dumps(measure_cell(contender, dtype, mode, int(length))))
    return
  versions = f'jax {jax.__version__}'
  if _TORCH.value:
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise app.UsageError("torch is not installed: pip install -e "
                           "'.[torch]', or pass --notorch") from e
    versions += (f', torch {torch.__version__} '
                 f'({torch.get_num_threads()} threads)')
  print(f'{platform.processor() or platform.machine()}, {os.cpu_count()} '
        f'cores, {jax.devices()[0].device_kind}, {versions}; B={_BATCH.value}, '
        f'N={_HEADS.value}, H={_HEAD_DIM.value}, causal={_CAUSAL.value}; '
        f'"of matmul": of a {_MATMUL_SIZE.value}^3 matmul of the row\'s dtype '
        'timed in the same alternation')
  print('| N | dtype | pass | ours s | torch s | torch / ours | matmul '
        'GFLOP/s | ours of matmul | torch of matmul | ours RSS MB | torch RSS '
        'MB | RSS ours / torch | ours temp MB | max diff |')
  print('|---|---|---|---|---|---|---|---|---|---|---|---|---|---|')
  rows, kernels = [], set()
  for length in map(int, _LENGTHS.value):
    for dtype in _DTYPES.value:
      for mode in _MODES.value:
        row = measure(length, dtype, mode)
        kernels.add(row.get('torch_kernel'))
        rows.append(row)
        print(_format(row), flush=True)
  if _TORCH.value:
    print(f'torch kernels: {sorted(kernels)}')
  timing.write_rows(_OUTPUT.value, rows, versions=versions)


if __name__ == '__main__':
  app.run(main)
