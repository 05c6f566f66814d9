"""Score modifiers: each against its definition, through the blockwise
kernel (outputs, and gradients of inputs and of the score's parameters)
against autodiff of the dense reference."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from efficient_attention import attention
from efficient_attention.attention import masks
from efficient_attention.attention import positional
from efficient_attention.attention import scores

B, T, S, N, K, H = 2, 29, 37, 4, 2, 16


def inputs(dtype=jnp.float32):
  keys = jax.random.split(jax.random.key(0), 3)
  return [jax.random.normal(key, shape, dtype) for key, shape in zip(
      keys, [(B, T, N, H), (B, S, K, H), (B, S, K, H)])]


def t5_bucket_numpy(relative, num_buckets, max_distance, bidirectional):
  """Mesh TensorFlow's `_relative_position_bucket`, in NumPy."""
  ret, n = np.zeros_like(relative), -relative
  if bidirectional:
    num_buckets //= 2
    ret += (n < 0) * num_buckets
    n = np.abs(n)
  else:
    n = np.maximum(n, 0)
  max_exact = num_buckets // 2
  with np.errstate(divide='ignore', invalid='ignore'):
    large = max_exact + (np.log(n / max_exact) / np.log(
        max_distance / max_exact) * (num_buckets - max_exact)).astype(int)
  large = np.minimum(large, num_buckets - 1)
  return ret + np.where(n < max_exact, n, large)


@pytest.mark.parametrize('bidirectional', [True, False])
def test_t5_buckets_are_mesh_tensorflows(bidirectional):
  relative = np.arange(-300, 301)
  np.testing.assert_array_equal(
      scores.t5_bucket(jnp.asarray(relative), 32, 128, bidirectional),
      t5_bucket_numpy(relative, 32, 128, bidirectional))


SCORES = {
    'soft_cap': lambda: scores.soft_cap(2.0),
    'alibi': lambda: scores.alibi(positional.alibi_slopes(N)),
    't5': lambda: scores.t5_buckets(jax.random.normal(
        jax.random.key(5), (16, N)), max_distance=20),
    'self_logit': lambda: scores.self_logit(-3.0),
    'custom': lambda: scores.custom(
        lambda x, b, h, q, k, p: x + p['w'][h] * jnp.cos(q - k),
        {'w': jnp.linspace(-1.0, 1.0, N)}),
    'chain': lambda: scores.chain(scores.soft_cap(3.0), scores.alibi(
        jnp.full((N,), 0.3))),
}


def definition(name, logits, q, k):
  """Each score's effect on float32 logits `[B, N, T, S]`, by hand."""
  head = np.arange(N)[None, :, None, None]
  q, k = q[:, None, :, None], k[None, None, None, :]
  if name == 'soft_cap':
    return 2.0 * np.tanh(logits / 2.0)
  if name == 'alibi':
    return logits - np.asarray(positional.alibi_slopes(N))[head] * abs(q - k)
  if name == 't5':
    table = np.asarray(SCORES['t5']().table)
    return logits + table[t5_bucket_numpy(k - q, 16, 20, True), head]
  if name == 'self_logit':
    return logits - 3.0 * (q == k)
  if name == 'custom':
    return logits + np.linspace(-1.0, 1.0, N)[head] * np.cos(q - k)
  return 3.0 * np.tanh(logits / 3.0) - 0.3 * abs(q - k)


@pytest.mark.parametrize('name', sorted(SCORES))
def test_each_score_is_its_definition(name):
  logits = np.random.default_rng(0).normal(size=(B, N, T, S)) * 3
  q = np.arange(T)[None, :] + np.array([[0], [5]])  # a query offset per row
  got = SCORES[name]()(jnp.asarray(logits, jnp.float32),
                       jnp.arange(B)[:, None, None, None],
                       jnp.arange(N)[None, :, None, None],
                       jnp.asarray(q)[:, None, :, None],
                       jnp.arange(S)[None, None, None, :])
  np.testing.assert_allclose(got, definition(name, logits, q, np.arange(S)),
                             atol=1e-5, rtol=1e-5)


def loss_and_grads(fn, score, dtype):
  weights = jax.random.normal(jax.random.key(9), (B, T, N, H))
  def loss(q, k, v, score):
    out = fn(q, k, v, score=score).astype(jnp.float32)
    return jnp.sum(out * weights)
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)))(
      *inputs(dtype), score)


# soft_cap and alibi run through the kernel inside 'chain'.
@pytest.mark.parametrize('name', ['chain', 'custom', 'self_logit', 't5'])
def test_blockwise_gradients_reach_the_scores_parameters(name):
  """Outputs and gradients (inputs and the score's parameters) through the
  custom VJP equal autodiff of the dense reference; causal from an offset,
  chunks that divide nothing."""
  options = dict(is_causal=True, query_offset=jnp.array([3, 8]),
                 mask=masks.sliding_window(12))
  got = loss_and_grads(functools.partial(
      attention.blockwise_attention, query_chunk_size=8, key_chunk_size=5,
      **options), SCORES[name](), jnp.float32)
  want = loss_and_grads(functools.partial(
      attention.dot_product_attention, **options), SCORES[name](),
                        jnp.float32)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, atol=2e-4, rtol=2e-4)


def test_bfloat16_inputs_keep_float32_scores():
  """bfloat16 inputs: logits, the score and its table gradient in float32;
  within bfloat16's error of the reference given the same inputs."""
  score = SCORES['t5']()
  _, got = loss_and_grads(attention.blockwise_attention, score, jnp.bfloat16)
  _, want = loss_and_grads(attention.dot_product_attention, score,
                           jnp.bfloat16)
  assert got[3].table.dtype == jnp.float32
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    assert np.abs(a - b).max() <= 0.02 * np.abs(b).max()


def test_the_old_keywords_are_the_scores():
  q, k, v = inputs()
  slopes = positional.alibi_slopes(N)
  np.testing.assert_array_equal(
      attention.blockwise_attention(q, k, v, alibi_slopes=slopes,
                                    logits_soft_cap=5.0),
      attention.blockwise_attention(q, k, v, score=scores.chain(
          scores.soft_cap(5.0), scores.alibi(slopes))))


def test_bad_scores_raise_value_error():
  with pytest.raises(ValueError, match='soft_cap must be a positive number'):
    scores.soft_cap(0)
  with pytest.raises(ValueError, match=r'alibi slopes must be \[N\]'):
    scores.alibi(jnp.ones((2, 2)))
  with pytest.raises(ValueError, match='t5_buckets table must be'):
    scores.t5_buckets(jnp.ones((2, N)))
  with pytest.raises(ValueError, match='must be attention.scores objects'):
    scores.chain(lambda x: x)
