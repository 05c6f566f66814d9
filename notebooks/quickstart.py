# %% [markdown]
# # Quickstart: efficient attention in JAX
#
# This notebook installs the package, calls exact blockwise attention,
# checks it against `jax.nn.dot_product_attention`, takes a gradient, swaps
# in every other mechanism by name (with its error against exact attention
# in a plot), and puts one into a Flax attention layer.
#
# It sizes its work to the runtime it finds: a TPU or GPU gets long
# sequences, a CPU shorter ones, and the smoke mode CI uses
# (`NOTEBOOK_SMOKE=1`) the shortest. The file is the paired text form
# (jupytext percent format) of `quickstart.ipynb`;
# `python -m efficient_attention.experiments.notebooks` rebuilds the
# `.ipynb` from it and runs every notebook.
#
# To open it in Colab: File > Open notebook > GitHub, give this
# repository, pick `notebooks/quickstart.ipynb`, choose a runtime (Runtime >
# Change runtime type: a TPU v5e, a GPU or the CPU) and run all cells.

# %%
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
from flax import nnx

from efficient_attention import attention
from efficient_attention.experiments import notebooks

SMOKE, BACKEND = notebooks.runtime()  # BACKEND: 'tpu', 'gpu' or 'cpu'
# Colab's free TPU runtime is one v5e chip (16 GB); its CPU runtime has 2
# cores. Lengths that take seconds on each:
LENGTH = 256 if SMOKE else {'tpu': 8192, 'gpu': 8192}.get(BACKEND, 2048)
print(f'sequence length {LENGTH}')

# %% [markdown]
# ## Exact attention in O(T) memory
#
# Shapes follow `jax.nn.dot_product_attention`: `query [B, T, N, H]`,
# `key` and `value [B, S, K, H]`. Here 8 query heads share 2 key/value
# heads (grouped-query attention), which blockwise attention computes
# without repeating the key/value heads.

# %%
q = jax.random.normal(jax.random.key(0), (1, LENGTH, 8, 64))
kv = jax.random.normal(jax.random.key(1), (1, LENGTH, 2, 64))

blockwise = jax.jit(lambda q, k, v: attention.blockwise_attention(
    q, k, v, is_causal=True))
reference = jax.jit(lambda q, k, v: jax.nn.dot_product_attention(
    q, jnp.repeat(k, 4, axis=2), jnp.repeat(v, 4, axis=2), is_causal=True))
out, exact = blockwise(q, kv, kv), reference(q, kv, kv)
error = float(jnp.abs(out - exact).max())
print(f'max |blockwise - jax.nn| = {error:.2e}')
assert error < 1e-4

# %% [markdown]
# ## Gradients
#
# The backward pass recomputes each tile from the saved log-sum-exp
# (FlashAttention-2 style), so its memory is linear in the length too.

# %%
grad = jax.jit(jax.grad(lambda q, k, v: blockwise(q, k, v).sum()))(q, kv, kv)
want = jax.jit(jax.grad(lambda q, k, v: reference(q, k, v).sum()))(q, kv, kv)
print(f'max |dq - dq(jax.nn)| = {float(jnp.abs(grad - want).max()):.2e}')

# %% [markdown]
# ## Every mechanism by name
#
# `attention.names()` lists what is registered; `attention.get(name)` is
# the function, with the same arguments. The approximate mechanisms trade
# exactness for time or memory: their error against exact attention, and
# their time at this length, on the same inputs. Random Gaussian inputs are
# the hard case for them: attention is spread over every key, so the exact
# output is a small average that their noise swamps (Infini-attention and
# Transformer-XL are exact within a segment, up to Infini-attention's gate;
# the mechanism tour compares them on structured inputs).

# %%
errors, times = {}, {}
bidirectional = jax.jit(attention.blockwise_attention)(q, kv, kv)
for name in attention.names():
  # Causal, except for Linformer, which cannot be (compared bidirectionally).
  causal = attention.get(name).causal
  fn = jax.jit(lambda q, k, v, fn=attention.get(name): fn(
      q, k, v, is_causal=causal))
  result = fn(q, kv, kv).block_until_ready()  # compile, then time
  start = time.perf_counter()
  fn(q, kv, kv).block_until_ready()
  times[name] = time.perf_counter() - start
  want = exact if causal else bidirectional
  errors[name] = float(jnp.abs(result - want).mean() /
                       jnp.abs(want).mean())
  print(f'{name:12s} relative error {errors[name]:.2e}   '
        f'{times[name] * 1e3:8.1f} ms')

figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
names = list(errors)
left.bar(names, [max(errors[n], 1e-8) for n in names])
left.set_yscale('log')
left.set_title('mean |out - exact| / mean |exact|')
right.bar(names, [times[n] * 1e3 for n in names])
right.set_title(f'forward time (ms), causal, T = {LENGTH}')
for axis in (left, right):
  axis.tick_params(axis='x', rotation=45)
figure.tight_layout()
notebooks.save(figure, 'quickstart_mechanisms.png')

# %% [markdown]
# ## In a Flax layer
#
# `attention.attention_fn(name, **options)` fits the `attention_fn=` slot of
# Flax's Linen and NNX attention layers. (A `functools.partial(...,
# is_causal=True)` would not: NNX passes `is_causal=False` on every call.)

# %%
layer = nnx.MultiHeadAttention(
    num_heads=8, in_features=512, decode=False, rngs=nnx.Rngs(0),
    attention_fn=attention.attention_fn('blockwise', is_causal=True))
x = jax.random.normal(jax.random.key(2), (2, min(LENGTH, 1024), 512))
y = layer(x)
print('layer output', y.shape, y.dtype)
