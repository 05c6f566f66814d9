r"""Speed and memory of attention mechanisms against jax.nn, in one process.

For each length it compiles each mechanism and `jax.nn.dot_product_attention`
(XLA path), reads the compiled temporary memory, then times them alternating
(median of `--repeats` runs after a warm-up). FLOPs count only what exact
attention must do: forward `4 B N T S H`, halved when causal; forward and
backward 3.5x that. The machine's float32 matmul rate is measured first, so
every rate reads as a fraction of it.

  python -m efficient_attention.experiments.benchmark --lengths=1024,4096 --modes=forward

After the table, the crossover of each mechanism against
`--crossover_against` (blockwise exact attention): the measured lengths
between which it becomes, and stays, the faster of the two.

The baseline is compiled at every length but only run where its compiled
temporary memory is below `--baseline_max_gb`; otherwise its memory is still
reported and its time left blank.
"""

from __future__ import annotations

import json
import platform
import resource

from absl import app
from absl import flags
import jax
import jax.numpy as jnp

from efficient_attention import attention
from efficient_attention.experiments import timing

_MECHANISMS = flags.DEFINE_list('mechanisms', ['blockwise'],
                                'Registered mechanism names to measure.')
_OPTIONS = flags.DEFINE_string(
    'mechanism_options', '{}', 'JSON dict of options per mechanism, e.g. '
    '{"blockwise": {"query_chunk_size": 512}, "performer": '
    '{"num_features": 128}}.')
_AGAINST = flags.DEFINE_string(
    'crossover_against', 'blockwise', 'Mechanism the crossover lengths of '
    'the others are measured against.')
_LENGTHS = flags.DEFINE_list('lengths', ['1024', '4096', '8192', '16384'],
                             'Sequence lengths T = S.')
_BATCH = flags.DEFINE_integer('batch', 1, 'Batch size B.')
_HEADS = flags.DEFINE_integer('heads', 8, 'Query heads N.')
_KV_HEADS = flags.DEFINE_integer('kv_heads', None, 'Key/value heads K '
                                 '(default: N).')
_HEAD_DIM = flags.DEFINE_integer('head_dim', 64, 'Head dimension H.')
_DTYPE = flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'],
                           'Input dtype.')
_CAUSAL = flags.DEFINE_bool('causal', True, 'Causal attention.')
_MODES = flags.DEFINE_list('modes', ['forward', 'forward_backward'],
                           'forward and/or forward_backward.')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed runs per measurement.')
_MAX_SECONDS = flags.DEFINE_float(
    'max_seconds', 300.0, 'Fewer repeats (at least 1) where the warm-up run '
    'says repeats would take longer than this.')
_BASELINE_MAX_GB = flags.DEFINE_float(
    'baseline_max_gb', 12.0, 'Run jax.nn only below this compiled temporary '
    'memory (GB).')
_OUTPUT = flags.DEFINE_string('output', None, 'Write the results as JSON.')
_MATMUL_SIZES = flags.DEFINE_list(
    'matmul_sizes', ['1024', '2048', '4096'], 'Square matmul sizes whose '
    'best rate is the "of matmul" reference (smaller: a quicker smoke run).')

BASELINE = 'jax.nn'


matmul_rate = timing.matmul_rate
attention_flops = timing.attention_flops


def _function(name, options, causal, mode):
  if name == BASELINE:
    fn = lambda q, k, v: jax.nn.dot_product_attention(
        q, k, v, is_causal=causal, implementation='xla')
  else:
    mechanism = attention.get(name)
    fn = lambda q, k, v: mechanism(q, k, v, is_causal=causal, **options)
  if mode == 'forward':
    return fn
  loss = lambda q, k, v: jnp.sum(fn(q, k, v).astype(jnp.float32))
  return jax.grad(loss, argnums=(0, 1, 2))


def measure_length(length, mode, names, options, rate):
  """Rows of results for one length and mode, baseline included."""
  b, n, h = _BATCH.value, _HEADS.value, _HEAD_DIM.value
  kv = _KV_HEADS.value or n
  dtype = jnp.dtype(_DTYPE.value)
  keys = jax.random.split(jax.random.key(length), 3)
  q = jax.random.normal(keys[0], (b, length, n, h), dtype)
  k, v = (jax.random.normal(x, (b, length, kv, h), dtype) for x in keys[1:])
  flops = attention_flops(b, n, length, length, h, _CAUSAL.value, mode)
  rows, runnable = {}, {}
  for name in [BASELINE] + names:
    fn = _function(name, options.get(name, {}), _CAUSAL.value, mode)
    compiled = jax.jit(fn).lower(q, k, v).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes
    rows[name] = dict(mechanism=name, mode=mode, length=length,
                      temp_bytes=temp, seconds=None)
    if name != BASELINE or temp < _BASELINE_MAX_GB.value * 1e9:
      runnable[name] = lambda c=compiled: c(q, k, v)
  warm = timing.warm_up(runnable)
  repeats = max(1, min(_REPEATS.value, int(_MAX_SECONDS.value / warm)))
  for name, seconds in timing.median_seconds(runnable, repeats).items():
    rows[name].update(seconds=seconds, repeats=repeats,
                      gflops=flops / seconds / 1e9,
                      matmul_fraction=flops / seconds / 1e9 / rate)
  base = rows[BASELINE]
  for row in rows.values():
    row['memory_ratio'] = base['temp_bytes'] / row['temp_bytes']
    if row['seconds'] and base['seconds']:
      row['speedup'] = base['seconds'] / row['seconds']
  return list(rows.values())


