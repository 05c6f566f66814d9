# %% [markdown]
# # A tour of every mechanism
#
# Every registered mechanism on the same inputs: its error against exact
# attention, its time and compiled memory as the sequence grows, and, for
# exact attention, the masks that express sparse patterns with the tiles a
# kernel visits. The notebook reads the registry (`attention.names()`), so
# a mechanism added later joins every table and plot here by itself.
#
# To open it in Colab: File > Open notebook > GitHub, give this
# repository, pick `notebooks/mechanism_tour.ipynb`, choose a runtime and
# run all cells. `NOTEBOOK_SMOKE=1` (what CI sets) shrinks the work.

# %%
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from efficient_attention import attention
from efficient_attention.attention import masks
from efficient_attention.experiments import notebooks

SMOKE, BACKEND = notebooks.runtime()
LENGTHS = ([128, 256] if SMOKE else
           [1024, 2048, 4096, 8192, 16384] if BACKEND in ('tpu', 'gpu') else
           [512, 1024, 2048, 4096])
HEADS, KV_HEADS, HEAD_DIM = 8, 2, 64
print(f'lengths {LENGTHS}')
for name in attention.names():
  mechanism = attention.get(name)
  print(f'{name:12s} {"exact" if mechanism.exact else "approximate":12s}'
        f'{"decodes" if mechanism.init_state else ""}')

save = notebooks.save  # keeps the pictures of a smoke run

# %% [markdown]
# ## Error against exact attention
#
# Random Gaussian queries spread attention over every key, the case where
# approximations look worst. Real attention is often peaked: here each
# query is a scaled copy of a key a few positions back plus noise, so
# exact attention puts most of its weight on that key (a "retrieval"
# pattern). The table shows which mechanisms can form such a peak: the
# kernelized ones (linear, Performer) smooth it out, the recall gap that
# Zoology (Arora et al. 2023, arXiv 2312.04927) measures. The sparse
# patterns (Sparse Transformer, Longformer, BigBird) are exact attention
# over fewer keys: where the pattern covers every key (a sequence within
# Longformer's default window of 256 on each side, or within BigBird's
# eight blocks of 64) they equal exact attention; beyond, their error is
# the weight of what they leave out (the Sparse Transformer's strided
# heads never see three positions back, so even peaked queries differ).
# Linformer's projections here are untrained random draws. Error: mean
# |out - exact| / mean |exact|, causal, at the shortest length
# (bidirectional for Linformer, which cannot be causal).

