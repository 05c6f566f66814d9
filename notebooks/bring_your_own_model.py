# %% [markdown]
# # Bring your own model: these attention functions inside Flax models
#
# Every mechanism here fits the `attention_fn=` slot of Flax's attention
# layers, Linen and NNX. This notebook puts one into a small Linen model
# that knows nothing about this package, checks it against Flax's own
# attention, trains it for a few steps with optax, and does the same with
# an NNX layer, including Flax's own masks and its decoding cache.
#
# To open it in Colab: File > Open notebook > GitHub, give this
# repository, pick `notebooks/bring_your_own_model.ipynb`, choose a runtime
# and run all cells. `NOTEBOOK_SMOKE=1` (what CI sets) shrinks the work.

# %%
import jax
import jax.numpy as jnp
import optax
from flax import linen as nn
from flax import nnx

from efficient_attention import attention
from efficient_attention.experiments import notebooks

SMOKE, BACKEND = notebooks.runtime()
LENGTH = 64 if SMOKE else {'tpu': 1024, 'gpu': 1024}.get(BACKEND, 128)
STEPS = 3 if SMOKE else 300
print(f'length {LENGTH}, {STEPS} steps')

# %% [markdown]
# ## A Linen model of your own
#
# A two-layer causal Transformer written with plain Linen; the only
# attention-specific argument is `attention_fn`, Flax's default being
# `nn.dot_product_attention`. `attention.attention_fn(name, **options)`
# builds a function for that slot (`is_causal=True` makes it causal
# whatever the layer passes; the causal mask the model also passes is
# honoured as well).

# %%
class TinyLM(nn.Module):
  vocab: int = 64
  width: int = 64
  heads: int = 4
  attention_fn: object = nn.dot_product_attention

  @nn.compact
  def __call__(self, tokens):
    x = nn.Embed(self.vocab, self.width)(tokens)
    x += self.param('position', nn.initializers.normal(0.02),
                    (tokens.shape[1], self.width))
    mask = nn.make_causal_mask(tokens)
    for _ in range(2):
      x += nn.MultiHeadDotProductAttention(
          num_heads=self.heads, attention_fn=self.attention_fn)(
              nn.LayerNorm()(x), mask=mask)
      x += nn.Dense(self.width)(nn.gelu(nn.Dense(4 * self.width)(
          nn.LayerNorm()(x))))
    return nn.Dense(self.vocab)(nn.LayerNorm()(x))


tokens = jax.random.randint(jax.random.key(0), (4, LENGTH), 0, 64)
flax_model = TinyLM()
ours = TinyLM(attention_fn=attention.attention_fn('blockwise',
                                                   is_causal=True))
params = flax_model.init(jax.random.key(1), tokens)  # the same parameters
difference = jnp.abs(jax.jit(flax_model.apply)(params, tokens) -
                     jax.jit(ours.apply)(params, tokens)).max()
print(f'max |logits(blockwise) - logits(Flax)| = {float(difference):.2e}')
assert difference < 1e-4

# %% [markdown]
# Training is unchanged: optax, `jax.grad`, `jax.jit`. The task: predict
# the token two places back (attention has to look back to do it). From
# chance (ln 64 = 4.16) the loss falls to about 0.03 within 300 steps on
# a CPU runtime (about 40 s on a 2-core machine).

# %%
optimizer = optax.adam(1e-2)
state = optimizer.init(params)


def loss_fn(params, tokens):
  logits = ours.apply(params, tokens)[:, 2:]
  return optax.softmax_cross_entropy_with_integer_labels(
      logits, tokens[:, :-2]).mean()


@jax.jit
def train_step(params, state, tokens):
  loss, grads = jax.value_and_grad(loss_fn)(params, tokens)
  updates, state = optimizer.update(grads, state, params)
  return optax.apply_updates(params, updates), state, loss


for step in range(STEPS):
  batch = jax.random.randint(jax.random.key(step), (16, LENGTH), 0, 64)
  params, state, loss = train_step(params, state, batch)
  if step % max(1, STEPS // 5) == 0 or step == STEPS - 1:
    print(f'step {step:4d}  loss {float(loss):.3f}')

# %% [markdown]
# ## NNX, with another mechanism
#
# The same slot in `nnx.MultiHeadAttention`. A Flax padding mask built with
# `nnx.make_attention_mask` passes through as Flax passes it; here exact
# attention agrees with Flax's, and an approximate mechanism (the
# Performer, whose options are checked when the function is built) runs in
# the same place; what it cannot honour (a dense mask) it refuses by name.

# %%
x = jax.random.normal(jax.random.key(2), (2, LENGTH, 64))
keep = jnp.arange(LENGTH)[None, :] < jnp.array([[LENGTH], [LENGTH // 2]])
padding = nnx.make_attention_mask(keep, keep)


def layer(fn):
  return nnx.MultiHeadAttention(num_heads=4, in_features=64, decode=False,
                                attention_fn=fn, rngs=nnx.Rngs(0))


flax_out = layer(nnx.dot_product_attention)(x, mask=padding)
our_out = layer(attention.attention_fn('blockwise'))(x, mask=padding)
valid = keep[..., None]
print('blockwise vs Flax on the unpadded rows:',
      f'{float(jnp.abs(jnp.where(valid, our_out - flax_out, 0)).max()):.2e}')
performer = layer(attention.attention_fn('performer', num_features=128))
print('performer output', performer(x).shape)
try:  # random features form no [T, S] matrix to mask: a clear refusal
  performer(x, mask=padding)
except ValueError as error:
  print('ValueError:', error)

# %% [markdown]
# Flax's own decoding cache (`decode=True`) calls the function one token at
# a time with the cache's mask; the outputs match the full causal pass.

# %%
decoder = nnx.MultiHeadAttention(
    num_heads=4, in_features=64, decode=True, rngs=nnx.Rngs(0),
    attention_fn=attention.attention_fn('blockwise'))
decoder.init_cache((2, 16, 64))
steps = [decoder(x[:, t:t + 1]) for t in range(16)]
full = layer(attention.attention_fn('blockwise', is_causal=True))(x[:, :16])
print('token by token vs one causal call:',
      f'{float(jnp.abs(jnp.concatenate(steps, 1) - full).max()):.2e}')
