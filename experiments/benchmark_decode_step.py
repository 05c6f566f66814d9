r"""One exact-attention decoding step: does it cost O(tokens so far)?

A KV cache (`attention.decoding.kv_cache`) holding `--position` tokens takes one new
token; the jitted `step` is timed with the cache donated, as in a decoding
loop, for each `--max_lengths` (cache size). Steps at the same position
should cost the same whatever the cache size; the compiled step's
temporary memory shows whether it allocates anything of the cache's size.
Each length is compiled and warmed up first, then timed alternately
(`experiments.timing`), median of `--repeats` rounds of `--steps` steps.

  python -m efficient_attention.experiments.benchmark_decode_step --max_lengths=2048,32768
"""

from __future__ import annotations

import json

from absl import app
from absl import flags
import jax
import jax.numpy as jnp

from efficient_attention import attention
from efficient_attention.experiments import timing

_LENGTHS = flags.DEFINE_list('max_lengths', ['2048', '32768'],
                             'Cache sizes (max_length).')
_POSITION = flags.DEFINE_integer('position', 1024, 'Tokens in the cache.')
_MECHANISM = flags.DEFINE_string('mechanism', 'blockwise', 'Exact mechanism.')
_HEADS = flags.DEFINE_integer('heads', 8, 'Query heads N.')
_KV_HEADS = flags.DEFINE_integer('kv_heads', 2, 'Key/value heads K.')
_HEAD_DIM = flags.DEFINE_integer('head_dim', 64, 'Head dimension H.')
_WINDOW = flags.DEFINE_integer('window', 0, 'Sliding window (0: none).')
_STEPS = flags.DEFINE_integer('steps', 32, 'Steps per timed round.')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed rounds.')
_OUTPUT = flags.DEFINE_string('output', None, 'Write results as JSON.')


def _runner(max_length: int):
  """A thunk running `--steps` donated steps from a cache at `--position`."""
  mechanism = attention.get(_MECHANISM.value)
  K, H, N = _KV_HEADS.value, _HEAD_DIM.value, _HEADS.value
  options = {}
  if _WINDOW.value:
    options['local_window_size'] = (_WINDOW.value, 0)
  state = mechanism.init_state(1, K, H, max_length=max_length, **options)
  state = state._replace(length=jnp.full((1,), _POSITION.value, jnp.int32))
  keys = jax.random.split(jax.random.key(0), 3)
  q = jax.random.normal(keys[0], (1, 1, N, H))
  k, v = (jax.random.normal(x, (1, 1, K, H)) for x in keys[1:])
  step = jax.jit(lambda state: mechanism.step(state, q, k, v, **options),
                 donate_argnums=0)
  compiled = step.lower(state).compile()
  temp = compiled.memory_analysis().temp_size_in_bytes
  box = {'state': state}

  def run():
    state, out = box['state'], None
    for _ in range(_STEPS.value):
      out, state = step(state)
      state = state._replace(length=state.length - 1)  # stay at `position`
    box['state'] = state
    return out

  return run, temp


def main(argv):
  del argv
  lengths = [int(x) for x in _LENGTHS.value]
  thunks, temps = {}, {}
  for length in lengths:
    thunks[length], temps[length] = _runner(length)
  timing.warm_up(thunks)
  seconds = timing.median_seconds(thunks, _REPEATS.value)
  base = lengths[0]
  print(f'{_MECHANISM.value} decoding step at position {_POSITION.value} '
        f'(B=1, N={_HEADS.value}, K={_KV_HEADS.value}, H={_HEAD_DIM.value}'
        f'{f", window {_WINDOW.value}" if _WINDOW.value else ""}), cache '
        'donated, on ' + jax.devices()[0].device_kind)
  print('| max_length | ms per step | vs first | temp MB |')
  print('|---|---|---|---|')
  rows = []
  for length in lengths:
    ms = 1e3 * seconds[length] / _STEPS.value
    ratio = seconds[length] / seconds[base]
    print(f'| {length} | {ms:.3f} | {ratio:.2f}x | '
          f'{temps[length] / 1e6:.2f} |', flush=True)
    rows.append(dict(max_length=length, ms_per_step=ms, ratio=ratio,
                     temp_bytes=temps[length]))
  if _OUTPUT.value:
    with open(_OUTPUT.value, 'w') as f:
      json.dump(dict(device=jax.devices()[0].device_kind,
                     position=_POSITION.value, mechanism=_MECHANISM.value,
                     rows=rows), f, indent=1)


if __name__ == '__main__':
  app.run(main)
