"""Linear attention against its float64 definition, in all three forms."""

import functools

from flax import linen
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from efficient_attention import attention
from efficient_attention.attention.kernelized import linear
from tests.attention.kernelized import feature_oracle

CASES = [  # (name, T, S, N, K, is_causal, kv_len, q_len)
    ('mha', 37, 37, 4, 4, False, None, None),
    ('causal_gqa', 37, 37, 4, 2, True, None, None),
    ('cross_mqa', 24, 53, 4, 1, False, (50, 20), None),
    ('causal_short_keys', 40, 29, 2, 1, True, None, None),
    ('causal_long_keys', 29, 40, 2, 2, True, None, None),
    ('lengths', 37, 37, 4, 2, True, (30, 11), (37, 20)),
    ('no_keys', 9, 9, 2, 1, True, (9, 0), None),
]
FEATURE_MAPS = {
    'elu_plus_one': feature_oracle.elu_plus_one,
    'relu': lambda x: np.maximum(x, 0.0),
    # A user function with F = 2H features.
    'custom': lambda x: np.concatenate([np.maximum(x, 0), np.maximum(-x, 0)],
                                       -1) + 0.1,
}
CUSTOM = lambda x: jnp.concatenate([jax.nn.relu(x), jax.nn.relu(-x)], -1) + 0.1


def qkv(B=2, T=37, S=37, N=4, K=2, H=8, dtype=jnp.float32, seed=0):
  rng = np.random.default_rng(seed)
  q = rng.standard_normal((B, T, N, H))
  k = rng.standard_normal((B, S, K, H))
  v = rng.standard_normal((B, S, K, H))
  return tuple(jnp.asarray(x, dtype) for x in (q, k, v))


def oracle(q, k, v, feature_map='elu_plus_one', scale=1.0, **kwargs):
  phi = FEATURE_MAPS[feature_map]
  q64, k64 = (np.asarray(x, np.float64) for x in (q, k))
  return feature_oracle.attention(phi(q64 * scale), phi(k64), v, eps=1e-6,
                                  **kwargs)


@pytest.mark.parametrize('chunk_size', [1, 5, 16, 64])
@pytest.mark.parametrize('case', CASES, ids=lambda c: c[0])
def test_matches_float64_definition(case, chunk_size):
  _, T, S, N, K, causal, kv_len, q_len = case
  q, k, v = qkv(T=T, S=S, N=N, K=K)
  lengths = lambda x: None if x is None else jnp.array(x)
  got = jax.jit(functools.partial(
      attention.linear_attention, is_causal=causal, chunk_size=chunk_size,
      key_value_seq_lengths=lengths(kv_len), query_seq_lengths=lengths(q_len)
  ))(q, k, v)
  want = oracle(q, k, v, is_causal=causal, kv_len=kv_len, q_len=q_len)
  np.testing.assert_allclose(got, want, atol=2e-6, rtol=2e-5)


@pytest.mark.parametrize('feature_map', ['relu', 'custom'])
def test_feature_maps_and_scale(feature_map):
  q, k, v = qkv()
  fn = CUSTOM if feature_map == 'custom' else feature_map
  for causal in (False, True):
    got = attention.linear_attention(q, k, v, feature_map=fn, scale=0.5,
                                     is_causal=causal, chunk_size=8)
    want = oracle(q, k, v, feature_map, scale=0.5, is_causal=causal)
    np.testing.assert_allclose(got, want, atol=2e-6, rtol=2e-5)


def test_parallel_equals_chunked_equals_recurrent():
  q, k, v = qkv(T=40, S=40)
  parallel = attention.linear_attention(q, k, v, is_causal=True,
                                        chunk_size=40)
  chunked = attention.linear_attention(q, k, v, is_causal=True, chunk_size=6)
  np.testing.assert_allclose(chunked, parallel, atol=1e-6, rtol=1e-5)
  state = linear.init_state(2, 2, 8)
  step = jax.jit(linear.step)
  outs = []
  for t in range(40):
    out, state = step(state, q[:, t:t + 1], k[:, t:t + 1], v[:, t:t + 1])
    outs.append(out)
  np.testing.assert_allclose(jnp.concatenate(outs, 1), parallel, atol=1e-6,
                             rtol=1e-5)
  # A prompt of 23 tokens (17 real in row 1), in chunks, then one token.
  state = linear.init_state(2, 2, 8)
  out, state = linear.step(state, q[:, :23], k[:, :23], v[:, :23],
                           num_new=jnp.array([23, 17]), chunk_size=5)
  np.testing.assert_allclose(out[0], parallel[0, :23], atol=1e-6, rtol=1e-5)
  np.testing.assert_allclose(out[1, :17], parallel[1, :17], atol=1e-6,
                             rtol=1e-5)
  out, _ = linear.step(state, q[:, 23:24], k[:, 23:24], v[:, 23:24])
  np.testing.assert_allclose(out[0, 0], parallel[0, 23], atol=1e-6,
                             rtol=1e-5)
  row1 = attention.linear_attention(
      jnp.concatenate([q[1:, :17], q[1:, 23:24]], 1),
      jnp.concatenate([k[1:, :17], k[1:, 23:24]], 1),
      jnp.concatenate([v[1:, :17], v[1:, 23:24]], 1), is_causal=True)
  np.testing.assert_allclose(out[1, 0], row1[0, 17], atol=1e-6, rtol=1e-5)


def test_decoding_state_does_not_grow():
  state = linear.init_state(3, 2, 8, max_length=10**6)
  assert state.kv.shape == (3, 2, 8, 8)
  assert linear.init_state(3, 2, 8, feature_map=CUSTOM).kv.shape == (
      3, 2, 16, 8)


