"""Autoregressive generation with the decoding cache, compiled once.

`generate` prefills each row's prompt into the cache in one `decode` call,
then samples one token per step inside a `lax.while_loop` (greedy,
temperature, top-k, top-p), until every row has produced `eos_id` or
`max_new_tokens`. It is one `jax.jit` for given shapes and sampling
settings: repeated calls with the same shapes do not trace again.
"""

from __future__ import annotations

import functools

from flax import nnx
import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

from efficient_attention.models.transformer import check_range
from efficient_attention.models.transformer import concrete

TRACES = {'count': 0}  # Incremented on each trace of the compiled loop.


def sample(logits_BV: jax.Array, rng: jax.Array | None, *,
           temperature: float = 0.0, top_k: int | None = None,
           top_p: float | None = None) -> jax.Array:
  """One token per row from float32 logits `[B, V]` -> int32 `[B]`.

  temperature 0 is greedy; top_k keeps the k largest logits; top_p keeps
  the smallest set of largest-probability tokens whose mass reaches p.
  """
  check_sampling(logits_BV.shape[-1], temperature=temperature, top_k=top_k,
                 top_p=top_p)
  if temperature == 0.0:
    return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
  logits_BV = logits_BV.astype(jnp.float32) / temperature
  if top_k is not None:
    kth = lax.top_k(logits_BV, top_k)[0][:, -1:]
    logits_BV = jnp.where(logits_BV < kth, -jnp.inf, logits_BV)
  if top_p is not None:
    sorted_BV = jnp.sort(logits_BV, axis=-1)[:, ::-1]
    probs = jax.nn.softmax(sorted_BV, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    kept = jnp.where(mass_before < top_p, sorted_BV, jnp.inf)
    threshold = jnp.min(kept, axis=-1, keepdims=True)
    logits_BV = jnp.where(logits_BV < threshold, -jnp.inf, logits_BV)
  return jax.random.categorical(rng, logits_BV).astype(jnp.int32)


def _is_int(x) -> bool:
  return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def check_sampling(vocab_size: int, *, temperature, top_k, top_p):
  """Raises ValueError for sampling settings that cannot be honoured."""
  if not (isinstance(temperature, (int, float)) and
          0 <= temperature < float('inf')):
    raise ValueError(f'temperature must be a number >= 0 (0: greedy), got '
                     f'{temperature!r}')
  if top_k is not None and not (_is_int(top_k) and 1 <= top_k <= vocab_size):
    raise ValueError(f'top_k must be None or an int in [1, vocab size '
                     f'{vocab_size}], got {top_k!r}')
  if top_p is not None and not (isinstance(top_p, (int, float)) and
                                0 < top_p <= 1):
    raise ValueError(f'top_p must be None or a number in (0, 1], got '
                     f'{top_p!r} (top_p <= 0 would keep no token)')


def _write_at(buffer_BT, token_B, index_B):
  return jax.vmap(lambda row, t, i: lax.dynamic_update_slice(
      row, t[None], (i,)))(buffer_BT, token_B, index_B)


@functools.partial(jax.jit, static_argnames=(
    'graphdef', 'max_new_tokens', 'max_length', 'temperature', 'top_k',
    'top_p', 'eos_id'))
def _generate(graphdef, state, prompts, prompt_lengths, rng, *,
              max_new_tokens, max_length, temperature, top_k, top_p, eos_id):
  TRACES['count'] += 1
  model = nnx.merge(graphdef, state)
  B, P = prompts.shape
  cache = model.init_cache(B, max_length)
  logits, cache = model.decode(cache, prompts, num_new=prompt_lengths)
  last = jnp.take_along_axis(logits, (prompt_lengths - 1)[:, None, None],
                             axis=1)[:, 0]
  tokens = jnp.pad(prompts, ((0, 0), (0, max_new_tokens)))
  tokens = jnp.where(jnp.arange(P + max_new_tokens)[None, :] <
                     prompt_lengths[:, None], tokens, 0)

  def cond(carry):
    i, _, _, _, done, _, _ = carry
    return (i < max_new_tokens) & ~jnp.all(done)

  def body(carry):
    i, tokens, cache, last, done, count, rng = carry
    rng, key = jax.random.split(rng)
    token = sample(last, key, temperature=temperature, top_k=top_k,
                   top_p=top_p)
    token = jnp.where(done, 0, token)
    tokens = jnp.where(done[:, None], tokens,
                       _write_at(tokens, token, prompt_lengths + i))
    count = count + (~done).astype(jnp.int32)
    if eos_id is not None:
      done = done | (token == eos_id)
    logits, cache = model.decode(cache, token[:, None])
    return i + 1, tokens, cache, logits[:, 0], done, count, rng

  init = (jnp.int32(0), tokens, cache, last, jnp.zeros((B,), bool),
          jnp.zeros((B,), jnp.int32), rng)
  _, tokens, _, _, _, count, _ = lax.while_loop(cond, body, init)
  return tokens, prompt_lengths + count


def _checked(model, prompts, prompt_lengths, *, max_new_tokens, rng,
             temperature, top_k, top_p, eos_id, max_length):
  """`generate`'s arguments checked: `(prompts with the padding zeroed,
  int32 prompt_lengths, max_length)`; a ValueError names a bad one."""
  prompts = jnp.asarray(prompts, jnp.int32)
  if prompts.ndim != 2 or 0 in prompts.shape:
    raise ValueError('prompts must be int [B, P] with B, P >= 1, got shape '
                     f'{prompts.shape}')
  B, P = prompts.shape
  if not (_is_int(max_new_tokens) and max_new_tokens >= 0):
    raise ValueError(f'max_new_tokens must be an int >= 0, got '
                     f'{max_new_tokens!r}')
  if max_length is None:
    max_length = P + max_new_tokens
  if not _is_int(max_length) or P + max_new_tokens > max_length:
    raise ValueError(f'max_length={max_length!r} (the cache) must be an int '
                     f'of at least the prompt length {P} + max_new_tokens '
                     f'{max_new_tokens}')
  vocab_size = getattr(getattr(model, 'config', None), 'vocab_size', None)
  check_sampling(vocab_size or 2**31 - 1, temperature=temperature,
                 top_k=top_k, top_p=top_p)
  if temperature > 0 and rng is None:
    raise ValueError('temperature > 0 samples: give an rng')
  if eos_id is not None and not (_is_int(eos_id) and 0 <= eos_id < (
      vocab_size or 2**31 - 1)):
    raise ValueError(f'eos_id must be None or a token id, got {eos_id!r}')
  if prompt_lengths is None:
    prompt_lengths = jnp.full((B,), P, jnp.int32)
  prompt_lengths = jnp.asarray(prompt_lengths)
  if prompt_lengths.shape != (B,) or not jnp.issubdtype(
      prompt_lengths.dtype, jnp.integer):
    raise ValueError(f'prompt_lengths must be int [B] = ({B},), got '
                     f'{prompt_lengths.dtype} {prompt_lengths.shape}')
  lengths = concrete(prompt_lengths)
  if lengths is not None and ((lengths < 1) | (lengths > P)).any():
    raise ValueError(f'prompt_lengths must lie in [1, P={P}] (each prompt '
                     f'has a token to continue), got {lengths.tolist()}')
  prompt_lengths = prompt_lengths.astype(jnp.int32)
  real = jnp.arange(P)[None, :] < prompt_lengths[:, None]
  tokens = concrete(prompts)
  if vocab_size is not None and tokens is not None and lengths is not None:
    check_range('prompt tokens', tokens[np.asarray(real)], vocab_size,
                'vocab_size')
  prompts = jnp.where(real, prompts, 0)  # padding never reaches the model
  return prompts, prompt_lengths, max_length


def generate(model: nnx.Module, prompts: jax.typing.ArrayLike,
             prompt_lengths: jax.typing.ArrayLike | None = None, *,
             max_new_tokens: int, rng: jax.Array | None = None,
             temperature: float = 0.0, top_k: int | None = None,
             top_p: float | None = None, eos_id: int | None = None,
             max_length: int | None = None) -> tuple[jax.Array, jax.Array]:
  """Continues each prompt with up to `max_new_tokens` sampled tokens.

  Args:
    model: a `DecoderLM` (anything with `init_cache` and `decode`).
    prompts: int `[B, P]`, right-padded.
    prompt_lengths: optional int `[B]` (default P), each in `[1, P]`.
    max_new_tokens: tokens to generate at most (an int >= 0).
    rng: PRNG key for sampling (needed unless temperature is 0).
    temperature, top_k, top_p: sampling; temperature 0 is greedy, top_k in
      `[1, vocab_size]`, top_p in `(0, 1]`.
    eos_id: a row stops after producing this token.
    max_length: cache size (default `P + max_new_tokens`).

  Returns:
    `(tokens [B, P + max_new_tokens], lengths [B])`: each row's prompt
    followed by its generated tokens, zero after `lengths[b]`.

  Raises:
    ValueError: naming the argument, for an empty prompt, prompt lengths
      outside `[1, P]`, prompt tokens outside the vocabulary (padding past
      a row's length may hold anything), or settings above out of range.
  """
  prompts, prompt_lengths, max_length = _checked(
      model, prompts, prompt_lengths, max_new_tokens=max_new_tokens,
      rng=rng, temperature=temperature, top_k=top_k, top_p=top_p,
      eos_id=eos_id, max_length=max_length)
  rng = jax.random.key(0) if rng is None else rng
  graphdef, state = nnx.split(model)
  return _generate(graphdef, state, prompts, prompt_lengths, rng,
                   max_new_tokens=max_new_tokens, max_length=max_length,
                   temperature=float(temperature), top_k=top_k, top_p=top_p,
                   eos_id=eos_id)