def _format(row):
  gb = row['temp_bytes'] / 1e9
  if row['seconds'] is None:
    return (f"| {row['mechanism']} | {row['mode']} | {row['length']} | "
            f"not run | {gb:.3f} | | | | |")
  speedup = row.get('speedup')
  return (f"| {row['mechanism']} | {row['mode']} | {row['length']} | "
          f"{row['seconds']:.4f} | {gb:.3f} | {row['gflops']:.1f} | "
          f"{100 * row['matmul_fraction']:.0f}% | "
          f"{'' if speedup is None else f'{speedup:.1f}x'} | "
          f"{row['memory_ratio']:.{0 if row['memory_ratio'] >= 10 else 1}f}x |")


def crossovers(rows, against):
  """`(mechanism, mode, below, at)`: faster than `against` from `at` on.

  `below`: the longest measured length where it is slower (None: faster
  at every length). `at`: the next measured length (None: slower at the
  longest length).
  """
  found = []
  for mode in sorted({r['mode'] for r in rows}):
    times = {}
    for r in rows:
      if r['mode'] == mode and r['seconds']:
        times.setdefault(r['mechanism'], {})[r['length']] = r['seconds']
    for name in sorted(set(times) - {against, BASELINE}):
      lengths = sorted(set(times[name]) & set(times.get(against, {})))
      faster = [times[name][n] < times[against][n] for n in lengths]
      if not lengths:
        continue
      start = len(faster)
      while start > 0 and faster[start - 1]:
        start -= 1
      at = lengths[start] if start < len(lengths) else None
      below = lengths[start - 1] if start > 0 else None
      found.append((name, mode, below, at))
  return found


def main(argv):
  del argv
  options = json.loads(_OPTIONS.value)
  unknown = set(_MODES.value) - {'forward', 'forward_backward'}
  if unknown:
    raise app.UsageError(f'--modes: unknown {sorted(unknown)}; allowed: '
                         'forward, forward_backward')
  for name in _MECHANISMS.value:
    attention.get(name)  # Fails early, listing the known names.
  rate = matmul_rate(jnp.dtype(_DTYPE.value),
                     sizes=tuple(int(n) for n in _MATMUL_SIZES.value))
  print(f'{platform.processor() or platform.machine()}, '
        f'{jax.devices()[0].device_kind}, jax {jax.__version__}: '
        f'{_DTYPE.value} matmul {rate:.1f} GFLOP/s')
  print('| mechanism | mode | N | median s | temp GB | GFLOP/s | of matmul '
        '| speedup vs jax.nn | memory vs jax.nn |')
  print('|---|---|---|---|---|---|---|---|---|')
  rows = []
  for mode in _MODES.value:
    for length in map(int, _LENGTHS.value):
      for row in measure_length(length, mode, _MECHANISMS.value, options,
                                rate):
        row['peak_rss_gb'] = resource.getrusage(
            resource.RUSAGE_SELF).ru_maxrss / 1e6
        rows.append(row)
        print(_format(row), flush=True)
  for name, mode, below, at in crossovers(rows, _AGAINST.value):
    if at is None:
      text = 'not faster at the longest length measured'
    elif below is None:
      text = f'faster at every length measured (from {at})'
    else:
      text = f'faster from N = {at} on (slower at {below})'
    print(f'crossover {name} vs {_AGAINST.value}, {mode}: {text}')
  if _OUTPUT.value:
    config = {f.name: f.value for f in (
        _BATCH, _HEADS, _KV_HEADS, _HEAD_DIM, _DTYPE, _CAUSAL, _OPTIONS)}
    with open(_OUTPUT.value, 'w') as f:
      json.dump(dict(matmul_gflops=rate, jax=jax.__version__,
                     device=jax.devices()[0].device_kind, config=config,
                     rows=rows), f, indent=1)


if __name__ == '__main__':
  app.run(main)
