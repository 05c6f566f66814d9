# %% [markdown]
# # Long context: streaming in constant memory, and passkey retrieval
#
# Infini-attention and Transformer-XL cut a sequence into segments and carry
# a state of fixed size from one to the next, so they read a text of any
# length in constant memory. This notebook measures that (compiled memory
# against length, a model streaming a long text), then asks what that fixed
# state can still retrieve: a passkey planted at growing distances, first
# with attention weights built by hand (what each mechanism can reach at
# all), then with small models trained on the passkey task.
#
# To open it in Colab: File > Open notebook > GitHub, give this
# repository, pick `notebooks/long_context.ipynb`, choose a runtime and
# run all cells. `NOTEBOOK_SMOKE=1` (what CI sets) shrinks the work.

# %%
import os
import tempfile
import time

from flax import nnx
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from efficient_attention import attention
from efficient_attention import models
from efficient_attention.experiments import benchmark_stream
from efficient_attention.experiments import data
from efficient_attention.experiments import notebooks
from efficient_attention.experiments import passkey_eval
from efficient_attention.experiments import train
from efficient_attention.experiments.configs import passkey as passkey_config

SMOKE, BACKEND = notebooks.runtime()
ACCELERATOR = BACKEND in ('tpu', 'gpu')
SEGMENT = 128 if SMOKE else 256  # tokens per segment, the cache, the window
LENGTHS = ([1024, 4096] if SMOKE else
           [16384, 131072, 1048576] if ACCELERATOR else
           [4096, 16384, 65536])
print(f'segments of {SEGMENT}; forward lengths {LENGTHS}')

# %% [markdown]
# ## Constant memory: one forward pass at growing lengths
#
# `experiments/benchmark_stream.py`'s jitted forward passes over
# `[1, T, 4, 64]` queries, keys and values: Infini-attention and
# Transformer-XL (segments and cache of `SEGMENT`), a sliding window of
# `SEGMENT` through `blockwise`, and full causal `blockwise` up to the
# second length. The compiled temporary memory of Infini-attention and
# Transformer-XL (`compiled.memory_analysis().temp_size_in_bytes`, inputs
# and output left out) does not depend on T: each segment is sliced from
# the inputs and its output written in place inside a `lax.scan`. The
# window's grows with T (its per-row log-sum-exp), and full attention's
# time grows quadratically.

# %%
temp_mb, speed = {}, {}
for T in LENGTHS:
  keys = jax.random.split(jax.random.key(T), 3)
  q = jax.random.normal(keys[0], (1, T, 4, 64))
  k, v = (jax.random.normal(x, (1, T, 4, 64)) for x in keys[1:])
  for name in ('infini', 'xl', 'window', 'blockwise'):
    if name == 'blockwise' and T > LENGTHS[1]:
      continue
    compiled = benchmark_stream.forward(name, SEGMENT).lower(q, k, v).compile()
    temp_mb.setdefault(name, []).append(
        (T, compiled.memory_analysis().temp_size_in_bytes / 1e6))
    compiled(q, k, v).block_until_ready()
    start = time.perf_counter()
    compiled(q, k, v).block_until_ready()
    speed.setdefault(name, []).append((T, T / (time.perf_counter() - start)))
  del q, k, v
for name, points in temp_mb.items():
  print(f'{name:10s}' + ''.join(
      f'  T={T:>9,}: {mb:8.1f} MB, {rate:9,.0f} tokens/s'
      for (T, mb), (_, rate) in zip(points, speed[name])))

figure, axes = plt.subplots(1, 2, figsize=(11, 4))
for name, points in temp_mb.items():
  axes[0].plot(*zip(*points), marker='o', label=name)
  axes[1].plot(*zip(*speed[name]), marker='o', label=name)
for axis, label in zip(axes, ('compiled temporary MB', 'tokens / s')):
  axis.set_xscale('log')
  axis.set_yscale('log')
  axis.set_xlabel('tokens in one forward pass')
  axis.set_ylabel(label)
axes[0].legend()
figure.tight_layout()
notebooks.save(figure, 'constant_memory.png')

# %% [markdown]
# ## Streaming a long text through a model
#
# A small `DecoderLM` (untrained: this is about cost, not quality) reads
# Python's standard-library sources chunk by chunk through
# `model.decode(cache, chunk)`, carrying its cache. For Infini-attention
# and Transformer-XL the cache has the same size after the first chunk and
# after the last; a KV cache (exact attention) would have to hold every
# token read. Streaming equals one call over the whole prefix: checked on
# the first chunks below.

