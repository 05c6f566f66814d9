r"""Blockwise attention under sparse masks: time and memory vs tiles visited.

For each length N and mask, the blockwise kernel is compiled (its temporary
memory read from `memory_analysis`) and timed, forward and forward+backward,
against full causal attention at the same N, alternating (`experiments.
timing`). "tiles" is the share of tiles the kernel visits (from the mask's
tile summary at the kernel's chunk sizes); "time vs causal" divided by
"tiles vs causal" says how close time is to proportional to the work kept
(1.0: exactly proportional).

  python -m efficient_attention.experiments.benchmark_masks --lengths=4096,16384
  python -m efficient_attention.experiments.benchmark_masks --lengths=65536 --modes=forward

Masks: causal; causal sliding window of 512 tokens; causal within 8 equal
documents (segment ids, on device); Sparse Transformer strided (a window of
128 or every 128th key: two heads of each); BigBird (window 3 blocks of
64, 2 global tokens, 3 random blocks of 64); and no mask (dense).
"""

from __future__ import annotations

import functools

from absl import app
from absl import flags
import jax
import jax.numpy as jnp

from efficient_attention import attention
from efficient_attention.attention import masks
from efficient_attention.experiments import timing

_LENGTHS = flags.DEFINE_list('lengths', ['4096', '16384'], 'N = T = S.')
_MASKS = flags.DEFINE_list(
    'masks', ['causal', 'window', 'documents', 'strided', 'bigbird', 'dense'],
    'Masks to measure (causal is always measured: the reference).')
_MODES = flags.DEFINE_list('modes', ['forward', 'forward_backward'],
                           'forward and/or forward_backward.')
_HEADS = flags.DEFINE_integer('heads', 8, 'Query heads N.')
_KV_HEADS = flags.DEFINE_integer('kv_heads', 8, 'Key/value heads K.')
_HEAD_DIM = flags.DEFINE_integer('head_dim', 64, 'Head dimension H.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed runs.')
_OUTPUT = flags.DEFINE_string('output', None, 'Write results as JSON.')


def make_mask(name: str, n: int):
  if name == 'causal':
    return masks.causal()
  if name == 'window':
    return masks.causal() & masks.sliding_window(511)
  if name == 'documents':
    ids = jnp.repeat(jnp.arange(8, dtype=jnp.int32), n // 8)[None]
    return masks.causal() & masks.document(ids)
  if name == 'strided':
    return masks.causal() & masks.per_head(masks.sliding_window(127),
                                           masks.strided(128))
  if name == 'bigbird':
    return (masks.sliding_window(96, 96) | masks.global_tokens([0, 1]) |
            masks.random_blocks(3, 64, seed=0))
  if name == 'dense':
    return None
  raise ValueError(f'unknown mask {name!r}')


def _function(mode: str, mask):
  attend = functools.partial(attention.blockwise_attention, mask=mask)
  if mode == 'forward':
    return jax.jit(attend)
  return jax.jit(jax.grad(lambda q, k, v: attend(q, k, v).sum(),
                          argnums=(0, 1, 2)))


def _tile_share(mask, n):
  if mask is None:
    return 1.0
  layout = mask.layout(n, n, min(512, n), min(256, n))
  return float((layout > 0).mean())


def measure(n: int, mode: str, names):
  shape = (1, n, _HEADS.value, _HEAD_DIM.value)
  kv_shape = (1, n, _KV_HEADS.value, _HEAD_DIM.value)
  keys = jax.random.split(jax.random.key(0), 3)
  q = jax.random.normal(keys[0], shape)
  k, v = (jax.random.normal(x, kv_shape) for x in keys[1:])
  thunks, rows = {}, {}
  for name in names:
    mask = make_mask(name, n)
    fn = _function(mode, mask)
    compiled = fn.lower(q, k, v).compile()
    rows[name] = dict(length=n, mode=mode, mask=name,
                      tiles=_tile_share(mask, n),
                      temp_bytes=compiled.memory_analysis().temp_size_in_bytes)
    thunks[name] = functools.partial(compiled, q, k, v)
  timing.warm_up(thunks)
  for name, seconds in timing.median_seconds(thunks, _REPEATS.value).items():
    rows[name]['seconds'] = seconds
  causal = rows['causal']
  for row in rows.values():
    row['time_vs_causal'] = row['seconds'] / causal['seconds']
    row['tiles_vs_causal'] = row['tiles'] / causal['tiles']
    row['time_per_tile_vs_causal'] = (row['time_vs_causal'] /
                                      row['tiles_vs_causal'])
  return list(rows.values())


def main(argv):
  del argv
  names = ['causal'] + [m for m in _MASKS.value if m != 'causal']
  print(f'blockwise attention, B=1, N={_HEADS.value}, K={_KV_HEADS.value}, '
        f'H={_HEAD_DIM.value}, float32, chunks 512 x 256, on '
        f'{jax.devices()[0].device_kind}')
  print('| N | mode | mask | tiles | median s | temp MB | time vs causal | '
        'tiles vs causal | time / tiles (vs causal) |')
  print('|---|---|---|---|---|---|---|---|---|')
  results = []
  for n in map(int, _LENGTHS.value):
    for mode in _MODES.value:
      for row in measure(n, mode, names):
        results.append(row)
        print(f"| {n} | {mode} | {row['mask']} | {row['tiles']:.3f} | "
              f"{row['seconds']:.4f} | {row['temp_bytes'] / 1e6:.1f} | "
              f"{row['time_vs_causal']:.3f} | {row['tiles_vs_causal']:.3f} | "
              f"{row['time_per_tile_vs_causal']:.2f} |", flush=True)
  timing.write_rows(_OUTPUT.value, results)


if __name__ == '__main__':
  app.run(main)
