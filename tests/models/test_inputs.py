"""Model inputs that would turn into NaN or wrong tokens raise instead."""

import dataclasses

from flax import nnx
import jax.numpy as jnp
import numpy as np
import pytest

from efficient_attention import models
# Plain attention: the checks run before it, and it is cheap to run eagerly.
BASE = models.TransformerConfig(vocab_size=50, model_dim=16, num_layers=1,
                                num_heads=2, mlp_dim=32, max_length=8,
                                position='learned', attention='dot_product')


def model(**changes):
  return models.DecoderLM(dataclasses.replace(BASE, **changes),
                          rngs=nnx.Rngs(0))


def tokens(T, B=2):
  return jnp.asarray(np.random.default_rng(0).integers(0, 50, (B, T)),
                     jnp.int32)


def test_positions_past_the_learned_table_raise():
  lm = model()
  assert np.isfinite(nnx.jit(lambda lm, x: lm(x))(lm, tokens(8))).all()
  with pytest.raises(ValueError, match=r'positions must lie in \[0, '
                     r'max_length=8\), got 4 outside it \(from 8 to 11\)'):
    lm(tokens(12))
  cache = lm.init_cache(2, 8)
  _, cache = nnx.jit(lambda lm, c, x: lm.decode(c, x))(lm, cache, tokens(6))
  # Positions 6, 7, 8: the cache (no larger than the table) is full first.
  with pytest.raises(ValueError, match='decoding cache holds max_length=8'):
    lm.decode(cache, tokens(3))


@pytest.mark.parametrize('bad', [50, -1, 1000])
def test_token_ids_outside_the_vocabulary_raise(bad):
  lm = model(position='rope')
  x = tokens(6).at[1, 3].set(bad)
  with pytest.raises(ValueError, match=r'token ids must lie in \[0, '
                     r'vocab_size=50\), got 1 outside it'):
    lm(x)
  with pytest.raises(ValueError, match='token ids must lie in'):
    lm.decode(lm.init_cache(2, 8), x)
  encoder = models.Encoder(dataclasses.replace(BASE, position='rope'),
                           rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match='token ids must lie in'):
    encoder(x)


def test_under_jit_bad_ids_and_positions_give_nan_in_their_row():
  """Values are unknown while tracing: documented NaN, never a wrapped row
  (jnp.take would read token -1 as the last row of the table)."""
  forward = nnx.jit(lambda m, x: m(x))
  lm = model(position='rope')
  for bad in (-1, 50):
    logits = forward(lm, tokens(6).at[0, 3].set(bad))
    assert np.isnan(logits[0, 3]).all()  # the bad token's row is NaN
    assert np.isfinite(logits[1]).all()  # other rows are untouched
  logits = forward(model(), tokens(10))  # learned table of 8 positions
  assert np.isnan(logits[:, 8:]).all()


@pytest.mark.parametrize('kwargs,message', [
    (dict(prompt_lengths=[0, 3]), r'prompt_lengths must lie in \[1, P=4\]'),
    (dict(prompt_lengths=[-1, 3]), 'prompt_lengths must lie in'),
    (dict(prompt_lengths=[5, 3]), r'got \[5, 3\]'),
    (dict(prompt_lengths=[2]), r'prompt_lengths must be int \[B\] = \(2,\)'),
    (dict(top_p=0.0), r'top_p must be None or a number in \(0, 1\]'),
    (dict(top_p=-0.5), 'top_p must be'),
    (dict(top_p=1.5), 'top_p must be'),
    (dict(top_k=0), r'top_k must be None or an int in \[1, vocab size 50\]'),
    (dict(top_k=51), 'top_k must be'),
    (dict(top_k=2.0), 'top_k must be'),
    (dict(temperature=-1.0), 'temperature must be a number >= 0'),
    (dict(temperature=1.0), 'give an rng'),
    (dict(max_new_tokens=-2), 'max_new_tokens must be an int >= 0, got -2'),
    (dict(max_new_tokens=2.5), 'max_new_tokens must be an int'),
    (dict(max_length=5), r'max_length=5 \(the cache\) must be an int of at '
     'least the prompt length 4 \\+ max_new_tokens 3'),
    (dict(eos_id=50), 'eos_id must be None or a token id'),
], ids=lambda x: '-'.join(f'{k}={v}' for k, v in x.items())
                   if isinstance(x, dict) else None)
def test_generate_rejects_bad_arguments_by_name(kwargs, message):
  lm = model(position='rope')
  kwargs = {'max_new_tokens': 3, **kwargs}
  with pytest.raises(ValueError, match=message):
    models.generate(lm, tokens(4), **kwargs)


def test_generate_rejects_empty_prompts_and_bad_tokens_but_not_padding():
  lm = model(position='rope')
  with pytest.raises(ValueError, match=r'prompts must be int \[B, P\] with '
                     r'B, P >= 1, got shape \(2, 0\)'):
    models.generate(lm, jnp.zeros((2, 0), jnp.int32), max_new_tokens=3)
  with pytest.raises(ValueError, match=r'prompt tokens must lie in \[0, '
                     r'vocab_size=50\)'):
    models.generate(lm, tokens(4).at[0, 1].set(77), max_new_tokens=3)
  # Past each row's length the prompt is padding: anything may be there.
  lengths = jnp.array([2, 4])
  out, _ = models.generate(lm, tokens(4), lengths, max_new_tokens=3)
  junk, _ = models.generate(lm, tokens(4).at[0, 2:].set(-7), lengths,
                            max_new_tokens=3)
  np.testing.assert_array_equal(out, junk)
  assert (out >= 0).all() and (out < 50).all()
  assert out.shape == (2, 7)


def test_a_full_cache_raises_before_decoding_and_flags_rows_under_jit():
  """It used to return NaN logits silently."""
  lm = model(position='rope')
  cache = lm.init_cache(2, 8)
  _, cache = lm.decode(cache, tokens(6), num_new=jnp.array([6, 2]))
  assert not models.cache_overflow(cache).any()
  with pytest.raises(ValueError, match=r'max_length=8 .* rows to \[9, 5\]'):
    lm.decode(cache, tokens(3))
  decode = nnx.jit(lambda m, c, x: m.decode(c, x))
  logits, cache = decode(lm, cache, tokens(3))  # traced: no error, a flag
  np.testing.assert_array_equal(models.cache_overflow(cache), [True, False])
  assert np.isnan(logits[0]).all() and np.isfinite(logits[1]).all()
