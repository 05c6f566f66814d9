r"""The sparse family against dense blockwise attention: time, memory, density.

For each length N, mode (forward, forward+backward) and mechanism, the
program is compiled (temporary memory from `memory_analysis`) and timed,
alternating with dense (unmasked, bidirectional) blockwise attention at the
same N (`experiments.timing`). "density" is the share of query-key pairs
the pattern keeps, measured on evenly spaced query rows; "time / (density x
dense)" is 1.0 when time is exactly proportional to the work kept (the
target is at most 1.5). Dense blockwise also runs at each pattern's tile
sizes (128 x 128; 64 x 64 for BigBird), and "... x dense at its tiles"
divides by that instead: what is left once the speed of a small tile is
set aside (tiles coarser than the pattern, gathers and reorders, the loop
over a list of tiles). Linformer's rows give its projected length k
instead, and its density is k / N. `jax.nn.dot_product_attention` with the
equivalent dense mask runs up to `--jax_nn_up_to` (its logits and mask are
N^2 arrays).

  python -m efficient_attention.experiments.benchmark_sparse
  python -m efficient_attention.experiments.benchmark_sparse \
      --lengths=65536 --modes=forward --dense_up_to=16384

Mechanisms (bidirectional, their default options unless said):
sparse_transformer strided (l = 128) and fixed (l = 128, c = 8), heads
split between the two halves; longformer (window 256 each side, 1 global
token); bigbird (blocks of 64: 3 window, 2 global, 3 random); linformer at
k = 64, 128, 256.
"""

from __future__ import annotations

import functools

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from efficient_attention import attention
from efficient_attention.attention.sparse import bigbird
from efficient_attention.attention.sparse import longformer
from efficient_attention.attention.sparse import sparse_transformer
from efficient_attention.experiments import timing

_LENGTHS = flags.DEFINE_list('lengths', ['4096', '16384'], 'N = T = S.')
_MODES = flags.DEFINE_list('modes', ['forward', 'forward_backward'],
                           'forward and/or forward_backward.')
_DENSE_UP_TO = flags.DEFINE_integer(
    'dense_up_to', 16384, 'Longest N at which dense blockwise runs (beyond, '
    'ratios use its time at the longest N run, scaled by (N / N0)^2, and '
    'say so).')
_JAX_NN_UP_TO = flags.DEFINE_integer(
    'jax_nn_up_to', 4096, 'Longest N for jax.nn with a dense mask.')
_HEADS = flags.DEFINE_integer('heads', 4, 'Query heads N (= key heads).')
_HEAD_DIM = flags.DEFINE_integer('head_dim', 64, 'Head dimension H.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed runs.')
_OUTPUT = flags.DEFINE_string('output', None, 'Write results as JSON.')
_PLOT = flags.DEFINE_string('plot', None, 'Write a PNG of time vs N.')

# name -> (registered mechanism, options, the equivalent pattern mask).
PATTERNS = {
    'sparse_transformer strided': (
        'sparse_transformer', dict(pattern='strided', stride=128),
        lambda: sparse_transformer.pattern(pattern='strided', stride=128)),
    'sparse_transformer fixed': (
        'sparse_transformer', dict(pattern='fixed', stride=128, summary=8),
        lambda: sparse_transformer.pattern(pattern='fixed', stride=128,
                                           summary=8)),
    'longformer': ('longformer', dict(window=256, global_tokens=1),
                   lambda: longformer.pattern(window=256, global_tokens=1)),
    'bigbird': ('bigbird', {}, lambda: bigbird.pattern()),
}
LINFORMER_K = (64, 128, 256)


def density(mask, n: int, heads: int, rows: int = 256) -> float:
  """Share of visible pairs, over `rows` evenly spaced queries and all
  keys, averaged over heads: O(rows N) work, no N^2 array."""
  mask = mask.bind(n, n)
  q = jnp.linspace(0, n - 1, rows).astype(jnp.int32)[None, None, :, None]
  k = jnp.arange(n)[None, None, None, :]
  head = jnp.arange(heads)[None, :, None, None]
  return float(jnp.mean(mask(jnp.zeros((1, 1, 1, 1), jnp.int32), head, q,
                             k)))


def _program(mode, fn):
  if mode == 'forward':
    return jax.jit(fn)
  return jax.jit(jax.grad(lambda q, k, v: fn(q, k, v).sum(),
                          argnums=(0, 1, 2)))


def tiles_of(name: str) -> tuple[int, int] | None:
  """The (query, key) tile sizes a pattern row runs at: its mechanism's
  default chunk sizes."""
  if name not in PATTERNS:
    return None
  options = attention.get(PATTERNS[name][0]).options()
  return options.query_chunk_size, options.key_chunk_size


def dense_name(tiles: tuple[int, int]) -> str:
  return f'dense blockwise {tiles[0]}x{tiles[1]}'