# %%
CHUNK = 2 * SEGMENT  # whole segments: each call runs the parallel form
NUM_CHUNKS = 4 if SMOKE else 256 if ACCELERATOR else 64
text = data.load('stdlib').validation[:CHUNK * NUM_CHUNKS]
stream = jnp.asarray(text, jnp.int32)[None]


def config_for(name):
  options = {'infini': (('segment_size', SEGMENT), ('chunk_size', SEGMENT)),
             'xl': (('segment_size', SEGMENT), ('memory_length', SEGMENT),
                    ('chunk_size', SEGMENT)),
             'blockwise': ()}[name]
  return models.TransformerConfig(
      vocab_size=256, model_dim=128, num_layers=2, num_heads=2,
      num_kv_heads=2, mlp_dim=256, attention=name, attention_options=options)


def megabytes(tree):
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree)) / 1e6


decode = nnx.jit(lambda model, cache, chunk: model.decode(cache, chunk))
state_mb = {}
for name in ('infini', 'xl'):
  model = models.DecoderLM(config_for(name), rngs=nnx.Rngs(0))
  cache, logits, sizes = model.init_cache(1, CHUNK), [], []
  start = time.perf_counter()
  for i in range(NUM_CHUNKS):
    out, cache = decode(model, cache, stream[:, i * CHUNK:(i + 1) * CHUNK])
    if i < 2:
      logits.append(out)
    sizes.append(((i + 1) * CHUNK, megabytes(cache)))
  jax.block_until_ready(cache)
  rate = CHUNK * NUM_CHUNKS / (time.perf_counter() - start)
  whole = nnx.jit(lambda m, x: m(x))(model, stream[:, :2 * CHUNK])
  error = float(jnp.abs(jnp.concatenate(logits, 1) - whole).max())
  state_mb[name] = sizes
  print(f'{name}: {CHUNK * NUM_CHUNKS:,} bytes streamed at {rate:,.0f} '
        f'tokens/s; state {sizes[0][1]:.3f} MB after {CHUNK} tokens, '
        f'{sizes[-1][1]:.3f} MB after {sizes[-1][0]:,}; streamed vs one '
        f'call, max |logit difference| {error:.1e}')

# What a KV cache of exact attention needs to hold the same tokens (its
# shapes only: nothing is allocated).
kv_model = nnx.eval_shape(
    lambda: models.DecoderLM(config_for('blockwise'), rngs=nnx.Rngs(0)))
state_mb['KV cache (exact)'] = [
    (t, megabytes(jax.eval_shape(lambda t=t: kv_model.init_cache(1, t))))
    for t, _ in state_mb['xl']]

figure, axis = plt.subplots(figsize=(6, 4))
for name, sizes in state_mb.items():
  axis.plot(*zip(*sizes), label=name)
axis.set_xlabel('tokens streamed')
axis.set_ylabel('decoding state, MB (all layers)')
axis.legend()
figure.tight_layout()
notebooks.save(figure, 'streaming_state.png')

# %% [markdown]
# ## What a fixed state can reach: a passkey planted by hand
#
# Before any training, what can each mechanism retrieve at all? One head
# (H = 64), random keys and values, and one planted pair (k*, v*) at a
# distance d before the last query, which is 4 k*: exact attention puts
# almost all its weight on the planted key, whatever d. The plot is the
# cosine between the last output and v* (1: retrieved; near 0: an average
# of unrelated values). Transformer-XL and the sliding window reach back
# their cache plus segment, or their window, and nothing beyond.
# Infini-attention's memory is read here alone (gate logits of +10, g near
# 1): a normalised linear-attention average over every earlier segment,
# with ELU + 1 features, which a single pair among thousands barely moves.

# %%
T = 1024 if SMOKE else 4096
DISTANCES = [d for d in (8, 32, 128, 200, 300, 500, 700, 1000, 2000, 4000)
             if d < T]
keys = jax.random.split(jax.random.key(1), 4)
planted_key = jax.random.normal(keys[0], (64,))
planted_value = jax.random.normal(keys[1], (64,))
k = jax.random.normal(keys[2], (len(DISTANCES), T, 1, 64))
v = jax.random.normal(keys[3], (len(DISTANCES), T, 1, 64))
q = jnp.zeros_like(k).at[:, -1, 0].set(4 * planted_key)
for row, d in enumerate(DISTANCES):
  k = k.at[row, T - 1 - d, 0].set(planted_key)
  v = v.at[row, T - 1 - d, 0].set(planted_value)

