r"""Forward-pass memory and speed against total length, up to 1M tokens.

For each total length T and mechanism, one jitted forward pass of the
attention function over `[B, T, N, H]` inputs (causal self-attention):
Infini-attention (`segment_size` L), Transformer-XL (segments of L, cache
of L), sliding-window attention (`blockwise` with a window of L) and, up to
`--exact_up_to`, full causal `blockwise` attention. Reported: the compiled
temporary memory (`memory_analysis().temp_size_in_bytes`, which excludes
the inputs and the output: those are 4 B T N H f32 values whatever the
mechanism), the inputs' and output's size, and tokens/s from the median of
`--repeats` runs after a warm-up (`experiments.timing`).

  python -m efficient_attention.experiments.benchmark_stream \
      --lengths=8192,65536,262144,1048576 --output=stream.json
"""

from __future__ import annotations

import functools

from absl import app
from absl import flags
import jax
import jax.numpy as jnp

from efficient_attention import attention
from efficient_attention.experiments import timing

_LENGTHS = flags.DEFINE_list('lengths', ['8192', '65536', '262144',
                                         '1048576'], 'Total lengths T.')
_MECHANISMS = flags.DEFINE_list('mechanisms',
                                ['infini', 'xl', 'window', 'blockwise'],
                                'infini, xl, window, blockwise.')
_SEGMENT = flags.DEFINE_integer('segment', 2048,
                                'Segment L (Infini, XL), window (blockwise).')
_EXACT_UP_TO = flags.DEFINE_integer(
    'exact_up_to', 65536, 'Longest T for full causal blockwise: O(T^2).')
_HEADS = flags.DEFINE_integer('heads', 4, 'Query heads N.')
_KV_HEADS = flags.DEFINE_integer('kv_heads', 4, 'Key/value heads K.')
_HEAD_DIM = flags.DEFINE_integer('head_dim', 64, 'Head dim H.')
_BATCH = flags.DEFINE_integer('batch', 1, 'Batch size B.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed runs.')
_OUTPUT = flags.DEFINE_string('output', None, 'Write results as JSON.')


def forward(name: str, segment: int):
  """The jitted forward pass of mechanism `name`."""
  fns = {
      'infini': functools.partial(attention.infini_attention,
                                  segment_size=segment, chunk_size=512),
      'xl': functools.partial(attention.xl_attention, segment_size=segment,
                              memory_length=segment, chunk_size=512),
      'window': functools.partial(attention.blockwise_attention,
                                  is_causal=True,
                                  local_window_size=(segment, 0)),
      'blockwise': functools.partial(attention.blockwise_attention,
                                     is_causal=True),
  }
  if name not in fns:
    raise app.UsageError(f'--mechanisms: {name!r} is not one of {list(fns)}')
  return jax.jit(fns[name])


def main(argv):
  del argv
  B, N, K, H = _BATCH.value, _HEADS.value, _KV_HEADS.value, _HEAD_DIM.value
  print(f'{jax.devices()[0].device_kind}, jax {jax.__version__}; B={B}, '
        f'N={N}, K={K}, H={H}, L={_SEGMENT.value}, float32')
  print('| mechanism | tokens | tokens/s | temporary MB | inputs + output '
        'MB |')
  print('|---|---|---|---|---|')
  rows = []
  for T in map(int, _LENGTHS.value):
    keys = jax.random.split(jax.random.key(T), 3)
    q = jax.random.normal(keys[0], (B, T, N, H), jnp.float32)
    k, v = (jax.random.normal(x, (B, T, K, H), jnp.float32)
            for x in keys[1:])
    io_bytes = 2 * q.nbytes + k.nbytes + v.nbytes
    thunks, temp = {}, {}
    for name in _MECHANISMS.value:
      if name == 'blockwise' and T > _EXACT_UP_TO.value:
        continue
      compiled = forward(name, _SEGMENT.value).lower(q, k, v).compile()
      temp[name] = compiled.memory_analysis().temp_size_in_bytes
      thunks[name] = functools.partial(compiled, q, k, v)
    timing.warm_up(thunks)
    for name, seconds in timing.median_seconds(thunks,
                                               _REPEATS.value).items():
      rows.append(dict(mechanism=name, tokens=T, tokens_per_s=B * T / seconds,
                       temp_bytes=temp[name], io_bytes=io_bytes))
      print(f'| {name} | {T:,} | {B * T / seconds:,.0f} | '
            f'{temp[name] / 1e6:.1f} | {io_bytes / 1e6:,.0f} |', flush=True)
    del q, k, v, thunks
  timing.write_rows(_OUTPUT.value, rows)


if __name__ == '__main__':
  app.run(main)
