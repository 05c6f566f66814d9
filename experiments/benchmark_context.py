r"""Decoding speed against context length, for each decodable mechanism.

For each context length C and mechanism, a `DecoderLM` whose decoding cache
already holds C tokens generates `--new_tokens` greedy tokens, one step each
(a jitted `fori_loop` of `model.decode`). The cache is filled with random
states of the right shapes rather than by a C-token prefill: a step's cost
depends only on the state's size, and the prefill is not what is measured.
The exact-attention cache holds `[B, C + new_tokens, K, H]` keys and values
per layer and a step reads all of them, O(C); the linear and Performer
states are `[B, K, F, H]` whatever C, O(1).

Mechanisms are compiled and warmed up, then timed alternately
(`experiments.timing`); tokens/s from the median of `--repeats` runs.

  python -m efficient_attention.experiments.benchmark_context --contexts=1024,8192,65536 \
      --mechanisms=blockwise,linear,performer
"""

from __future__ import annotations


from absl import app
from absl import flags
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from efficient_attention import attention
from efficient_attention import models
from efficient_attention.experiments import timing

_CONTEXTS = flags.DEFINE_list('contexts', ['1024', '8192', '65536'],
                              'Tokens already in the cache, C.')
_MECHANISMS = flags.DEFINE_list('mechanisms',
                                ['blockwise', 'linear', 'performer'],
                                'Decodable registered mechanisms.')
_NEW = flags.DEFINE_integer('new_tokens', 128, 'Tokens to generate.')
_DIM = flags.DEFINE_integer('model_dim', 256, 'Model width D.')
_LAYERS = flags.DEFINE_integer('layers', 4, 'Layers.')
_HEADS = flags.DEFINE_integer('heads', 8, 'Query heads N.')
_KV_HEADS = flags.DEFINE_integer('kv_heads', 2, 'Key/value heads K.')
_BATCH = flags.DEFINE_integer('batch', 1, 'Batch size B.')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed runs.')
_OUTPUT = flags.DEFINE_string('output', None, 'Write results as JSON.')


def filled_cache(model, batch_size, context, new_tokens, seed=0):
  """A cache shaped for `context + new_tokens` tokens, holding `context`."""
  cache = model.init_cache(batch_size, context + new_tokens)
  leaves, treedef = jax.tree.flatten(cache['layers'])
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  # Exact caches: random keys/values, lengths C. Feature states: random
  # non-negative sums, log-scales 0.
  filled = [jnp.full(x.shape, context, x.dtype) if x.dtype == jnp.int32
            else jnp.abs(jax.random.normal(k, x.shape, x.dtype))
            if x.ndim >= 3 else jnp.zeros(x.shape, x.dtype)
            for x, k in zip(leaves, keys)]
  return {'position': jnp.full((batch_size,), context, jnp.int32),
          'layers': jax.tree.unflatten(treedef, filled)}


def decoder(model, new_tokens):
  """`run(cache, token)`: greedy decoding of `new_tokens` steps, jitted."""
  graphdef, state = nnx.split(model)

  @jax.jit
  def run(state, cache, token):
    model = nnx.merge(graphdef, state)

    def body(_, carry):
      cache, token = carry
      logits, cache = model.decode(cache, token)
      return cache, jnp.argmax(logits, axis=-1).astype(jnp.int32)

    return jax.lax.fori_loop(0, new_tokens, body, (cache, token))[1]

  return lambda cache, token: run(state, cache, token)


def state_bytes(cache):
  return sum(x.nbytes for x in jax.tree.leaves(cache['layers']))


def main(argv):
  del argv
  for name in _MECHANISMS.value:
    if not attention.get(name).decodable:
      raise app.UsageError(f'--mechanisms: {name!r} cannot decode')
  print(f'{jax.devices()[0].device_kind}, jax {jax.__version__}')
  print('| mechanism | context | tokens/s | decoding state MB |')
  print('|---|---|---|---|')
  rows = []
  token = jnp.asarray(np.random.default_rng(0).integers(
      0, 256, (_BATCH.value, 1)), jnp.int32)
  for context in map(int, _CONTEXTS.value):
    thunks, sizes = {}, {}
    for name in _MECHANISMS.value:
      config = models.TransformerConfig(
          vocab_size=256, model_dim=_DIM.value, num_layers=_LAYERS.value,
          num_heads=_HEADS.value, num_kv_heads=_KV_HEADS.value,
          mlp_dim=4 * _DIM.value, attention=name,
          max_length=context + _NEW.value)
      model = models.DecoderLM(config, rngs=nnx.Rngs(0))
      cache = filled_cache(model, _BATCH.value, context, _NEW.value)
      sizes[name] = state_bytes(cache)
      thunks[name] = (lambda run=decoder(model, _NEW.value), cache=cache:
                      run(cache, token))
    timing.warm_up(thunks)
    generated = _BATCH.value * _NEW.value
    for name, seconds in timing.median_seconds(thunks,
                                               _REPEATS.value).items():
      rows.append(dict(mechanism=name, context=context,
                       tokens_per_s=generated / seconds,
                       state_bytes=sizes[name]))
      print(f'| {name} | {context} | {generated / seconds:.1f} | '
            f'{sizes[name] / 1e6:.2f} |', flush=True)
  timing.write_rows(_OUTPUT.value, rows)


if __name__ == '__main__':
  app.run(main)