def candidates(n: int):
  """name -> (function of q, k, v, density) for length n."""
  heads = _HEADS.value
  out = {'dense blockwise': (attention.blockwise_attention, 1.0)}
  for tiles in sorted({tiles_of(name) for name in PATTERNS}):
    out[dense_name(tiles)] = (functools.partial(
        attention.blockwise_attention, query_chunk_size=tiles[0],
        key_chunk_size=tiles[1]), 1.0)
  for name, (mechanism, options, pattern) in PATTERNS.items():
    fn = functools.partial(attention.get(mechanism), **options)
    out[name] = (fn, density(pattern(), n, heads))
    if n <= _JAX_NN_UP_TO.value:
      dense = jnp.asarray(pattern().dense(n, n, num_heads=heads))
      dense = dense[None] if dense.ndim == 3 else dense[None, None]
      out[f'jax.nn + mask: {name}'] = (functools.partial(
          jax.nn.dot_product_attention, mask=dense), out[name][1])
  for k in LINFORMER_K:
    out[f'linformer k={k}'] = (functools.partial(
        attention.linformer_attention, projected_length=k), k / n)
  return out


def measure(n: int, mode: str, dense_seconds=None):
  shape = (1, n, _HEADS.value, _HEAD_DIM.value)
  keys = jax.random.split(jax.random.key(0), 3)
  q, k, v = (jax.random.normal(x, shape) for x in keys)
  thunks, rows = {}, {}
  for name, (fn, share) in candidates(n).items():
    if name.startswith('dense blockwise') and n > _DENSE_UP_TO.value:
      continue
    compiled = _program(mode, fn).lower(q, k, v).compile()
    rows[name] = dict(length=n, mode=mode, mechanism=name, density=share,
                      temp_bytes=compiled.memory_analysis().temp_size_in_bytes)
    thunks[name] = functools.partial(compiled, q, k, v)
  timing.warm_up(thunks)
  for name, seconds in timing.median_seconds(thunks, _REPEATS.value).items():
    rows[name]['seconds'] = seconds
  dense = rows.get('dense blockwise', {}).get('seconds')
  estimated = dense is None
  if estimated:  # scaled from the longest N measured
    (n0, seconds0), = dense_seconds.items()
    dense = seconds0 * (n / n0) ** 2
  for row in rows.values():
    row['dense_seconds'], row['dense_estimated'] = dense, estimated
    row['time_vs_density_dense'] = row['seconds'] / (row['density'] * dense)
    tiles = tiles_of(row['mechanism'])
    same = rows.get(dense_name(tiles), {}).get('seconds') if tiles else None
    row['dense_same_tiles_seconds'] = same
    row['time_vs_density_dense_same_tiles'] = (
        None if same is None else row['seconds'] / (row['density'] * same))
  return list(rows.values())


def main(argv):
  del argv
  device = jax.devices()[0].device_kind
  print(f'sparse family vs dense blockwise, B=1, N=K={_HEADS.value}, '
        f'H={_HEAD_DIM.value}, float32, bidirectional, on {device}')
  print('| mechanism | N | mode | density | median s | temp MB | '
        'time / (density x dense) | ... x dense at its tiles |')
  print('|---|---|---|---|---|---|---|---|')
  results, dense_seconds = [], {}
  for n in map(int, _LENGTHS.value):
    for mode in _MODES.value:
      rows = measure(n, mode, dense_seconds.get(mode))
      for row in rows:
        if row['mechanism'] == 'dense blockwise':
          dense_seconds[mode] = {n: row['seconds']}
        results.append(row)
        note = ' (dense time estimated)' if row['dense_estimated'] else ''
        same = row['time_vs_density_dense_same_tiles']
        same = '' if same is None else f'{same:.2f}'
        print(f"| {row['mechanism']} | {n} | {mode} | {row['density']:.4f} | "
              f"{row['seconds']:.4f} | {row['temp_bytes'] / 1e6:.1f} | "
              f"{row['time_vs_density_dense']:.2f}{note} | {same} |",
              flush=True)
  timing.write_rows(_OUTPUT.value, results)
  if _PLOT.value:
    plot(results, _PLOT.value, device)


def plot(results, path, device):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  modes = sorted({r['mode'] for r in results})
  figure, axes = plt.subplots(1, 2 * len(modes), figsize=(6 * len(modes), 4))
  axes = np.atleast_1d(axes)
  for i, mode in enumerate(modes):
    for name in sorted({r['mechanism'] for r in results}):
      if name.startswith(('jax.nn', 'dense blockwise ')):
        continue
      rows = sorted((r for r in results if r['mode'] == mode and
                     r['mechanism'] == name), key=lambda r: r['length'])
      lengths = [r['length'] for r in rows]
      axes[2 * i].plot(lengths, [r['seconds'] for r in rows], 'o-',
                       label=name)
      axes[2 * i + 1].plot(lengths, [r['temp_bytes'] / 1e6 for r in rows],
                           'o-', label=name)
    for axis, what in ((axes[2 * i], 'median s'),
                       (axes[2 * i + 1], 'temporary MB')):
      axis.set_xscale('log', base=2)
      axis.set_yscale('log')
      axis.set_xlabel('N')
      axis.set_title(f'{mode}: {what}')
  axes[-1].legend(fontsize=7)
  figure.suptitle(f'sparse family vs dense blockwise ({device})')
  figure.tight_layout()
  figure.savefig(path, dpi=100)


if __name__ == '__main__':
  app.run(main)
