r"""Decoding speed: `models.generate` with the cache vs recomputing the prefix.

For each context length C, a `DecoderLM` continues a C-token prompt by
`--new_tokens` greedy tokens, two ways, in one process:

  cache:     models.generate (prefill once, then one cached step a token);
  recompute: each new token runs the causal model over the whole token
             buffer (C + new_tokens, fixed so it compiles once) and reads
             the logits at the current position.

Both are compiled and warmed up first, then timed alternately
(`experiments.timing`); tokens/s counts generated tokens only, from the
median of `--repeats` runs; the two outputs must agree.

  python -m efficient_attention.experiments.benchmark_decoding --contexts=1024,4096
"""

from __future__ import annotations

import json
from absl import app
from absl import flags
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from efficient_attention import models
from efficient_attention.experiments import timing

_CONTEXTS = flags.DEFINE_list('contexts', ['1024', '4096'],
                              'Prompt lengths C.')
_NEW = flags.DEFINE_integer('new_tokens', 32, 'Tokens to generate.')
_ATTENTION = flags.DEFINE_string('attention', 'blockwise',
                                 'Registered mechanism.')
_DIM = flags.DEFINE_integer('model_dim', 256, 'Model width D.')
_LAYERS = flags.DEFINE_integer('layers', 4, 'Layers.')
_HEADS = flags.DEFINE_integer('heads', 8, 'Query heads N.')
_KV_HEADS = flags.DEFINE_integer('kv_heads', 2, 'Key/value heads K.')
_BATCH = flags.DEFINE_integer('batch', 1, 'Batch size B.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed runs.')
_OUTPUT = flags.DEFINE_string('output', None, 'Write results as JSON.')


def _recompute(model, prompts, new_tokens):
  """Greedy continuation by full causal forwards over a fixed buffer."""
  graphdef, state = nnx.split(model)
  B, C = prompts.shape

  @jax.jit
  def run(state, prompts):
    model = nnx.merge(graphdef, state)
    buffer = jnp.pad(prompts, ((0, 0), (0, new_tokens)))

    def body(i, buffer):
      logits = model(buffer)
      token = jnp.argmax(logits[:, C + i - 1], axis=-1).astype(jnp.int32)
      return buffer.at[:, C + i].set(token)

    return jax.lax.fori_loop(0, new_tokens, body, buffer)

  return lambda: run(state, prompts)


def main(argv):
  del argv
  rows = []
  print(f'| context | new tokens | cache tok/s | recompute tok/s | speedup |')
  print('|---|---|---|---|---|')
  for context in map(int, _CONTEXTS.value):
    config = models.TransformerConfig(
        vocab_size=256, model_dim=_DIM.value, num_layers=_LAYERS.value,
        num_heads=_HEADS.value, num_kv_heads=_KV_HEADS.value,
        mlp_dim=4 * _DIM.value, attention=_ATTENTION.value,
        max_length=context + _NEW.value)
    model = models.DecoderLM(config, rngs=nnx.Rngs(0))
    prompts = jnp.asarray(np.random.default_rng(0).integers(
        0, 256, (_BATCH.value, context)), jnp.int32)
    cached = lambda: models.generate(model, prompts,
                                     max_new_tokens=_NEW.value)[0]
    recompute = _recompute(model, prompts, _NEW.value)
    same = bool((cached() == recompute()).all())
    generated = _BATCH.value * _NEW.value
    thunks = {'cache': cached, 'recompute': recompute}
    timing.warm_up(thunks)
    rates = {name: generated / seconds for name, seconds in
             timing.median_seconds(thunks, _REPEATS.value).items()}
    rows.append(dict(context=context, new_tokens=_NEW.value,
                     outputs_agree=same, **{f'{k}_tokens_per_s': v
                                            for k, v in rates.items()}))
    print(f"| {context} | {_NEW.value} | {rates['cache']:.1f} | "
          f"{rates['recompute']:.1f} | "
          f"{rates['cache'] / rates['recompute']:.1f}x |"
          + ('' if same else ' (outputs differ!)'), flush=True)
  if _OUTPUT.value:
    with open(_OUTPUT.value, 'w') as f:
      json.dump(dict(device=jax.devices()[0].device_kind, rows=rows,
                     attention=_ATTENTION.value), f, indent=1)


if __name__ == '__main__':
  app.run(main)
