"""Models: shapes, parameter counts, causality, decoding, errors."""

import dataclasses
import functools

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from efficient_attention import attention
from efficient_attention import models
BASE = models.TransformerConfig(
    vocab_size=50, model_dim=32, num_layers=2, num_heads=4, num_kv_heads=2,
    mlp_dim=64, attention_options=(('query_chunk_size', 8),
                                   ('key_chunk_size', 4)))


def config(**changes):
  """BASE with changes; another mechanism starts from its own defaults
  (BASE's options are blockwise's)."""
  if changes.get('attention', 'blockwise') != 'blockwise':
    changes.setdefault('attention_options', ())
  return dataclasses.replace(BASE, **changes)


def param_count(model):
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def tokens(B=2, T=19, seed=0, vocab=50):
  return jnp.asarray(np.random.default_rng(seed).integers(0, vocab, (B, T)),
                     jnp.int32)


def block_params(c, cross=False):
  D, N, K, H, F = c.model_dim, c.num_heads, c.num_kv_heads, 8, c.mlp_dim
  attention_params = D * N * H + 2 * D * K * H + N * H * D
  norm = D if c.norm == 'rms' else 2 * D
  mlp = (3 if c.mlp == 'swiglu' else 2) * D * F
  return (attention_params + norm) * (2 if cross else 1) + mlp + norm


@pytest.mark.parametrize('tie', [True, False])
def test_decoder_lm_parameter_count_and_shape(tie):
  c = config(tie_embeddings=tie)
  model = models.DecoderLM(c, rngs=nnx.Rngs(0))
  V, D = c.vocab_size, c.model_dim
  expected = V * D + 2 * block_params(c) + D + (0 if tie else D * V)
  assert param_count(model) == expected
  assert jax.eval_shape(lambda: model(tokens())).shape == (2, 19, V)


def test_encoder_parameter_count_and_heads():
  c = config(norm='layer', mlp='gelu', position='learned', max_length=32)
  model = models.Encoder(c, num_classes=3, pooling='mean', rngs=nnx.Rngs(0))
  V, D = c.vocab_size, c.model_dim
  expected = (V * D + 32 * D + 2 * block_params(c) + 2 * D  # final norm
              + D * D + D + 2 * D  # MLM dense and norm
              + D * 3 + 3)  # classifier
  assert param_count(model) == expected
  x = tokens()
  lengths = jnp.array([19, 7])
  forward = nnx.jit(lambda model, x, lengths: model(x, lengths=lengths))
  hidden = forward(model, x, lengths)
  assert hidden.shape == (2, 19, D)
  assert model.mlm_logits(hidden).shape == (2, 19, V)
  assert model.classify(hidden, lengths).shape == (2, 3)
  # Padding never reaches real tokens, nor the mean-pooled class.
  padded = forward(model, x.at[1, 7:].set(0), lengths)
  np.testing.assert_allclose(padded[1, :7], hidden[1, :7], atol=1e-5)
  np.testing.assert_allclose(model.classify(padded, lengths)[1],
                             model.classify(hidden, lengths)[1], atol=1e-5)


def test_encoder_decoder_parameter_count_and_shape():
  c = config(position='sinusoidal', post_norm=True, norm='layer')
  model = models.EncoderDecoder(c, rngs=nnx.Rngs(0))
  V, D = c.vocab_size, c.model_dim
  expected = 2 * V * D + 2 * block_params(c) + 2 * block_params(c, True)
  assert param_count(model) == expected
  assert jax.eval_shape(lambda: model(tokens(), tokens(T=11))).shape == (
      2, 11, V)


def test_decoder_lm_is_causal():
  model = models.DecoderLM(config(), rngs=nnx.Rngs(0))
  forward = nnx.jit(lambda model, x: model(x))
  x = tokens()
  logits = forward(model, x)
  for t0 in (1, 8, 18):
    moved = forward(model, x.at[:, t0:].set(tokens(seed=1)[:, t0:]))
    np.testing.assert_array_equal(moved[:, :t0], logits[:, :t0])
    assert not np.allclose(moved[:, t0:], logits[:, t0:])