# %%
def inputs(length, sharpness=4.0, seed=0):
  keys = jax.random.split(jax.random.key(seed), 3)
  k = jax.random.normal(keys[0], (1, length, KV_HEADS, HEAD_DIM))
  v = jax.random.normal(keys[1], (1, length, KV_HEADS, HEAD_DIM))
  back = jnp.maximum(jnp.arange(length) - 3, 0)  # three positions back
  q = sharpness * jnp.repeat(k[:, back], HEADS // KV_HEADS, axis=2)
  q += jax.random.normal(keys[2], q.shape)
  return q / np.sqrt(sharpness), k, v


def compiled(name, causal=None):
  """Causal attention, or bidirectional for a mechanism that cannot be
  causal (Linformer), unless `causal` says which."""
  fn = attention.get(name)
  causal = fn.causal if causal is None else causal
  return jax.jit(lambda q, k, v: fn(q, k, v, is_causal=causal))


errors = {}
for sharpness in (0.0, 4.0):
  q, k, v = inputs(LENGTHS[0], sharpness) if sharpness else (
      jax.random.normal(jax.random.key(5), (1, LENGTHS[0], HEADS,
                                            HEAD_DIM)),) + inputs(
                                                LENGTHS[0])[1:]
  exact = {causal: compiled('dot_product', causal)(q, k, v)
           for causal in (True, False)}
  for name in attention.names():
    out = compiled(name)(q, k, v)
    want = exact[attention.get(name).causal]
    errors[name, sharpness] = float(jnp.abs(out - want).mean() /
                                    jnp.abs(want).mean())

print(f'{"mechanism":12s} {"random q":>10s} {"peaked q":>10s}')
for name in attention.names():
  print(f'{name:12s} {errors[name, 0.0]:10.2e} {errors[name, 4.0]:10.2e}')

figure, axis = plt.subplots(figsize=(8, 3.5))
names, width = attention.names(), 0.4
positions = np.arange(len(names))
for offset, sharpness, label in ((-width / 2, 0.0, 'random queries'),
                                 (width / 2, 4.0, 'peaked queries')):
  axis.bar(positions + offset, [max(errors[n, sharpness], 1e-8)
                                for n in names], width, label=label)
axis.set_xticks(positions, names, rotation=30)
axis.set_yscale('log')
axis.set_ylabel('relative error vs exact')
axis.legend()
figure.tight_layout()
save(figure, 'tour_errors.png')

# %% [markdown]
# ## Time and memory as the sequence grows
#
# Forward time (after compiling) and the compiled program's temporary
# memory (`memory_analysis().temp_size_in_bytes`, what XLA allocates
# besides inputs and outputs) for causal forward+backward. Dense
# attention grows quadratically in memory; blockwise attention and the
# linear-time mechanisms grow linearly. On a CPU runtime the times are a
# rough guide only: the benchmarks in `docs/benchmarks.md` alternate runs
# and report ratios.

# %%
def forward_backward(name):
  fn = attention.get(name)
  return jax.jit(jax.grad(lambda q, k, v: fn(
      q, k, v, is_causal=fn.causal).sum(), argnums=(0, 1, 2)))


seconds, memory = {}, {}
for length in LENGTHS:
  q, k, v = inputs(length)
  for name in attention.names():
    forward = compiled(name)
    forward(q, k, v).block_until_ready()
    start = time.perf_counter()
    forward(q, k, v).block_until_ready()
    seconds[name, length] = time.perf_counter() - start
    analysis = forward_backward(name).lower(q, k, v).compile()
    memory[name, length] = analysis.memory_analysis().temp_size_in_bytes

figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
for name in attention.names():
  left.plot(LENGTHS, [seconds[name, n] * 1e3 for n in LENGTHS], 'o-',
            label=name)
  right.plot(LENGTHS, [memory[name, n] / 2**20 for n in LENGTHS], 'o-',
             label=name)
for axis, title in ((left, 'forward time (ms)'),
                    (right, 'forward+backward temporary memory (MiB)')):
  axis.set_xscale('log', base=2)
  axis.set_yscale('log')
  axis.set_xlabel('sequence length')
  axis.set_title(title)
right.legend(fontsize=8)
figure.tight_layout()
save(figure, 'tour_scaling.png')
longest = LENGTHS[-1]
for name in attention.names():
  print(f'{name:12s} T={longest}: {seconds[name, longest] * 1e3:8.1f} ms '
        f'forward, {memory[name, longest] / 2**20:8.1f} MiB fwd+bwd temp')

# %% [markdown]
# ## Masks: sparsity as tiles not visited
#
# Exact attention takes mask objects (`attention.masks`) built from
# positions: a sliding window, Sparse Transformer's strided and fixed
# patterns, Longformer's global tokens, BigBird's random blocks, packed
# documents. The top row shows the visible query-key pairs in black
# (queries down, keys across); the bottom row the tiles the blockwise
# kernel visits (dark: fully visible, computed without an elementwise mask;
# light: partly visible, masked; white: skipped). The cost of a mask is
# its number of visited tiles.

# %%
T, TILE = 64, 8
patterns = {
    'causal': masks.causal(),
    'sliding window 12': masks.causal() & masks.sliding_window(12),
    'strided 8 | fixed 16': masks.causal() & (masks.strided(8) |
                                              masks.fixed(16, 2)),
    'global 0, 1 | window 6': masks.global_tokens([0, 1]) |
                              masks.sliding_window(6, 6),
    'random blocks': masks.random_blocks(2, TILE, seed=0) |
                     masks.sliding_window(4, 4),
    'documents': masks.causal() & masks.document(
        jnp.asarray([[0] * 20 + [1] * 30 + [2] * 14])),
}
figure, axes = plt.subplots(2, len(patterns), figsize=(2.2 * len(patterns),
                                                       4.6))
for (title, mask), top, bottom in zip(patterns.items(), *axes):
  dense = np.asarray(mask.dense(T, T)).reshape(-1, T, T)[0]
  layout = np.asarray(mask.layout(T, T, TILE)).reshape(-1, T // TILE,
                                                       T // TILE)[0]
  top.imshow(dense, cmap='Greys', interpolation='nearest')
  bottom.imshow(layout, cmap='Blues', vmin=0, vmax=2,
                interpolation='nearest')
  share = (layout > 0).mean()
  top.set_title(title, fontsize=8)
  bottom.set_title(f'{share:.0%} of tiles visited', fontsize=8)
  for axis in (top, bottom):
    axis.set_xticks([])
    axis.set_yticks([])
figure.tight_layout()
save(figure, 'tour_masks.png')

# %% [markdown]
# The same masks run through the kernel and agree with the dense reference
# given the equivalent boolean matrix:

# %%
q, k, v = inputs(T)
for title, mask in patterns.items():
  got = jax.jit(lambda q, k, v, mask=mask: attention.blockwise_attention(
      q, k, v, mask=mask, query_chunk_size=TILE, key_chunk_size=TILE))(
          q, k, v)
  dense = jnp.asarray(np.asarray(mask.dense(T, T)).reshape(-1, 1, T, T))
  want = attention.dot_product_attention(q, k, v, mask=dense)
  print(f'{title:24s} max |blockwise - dense reference| = '
        f'{float(jnp.abs(got - want).max()):.1e}')

# %% [markdown]
# ## Attention maps
#
# Exact attention's weights for the peaked inputs above (each query looks
# three positions back), without and with a sliding window that hides the
# target from the first queries' neighbours. `dot_product_attention`
# sows its weights into a Flax module as Flax's own function does; here
# they are computed directly from the logits for one head.

# %%
q, k, v = inputs(32)
logits = jnp.einsum('thd,shd->hts', q[0, :, :1], k[0, :, :1]) / np.sqrt(
    HEAD_DIM)
causal = np.tril(np.ones((32, 32), bool))
window = np.asarray(masks.sliding_window(2).dense(32, 32)).reshape(32, 32)
figure, axes = plt.subplots(1, 2, figsize=(7, 3.5))
for axis, visible, title in ((axes[0], causal, 'causal'),
                             (axes[1], causal & window, 'causal, window 2')):
  weights = jax.nn.softmax(jnp.where(visible, logits[0], -jnp.inf), axis=-1)
  axis.imshow(weights, cmap='viridis')
  axis.set_title(title)
  axis.set_xlabel('key')
  axis.set_ylabel('query')
figure.tight_layout()
save(figure, 'tour_maps.png')