retrievers = {
    'exact (blockwise)': lambda q, k, v: attention.blockwise_attention(
        q, k, v, is_causal=True),
    f'sliding window {SEGMENT}': lambda q, k, v: attention.blockwise_attention(
        q, k, v, is_causal=True, local_window_size=(SEGMENT, 0)),
    f'xl (segment and cache {SEGMENT})': lambda q, k, v: attention.xl_attention(
        q, k, v, segment_size=SEGMENT, memory_length=SEGMENT,
        chunk_size=SEGMENT),
    'infini memory (delta)': lambda q, k, v: attention.infini_attention(
        q, k, v, segment_size=SEGMENT, chunk_size=SEGMENT, update='delta',
        gate_logits=jnp.full((1,), 10.0)),
    'infini memory (linear)': lambda q, k, v: attention.infini_attention(
        q, k, v, segment_size=SEGMENT, chunk_size=SEGMENT, update='linear',
        gate_logits=jnp.full((1,), 10.0)),
}
figure, axis = plt.subplots(figsize=(7, 4))
for name, fn in retrievers.items():
  out = jax.jit(fn)(q, k, v)[:, -1, 0]
  cosine = (out @ planted_value) / (jnp.linalg.norm(out, axis=-1) *
                                    jnp.linalg.norm(planted_value))
  print(f'{name:32s}' + ' '.join(f'{c:5.2f}' for c in cosine))
  axis.plot(DISTANCES, cosine, marker='o', label=name)
axis.set_xscale('log')
axis.set_xlabel('distance of the planted key from the query (tokens)')
axis.set_ylabel('cosine(output, planted value)')
axis.legend(fontsize=8)
figure.tight_layout()
notebooks.save(figure, 'planted_passkey.png')
print('distances', DISTANCES)

# %% [markdown]
# ## Passkey retrieval, trained
#
# The passkey task (Mohtashami & Jaggi 2023, arXiv 2305.16300): a
# five-digit key hidden in filler text, asked for at the end. The
# project's passkey experiment (`experiments/configs/passkey.py`: 2 layers
# of width 128, a curriculum from 141 to 1,041 tokens, 1,700 steps) trains
# each mechanism with the training job, then scores whole keys and digits
# (chance: 10% of digits) on unseen examples at the first training size and
# at the longest. Here its length is cut to fit the runtime: all 1,700
# steps on an accelerator, a few hundred on a CPU (where even the full run
# stays near chance beyond one segment: `docs/experiments.md` has that
# table, a negative result at this budget). Read the numbers below as
# what this budget buys, not as the mechanisms' ceiling.

# %%
config = passkey_config.get_config()
if SMOKE:
  steps, variants, examples = 4, ['xl'], 2
elif ACCELERATOR:
  steps, variants, examples = config.train.num_steps, ['infini', 'xl',
                                                       'window'], 32
else:
  steps, variants, examples = 300, ['infini', 'xl'], 16
short = SMOKE or steps < config.train.num_steps
with config.unlocked():
  config.train.num_steps = steps
  config.train.warmup_steps = min(config.train.warmup_steps, steps // 2)
  config.train.eval_every = config.train.checkpoint_every = max(steps // 2, 1)
  config.train.log_every = max(steps // 4, 1)
  config.train.eval_batches = 1
  if short:  # no curriculum: all steps at the first (shortest) size
    config.data.size_schedule = ()
    config.data.eval_size = config.data.size
WORKDIR = os.path.join(os.environ.get('NOTEBOOK_OUTPUT') or tempfile.mkdtemp(),
                       'passkey')
lengths = passkey_eval.columns(config, [1, 4])
results = {}
for variant in variants:
  variant_config = passkey_eval.variant_config(config, variant)
  start = time.perf_counter()
  state = train.trained_state(variant_config, os.path.join(WORKDIR, variant))
  print(f'{variant}: {steps} steps in {time.perf_counter() - start:.0f} s')
  results[variant] = {
      label: passkey_eval.evaluate(variant_config, state, filler, examples)
      for label, filler in lengths.items()}
trained_at = results[variants[0]]['1x']['tokens']  # 1x: the longest trained
print(passkey_eval.table(results, variants, list(lengths),
                         trained=f'{steps} steps, up to {trained_at:,} tokens'))
