# %% [markdown]
# # Train a model and decode from it
#
# The project's own training job (the one `make train` runs) on Python's
# standard-library sources as bytes: train a small decoder LM for a few
# minutes, plot its curves, generate text from it, and compare what
# decoding costs with a KV cache (exact attention) and with the fixed-size
# recurrent states of linear attention and Infini-attention.
#
# To open it in Colab: File > Open notebook > GitHub, give this
# repository, pick `notebooks/train_and_decode.ipynb`, choose a runtime and
# run all cells. `NOTEBOOK_SMOKE=1` (what CI sets) trains a few steps only.

# %%
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
from flax import nnx

from efficient_attention import models
from efficient_attention.experiments import reporting
from efficient_attention.experiments import train
from efficient_attention.experiments import notebooks
from efficient_attention.experiments.configs import default

SMOKE, BACKEND = notebooks.runtime()
config = default.get_config()  # what `make train` runs: 250 steps on CPU
if SMOKE:
  config.train.num_steps, config.train.warmup_steps = 4, 2
  config.train.eval_every = config.train.checkpoint_every = 2
  config.train.log_every, config.train.eval_batches = 1, 1
  config.data.sequence_length, config.model.num_layers = 64, 1
elif BACKEND in ('tpu', 'gpu'):  # an accelerator: a longer run
  config.train.num_steps, config.train.eval_every = 2000, 250
  config.train.checkpoint_every = 250
WORKDIR = os.environ.get('NOTEBOOK_OUTPUT') or tempfile.mkdtemp()
WORKDIR = os.path.join(WORKDIR, 'train_and_decode')
print(f'{config.train.num_steps} steps of {config.train.batch_size} x '
      f'{config.data.sequence_length} bytes, workdir {WORKDIR}')

# %% [markdown]
# ## Train
#
# `train_and_evaluate` validates the config, trains with optax, evaluates
# and checkpoints with orbax (atomically: an interrupted run resumes where
# it stopped; running this cell again on the same workdir reports the
# finished run and returns). The model: `config.model` (here exact
# blockwise attention, RoPE, 4 layers of width 128).

# %%
final = train.train_and_evaluate(config, WORKDIR)
print({k: round(v, 3) for k, v in final.items() if isinstance(v, float)})

# %%
rows = reporting.read_metrics(WORKDIR)
figure, axis = plt.subplots(figsize=(7, 4))
for key, label in (('train_bpb', 'train'), ('eval_bpb', 'validation')):
  points = [(row['step'], row[key]) for row in rows if key in row]
  axis.plot(*zip(*points), marker='.' if key == 'eval_bpb' else None,
            label=label)
axis.set_xlabel('step')
axis.set_ylabel('bits per byte')
axis.legend()
figure.tight_layout()
notebooks.save(figure, 'curves.png')

# %% [markdown]
# ## Generate
#
# The trained parameters, restored from the last checkpoint, merged into
# the model; `models.generate` decodes through the model's decoding cache
# (one compiled step per token), greedily and then sampled. After the 250
# CPU steps of `make train` (about 2.3 bits per byte) the model has the
# look of Python but greedy decoding repeats itself (`self, self, ...`);
# sampling varies it, and a longer run (an accelerator's 2,000 steps) does
# better.

# %%
state = train.trained_state(config, WORKDIR)  # the finished run's state
graphdef, _ = train.initial_state(config, train.make_optimizer(config))
model = nnx.merge(graphdef, state['params'], state['rest'])
prompt = jnp.asarray([list(b'def __init__(self')], jnp.int32)
for title, sampling in (('greedy', {}),
                        ('sampled', dict(temperature=0.8, top_p=0.95,
                                         rng=jax.random.key(0)))):
  tokens, lengths = models.generate(model, prompt, max_new_tokens=120,
                                    **sampling)
  text = bytes(tokens[0, :int(lengths[0])].tolist())
  print(f'--- {title}\n{text.decode("utf-8", "replace")}')

# %% [markdown]
# ## What decoding costs: a KV cache against recurrent states
#
# Exact attention keeps every past key and value: its cache grows with
# the length decoded, and each step reads all of it. Linear attention and
# Infini-attention keep a fixed-size state instead. The same model shape
# with each mechanism (untrained: cost does not depend on the weights):
# the cache's size for a given maximum length, and the time of one
# decoding step once the cache is nearly full (a prompt fills it first, in
# one parallel call).

# %%
LENGTHS = [256, 1024] if SMOKE else [1024, 4096, 16384]
sizes, step_ms = {}, {}
for mechanism in ('blockwise', 'linear', 'infini'):
  shape = models.TransformerConfig(
      vocab_size=256, model_dim=128, num_layers=2, num_heads=4,
      num_kv_heads=2, mlp_dim=256, max_length=max(LENGTHS),
      attention=mechanism)
  lm = models.DecoderLM(shape, rngs=nnx.Rngs(0))
  step = nnx.jit(lambda lm, cache, x: lm.decode(cache, x))
  for length in LENGTHS:
    cache = lm.init_cache(1, length)
    sizes[mechanism, length] = sum(x.nbytes for x in jax.tree.leaves(cache))
    prompt = jnp.ones((1, length - 8), jnp.int32)
    _, cache = step(lm, cache, prompt)  # the prompt: all but 8 positions
    token = jnp.zeros((1, 1), jnp.int32)
    _, cache = step(lm, cache, token)  # compile the one-token step
    jax.block_until_ready(cache)
    start = time.perf_counter()
    for _ in range(5):
      _, cache = step(lm, cache, token)
    jax.block_until_ready(cache)
    step_ms[mechanism, length] = (time.perf_counter() - start) / 5 * 1e3

print(f'{"mechanism":10s} {"max length":>10s} {"cache":>10s} {"step":>9s}')
for (mechanism, length), size in sizes.items():
  print(f'{mechanism:10s} {length:10d} {size / 2**20:8.2f} MB '
        f'{step_ms[mechanism, length]:7.2f} ms')