@pytest.mark.parametrize('chunk_size', [4, 7])
def test_future_tokens_do_not_move_earlier_outputs(chunk_size):
  q, k, v = qkv(T=30, S=30)
  fn = jax.jit(functools.partial(attention.linear_attention, is_causal=True,
                                 chunk_size=chunk_size))
  base = fn(q, k, v)
  for t0 in (1, 9, 17):
    noise = qkv(T=30, S=30, seed=t0)
    moved = fn(*(x.at[:, t0:].set(10 * n[:, t0:]) for x, n in
                 zip((q, k, v), noise)))
    np.testing.assert_array_equal(moved[:, :t0], base[:, :t0])
    assert not np.allclose(moved[:, t0:], base[:, t0:])


@pytest.mark.parametrize('is_causal', [False, True])
def test_padded_keys_leave_numerator_and_denominator(is_causal):
  q, k, v = qkv(T=20, S=20)
  lengths = jnp.array([20, 12])
  fn = functools.partial(attention.linear_attention, is_causal=is_causal,
                         key_value_seq_lengths=lengths, chunk_size=6)
  base = fn(q, k, v)
  junk_k, junk_v = k.at[1, 12:].set(1e3), v.at[1, 12:].set(1e3)
  np.testing.assert_array_equal(fn(q, junk_k, junk_v), base)
  # Row 1 equals attention over its 12 real keys alone.
  short = attention.linear_attention(q[1:], k[1:, :12], v[1:, :12])
  if not is_causal:
    np.testing.assert_allclose(base[1], short[0], atol=1e-6, rtol=1e-5)


def test_bfloat16_stays_finite_and_close():
  q, k, v = qkv(T=64, S=64)
  linear = jax.jit(attention.linear_attention, static_argnames='is_causal')
  for causal in (False, True):
    want = linear(q, k, v, is_causal=causal)
    got = linear(*(x.astype(jnp.bfloat16) for x in (q, k, v)),
                 is_causal=causal)
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(got.astype(jnp.float32), want, atol=3e-2,
                               rtol=3e-2)
    grads = jax.jit(jax.grad(lambda q: attention.linear_attention(
        q, k.astype(jnp.bfloat16), v.astype(jnp.bfloat16),
        is_causal=causal).astype(jnp.float32).sum()))(
            q.astype(jnp.bfloat16))
    assert jnp.all(jnp.isfinite(grads.astype(jnp.float32)))


def test_row_without_keys_is_zero_with_finite_gradient():
  q, k, v = qkv(T=9, S=9)
  lengths = jnp.array([9, 0])
  loss = lambda q, k, v: attention.linear_attention(
      q, k, v, feature_map='identity', eps=0.0,
      key_value_seq_lengths=lengths, is_causal=True).sum()
  out = attention.linear_attention(q, k, v, feature_map='identity', eps=0.0,
                                   key_value_seq_lengths=lengths)
  np.testing.assert_array_equal(out[1], 0.0)
  for g in jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v):
    assert jnp.all(jnp.isfinite(g))


@pytest.mark.parametrize('kwargs,message', [
    (dict(bias=jnp.zeros((1, 1, 5, 5))), 'does not support bias'),
    (dict(mask=jnp.ones((5, 5), bool)), 'does not support mask'),
    (dict(local_window_size=3), 'does not support local_window_size'),
    (dict(alibi_slopes=jnp.ones(4)), 'does not support alibi_slopes'),
    (dict(logits_soft_cap=5.0), 'does not support logits_soft_cap'),
    (dict(feature_map='softmax'), 'feature_map must be one of'),
    (dict(chunk_size=0), 'chunk_size must be a positive int'),
    (dict(eps=-1.0), 'eps must be a non-negative'),
])
def test_bad_options_are_named(kwargs, message):
  q, k, v = qkv(T=5, S=5)
  with pytest.raises(ValueError, match=message):
    attention.linear_attention(q, k, v, **kwargs)


def _dense_linear(query, key, value, mask=None, **unused):
  """Linear attention as a masked quadratic form, for the Flax slot."""
  del unused
  phi_q, phi_k = jax.nn.elu(query) + 1, jax.nn.elu(key) + 1
  a = jnp.einsum('BTNF,BSNF->BNTS', phi_q, phi_k)
  if mask is not None:
    a = jnp.where(mask, a, 0.0)
  out = jnp.einsum('BNTS,BSNH->BTNH', a, value)
  return out / (a.sum(-1).transpose(0, 2, 1)[..., None] + 1e-6)


def test_fits_the_flax_attention_fn_slots():
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 11, 16)),
                  jnp.float32)
  ours = functools.partial(attention.linear_attention, chunk_size=4)
  kwargs = dict(num_heads=2, qkv_features=16)
  params = linen.MultiHeadDotProductAttention(**kwargs).init(
      jax.random.key(0), x)
  got = linen.MultiHeadDotProductAttention(attention_fn=ours, **kwargs).apply(
      params, x)
  want = linen.MultiHeadDotProductAttention(
      attention_fn=_dense_linear, **kwargs).apply(params, x)
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
  make = lambda fn: nnx.MultiHeadAttention(
      num_heads=2, in_features=16, decode=False, attention_fn=fn,
      rngs=nnx.Rngs(0))
  causal = nnx.make_causal_mask(jnp.ones((2, 11)))
  np.testing.assert_allclose(make(ours)(x, is_causal=True),
                             make(_dense_linear)(x, mask=causal), atol=1e-5,
                             rtol=1e-5)
  with pytest.raises(ValueError, match='does not support mask'):
    make(ours)(x, mask=causal)