DECODABLE = [n for n in attention.names() if attention.get(n).decodable]
STREAMING_OPTIONS = {
    'infini': (('chunk_size', 2), ('segment_size', 4)),
    'xl': (('chunk_size', 2), ('memory_length', 3), ('segment_size', 4))}
POSITIONS = ['rope', 'alibi', 'sinusoidal', 'learned', 'none']
# ALiBi runs with a logit soft-cap here; mechanisms without logits refuse
# both (test_mechanisms_refuse_alibi_and_soft_cap_by_name).
# Positions are the model's, the same code for every mechanism: blockwise
# runs RoPE, ALiBi and a learned table by default, the others RoPE (the
# cross product, sinusoidal and none included, in the slow suite).
# The sparse patterns decode through the layer and KV cache blockwise
# uses (each one's kernel-level decoding runs in test_registry); Longformer,
# whose window decodes from a ring, represents them here by default.
SPARSE_SLOW = ('bigbird', 'sparse_transformer')
DECODING_CASES = [
    pytest.param(m, p, marks=() if (m == 'blockwise' and p in (
        'rope', 'alibi', 'learned')) or (
            p == 'rope' and m not in SPARSE_SLOW) else pytest.mark.slow)
    for m in DECODABLE for p in POSITIONS
    if p != 'alibi' or 'alibi_slopes' not in attention.get(m).refuses]


@pytest.mark.parametrize('mechanism,position', DECODING_CASES)
def test_incremental_decoding_equals_full_forward(mechanism, position):
  c = config(attention=mechanism, position=position, max_length=32,
             qk_norm=position == 'rope', logits_soft_cap=(
                 30.0 if position == 'alibi' else None))
  if mechanism != 'blockwise':
    c = dataclasses.replace(c, attention_options=())
  if mechanism == 'linear':  # Chunks of 4 tokens: several per sequence.
    c = dataclasses.replace(c, attention_options=(('chunk_size', 4),))
  if mechanism == 'performer':
    c = dataclasses.replace(c, attention_options=(('chunk_size', 4),
                                                  ('num_features', 16)))
  if mechanism in STREAMING_OPTIONS:  # Segments of 4: state updates.
    c = dataclasses.replace(c, attention_options=STREAMING_OPTIONS[mechanism])
  model = models.DecoderLM(c, rngs=nnx.Rngs(0))
  x = tokens(T=12)
  full = nnx.jit(lambda model, x: model(x))(model, x)
  # Prompts of 5 and 3 tokens (right-padded to 5), then one token a step.
  lengths = jnp.array([5, 3])
  cache = model.init_cache(2, 16)
  logits, cache = nnx.jit(lambda model, cache, x, n: model.decode(
      cache, x, num_new=n))(model, cache, x[:, :5], lengths)
  np.testing.assert_allclose(logits[0], full[0, :5], atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(logits[1, :3], full[1, :3], atol=1e-5,
                             rtol=1e-5)
  decode = nnx.jit(lambda model, cache, tokens: model.decode(cache, tokens))
  for t in range(7):
    step_tokens = jnp.stack([x[0, 5 + t], x[1, 3 + t]])[:, None]
    logits, cache = decode(model, cache, step_tokens)
    np.testing.assert_allclose(logits[0, 0], full[0, 5 + t], atol=1e-5,
                               rtol=1e-5)
    np.testing.assert_allclose(logits[1, 0], full[1, 3 + t], atol=1e-5,
                               rtol=1e-5)


def test_gqa_cache_holds_kv_heads_only():
  model = models.DecoderLM(config(num_heads=4, num_kv_heads=1),
                           rngs=nnx.Rngs(0))
  cache = model.init_cache(3, 40)
  for state in cache['layers']:
    assert state.key.shape == (3, 40, 1, 8)
    assert state.value.shape == (3, 40, 1, 8)


def test_generate_matches_greedy_forward_and_traces_once():
  model = models.DecoderLM(config(), rngs=nnx.Rngs(0))
  prompts = tokens(T=6)
  lengths = jnp.array([6, 2])
  before = models.generate.__globals__['TRACES']['count']
  out, out_lengths = models.generate(model, prompts, lengths,
                                     max_new_tokens=5)
  models.generate(model, tokens(T=6, seed=3), lengths, max_new_tokens=5)
  assert models.generate.__globals__['TRACES']['count'] == before + 1
  np.testing.assert_array_equal(out_lengths, [11, 7])
  # Greedy by full forwards: the model is causal, so a fixed 11-token buffer
  # gives the logits of every prefix (one compilation).
  forward = nnx.jit(lambda model, x: model(x))
  for b in range(2):
    seq = list(np.asarray(prompts[b, :lengths[b]]))
    for _ in range(5):
      logits = forward(model, jnp.asarray([seq + [0] * (11 - len(seq))]))
      seq.append(int(jnp.argmax(logits[0, len(seq) - 1])))
    np.testing.assert_array_equal(out[b, :out_lengths[b]], seq)


def test_generate_stops_at_eos_and_samples():
  model = models.DecoderLM(config(), rngs=nnx.Rngs(0))
  greedy, _ = models.generate(model, tokens(T=4), max_new_tokens=6)
  eos = int(greedy[0, 5])  # the second generated token of row 0
  out, lengths = models.generate(model, tokens(T=4), max_new_tokens=6,
                                 eos_id=eos)
  assert lengths[0] <= 6 and out[0, lengths[0] - 1] == eos
  np.testing.assert_array_equal(out[0, lengths[0]:], 0)
  sampled, _ = models.generate(model, tokens(T=4), max_new_tokens=6,
                               rng=jax.random.key(1), temperature=1.0,
                               top_k=5, top_p=0.9)
  assert sampled.shape == (2, 10)


def test_sampling_filters():
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
  keys = jax.random.split(jax.random.key(0), 200)
  draw = lambda **kw: {int(models.sample(logits, k, temperature=1.0, **kw)[0])
                       for k in keys}
  assert draw(top_k=2) == {0, 1}
  assert draw(top_p=0.7) == {0, 1}
  assert draw(top_p=0.9) == {0, 1, 2}
  assert draw() == {0, 1, 2, 3}


def test_bad_input_errors():
  with pytest.raises(ValueError, match='known: .*blockwise'):
    models.DecoderLM(config(attention='flash'), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match='num_heads=4 must be a multiple of '
                     'num_kv_heads=3'):
    config(num_kv_heads=3)
  with pytest.raises(ValueError, match="position must be one of"):
    config(position='xpos')
  model = models.DecoderLM(config(), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r'max_length=16 \(the cache\) must be'):
    models.generate(model, tokens(T=10), max_new_tokens=8, max_length=16)
  cache = attention.get('blockwise').init_state(2, 2, 8, max_length=16)
  q = jnp.ones((2, 1, 4, 8))
  with pytest.raises(ValueError, match='key must be'):
    attention.get('blockwise').step(cache, q, jnp.ones((2, 1, 2, 4)),
                                    jnp.ones((2, 1, 2, 4)))


def test_encoder_decoder_incremental_decoding_equals_full_forward():
  c = config(position='sinusoidal', post_norm=True, norm='layer')
  model = models.EncoderDecoder(c, rngs=nnx.Rngs(0))
  source, target = tokens(T=13), tokens(T=9, seed=2)
  source_lengths = jnp.array([13, 6])
  full = nnx.jit(lambda m: m(source, target,
                             source_lengths=source_lengths))(model)
  memory = nnx.jit(lambda m: m.encode(source,
                                      source_lengths=source_lengths))(model)
  cache = model.init_cache(2, 9)
  decode = nnx.jit(lambda model, cache, x: model.decode(
      cache, x, memory, source_lengths=source_lengths))
  logits, cache = decode(model, cache, target[:, :4])
  np.testing.assert_allclose(logits, full[:, :4], atol=1e-5, rtol=1e-5)
  for t in range(4, 9):
    logits, cache = decode(model, cache, target[:, t:t + 1])
    np.testing.assert_allclose(logits[:, 0], full[:, t], atol=1e-5,
                               rtol=1e-5)


@pytest.mark.parametrize('mechanism', [  # XL's state is the richest
    pytest.param('blockwise', marks=pytest.mark.slow),
    pytest.param('infini', marks=pytest.mark.slow), 'xl'])
def test_decoding_cache_round_trips_through_orbax(tmp_path, mechanism):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  model = models.DecoderLM(config(attention=mechanism, attention_options=(
      STREAMING_OPTIONS.get(mechanism, BASE.attention_options))),
                           rngs=nnx.Rngs(0))
  cache = model.init_cache(2, 16)
  decode = nnx.jit(lambda model, cache, x: model.decode(cache, x))
  _, cache = decode(model, cache, tokens(T=5))  # Infini, XL: a full segment
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(tmp_path / 'cache', cache)
  checkpointer.wait_until_finished()
  restored = checkpointer.restore(tmp_path / 'cache',
                                  jax.tree.map(ocp.utils.to_shape_dtype_struct,
                                               cache))
  jax.tree.map(np.testing.assert_array_equal, restored, cache)
  # Decoding goes on from the restored cache exactly as from the original.
  step = tokens(T=1, seed=4)
  np.testing.assert_array_equal(decode(model, restored, step)[0],
                                decode(model, cache, step)[0])


REFUSING = [m for m in attention.names()
            if 'alibi_slopes' in attention.get(m).refuses]


@pytest.mark.parametrize('mechanism', REFUSING)
def test_mechanisms_refuse_alibi_and_soft_cap_by_name(mechanism):
  causal = attention.get(mechanism).causal
  model = models.DecoderLM if causal else models.Encoder
  with pytest.raises(ValueError, match='does not support alibi_slopes'):
    model(config(attention=mechanism, position='alibi'), rngs=nnx.Rngs(0))
  if 'logits_soft_cap' in attention.get(mechanism).refuses:
    with pytest.raises(ValueError, match='does not support logits_soft_cap'):
      model(config(attention=mechanism, logits_soft_cap=5.0),
            rngs=nnx.Rngs(0))


WINDOWED = [m for m in DECODABLE
            if 'local_window_size' not in attention.get(m).refuses]


@pytest.mark.parametrize('mechanism', [
    pytest.param(m, marks=pytest.mark.slow) if m in SPARSE_SLOW else m
    for m in WINDOWED])
def test_cache_steps_with_a_window_equal_full_windowed_attention(mechanism):
  rng = np.random.default_rng(5)
  q = jnp.asarray(rng.standard_normal((2, 10, 4, 8)), jnp.float32)
  k, v = (jnp.asarray(rng.standard_normal((2, 10, 2, 8)), jnp.float32)
          for _ in range(2))
  m = attention.get(mechanism)
  want = jax.jit(functools.partial(m, is_causal=True,
                                   local_window_size=(3, 0)))(q, k, v)
  state = m.init_state(2, 2, 8, max_length=12)
  step = jax.jit(functools.partial(m.step, local_window_size=(3, 0)))
  for t in range(10):
    out, state = step(state, q[:, t:t + 1], k[:, t:t + 1], v[:, t:t + 1])
    np.testing.assert_allclose(out[:, 0], want[:, t], atol=1e-5, rtol=1e-5)


def test_shared_qk_layer_is_a_layer_whose_query_kernel_is_the_keys():
  shared = models.MultiHeadAttention(32, 4, shared_qk=True, qk_norm=True,
                                     attention='dot_product',
                                     rngs=nnx.Rngs(0))
  plain = models.MultiHeadAttention(32, 4, qk_norm=True,
                                    attention='dot_product', rngs=nnx.Rngs(0))
  assert shared.query is None
  assert param_count(shared) == param_count(plain) - 32 * 32 - 8
  for name in ('key', 'value', 'out', 'key_norm'):
    nnx.update(getattr(plain, name), nnx.state(getattr(shared, name)))
  plain.query.kernel[...] = shared.key.kernel[...]
  plain.query_norm.scale[...] = shared.key_norm.scale[...]
  x = jax.random.normal(jax.random.key(1), (2, 7, 32))
  np.testing.assert_allclose(shared(x, is_causal=True),
                             plain(x, is_causal=True), atol=1e-6)
  with pytest.raises(ValueError, match='self-attention only'):
    shared(x, x + 1.0)
  with pytest.raises(ValueError, match='shared_qk needs num_kv_heads'):
    config(shared_qk=True)
