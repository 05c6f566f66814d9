"""Performer FAVOR+: its own definition exactly, softmax approximately."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from efficient_attention import attention
from efficient_attention.attention.kernelized import performer
from tests.attention.kernelized import feature_oracle

H = 16


def qkv(B=2, T=37, S=37, N=4, K=2, magnitude=1.0, dtype=jnp.float32, seed=0):
  rng = np.random.default_rng(seed)
  q = rng.standard_normal((B, T, N, H)) * magnitude
  k = rng.standard_normal((B, S, K, H)) * magnitude
  v = rng.standard_normal((B, S, K, H))
  return tuple(jnp.asarray(x, dtype) for x in (q, k, v))


def oracle(q, k, v, projection, kernel='softmax', scale=H**-0.5, **kwargs):
  phi_q, _ = feature_oracle.performer_features(kernel, projection, q, scale)
  phi_k, w = feature_oracle.performer_features(kernel, projection, k, scale)
  return feature_oracle.attention(phi_q, phi_k, v, log_weight=w, **kwargs)


@pytest.mark.parametrize('kernel', performer.KERNELS)
@pytest.mark.parametrize('is_causal', [False, True])
def test_matches_float64_definition(kernel, is_causal):
  q, k, v = qkv(magnitude=0.5)
  projection = performer.draw_projection(jax.random.key(3), 32, H)
  kv_len, q_len = (30, 11), (37, 20)
  got = jax.jit(functools.partial(
      attention.performer_attention, kernel=kernel, num_features=32,
      projection=projection, is_causal=is_causal, chunk_size=5,
      key_value_seq_lengths=jnp.array(kv_len),
      query_seq_lengths=jnp.array(q_len)))(q, k, v)
  want = oracle(q, k, v, projection, kernel, is_causal=is_causal,
                kv_len=kv_len, q_len=q_len)
  tolerance = 1e-3 if kernel == 'trig' else 2e-5  # trig: near-zero sums
  np.testing.assert_allclose(got, want, atol=tolerance, rtol=tolerance)


def test_large_norms_stay_finite_and_exact():
  # exp(|k|^2 / 2) overflows float32 here; the running stabiliser does not.
  q, k, v = qkv(T=24, S=24, magnitude=6.0)
  projection = performer.draw_projection(jax.random.key(0), 64, H)
  for is_causal in (False, True):
    got = attention.performer_attention(q, k, v, projection=projection,
                                        num_features=64, is_causal=is_causal)
    assert jnp.all(jnp.isfinite(got))
    want = oracle(q, k, v, projection, is_causal=is_causal)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


def _mean_errors(is_causal, orthogonal, seeds=40):
  """Mean relative error against exact softmax for F = 16, 64, 256."""
  q, k, v = qkv(T=64, S=64, N=2, K=1, magnitude=0.5, seed=1)
  exact = attention.dot_product_attention(q, k, v, is_causal=is_causal)
  keys = jax.random.split(jax.random.key(0), seeds)
  errors = []
  for F in (16, 64, 256):
    error = jax.jit(jax.vmap(lambda key, F=F: jnp.linalg.norm(
        attention.performer_attention(
            q, k, v, is_causal=is_causal, num_features=F, projection=key,
            orthogonal=orthogonal) - exact) / jnp.linalg.norm(exact)))(keys)
    errors.append(float(jnp.mean(error)))
  return errors


def test_approximates_softmax_better_with_more_and_orthogonal_features():
  # Causal: prefixes of 1..64 keys; the bidirectional sums are exact above.
  orthogonal = _mean_errors(True, orthogonal=True)
  iid = _mean_errors(True, orthogonal=False)
  for errors in (orthogonal, iid):
    # About 1 / sqrt(F): each 4x more features at least 1.4x smaller error.
    assert errors[1] < errors[0] / 1.4 and errors[2] < errors[1] / 1.4, errors
  assert orthogonal[2] < 0.2, orthogonal
  for o, i in zip(orthogonal, iid):  # Fig. 4 of the paper: orthogonal wins.
    assert o < 0.95 * i, (orthogonal, iid)


def test_orthogonal_projection_blocks_and_norms():
  w = np.asarray(performer.draw_projection(jax.random.key(0), 40, H))
  assert w.shape == (40, H)
  for start in (0, 16, 32):
    block = w[start:start + 16]
    gram = block @ block.T
    np.testing.assert_allclose(gram - np.diag(np.diag(gram)), 0, atol=1e-4)
  norms = np.linalg.norm(w, axis=1)
  assert norms.std() > 0.2 and 2.5 < norms.mean() < 5.5  # chi(16): 3.9
  iid = performer.draw_projection(jax.random.key(0), 40, H, orthogonal=False)
  assert np.abs(np.asarray(iid[:16] @ iid[:16].T) - np.diag(np.diag(
      iid[:16] @ iid[:16].T))).max() > 1.0


def test_projection_comes_from_the_argument_never_the_data():
  q, k, v = qkv(T=10, S=10)
  fn = functools.partial(attention.performer_attention, num_features=32)
  default = fn(q, k, v)
  np.testing.assert_array_equal(
      default, fn(q, k, v, projection=jax.random.key(performer.DEFAULT_SEED)))
  drawn = performer.draw_projection(jax.random.key(0), 32, H)
  np.testing.assert_array_equal(default, fn(q, k, v, projection=drawn))
  assert not np.allclose(default, fn(q, k, v, projection=jax.random.key(1)))
  # Same call, other data: the features stay the same (row 0 unchanged).
  other = fn(q.at[1].set(0.0), k.at[1].set(5.0), v)
  np.testing.assert_array_equal(other[0], default[0])


@pytest.mark.parametrize('kernel', performer.KERNELS)
def test_future_tokens_do_not_move_earlier_outputs(kernel):
  q, k, v = qkv(T=30, S=30)
  fn = jax.jit(functools.partial(attention.performer_attention, kernel=kernel,
                                 is_causal=True, chunk_size=7,
                                 num_features=32))
  base = fn(q, k, v)
  for t0 in (1, 10, 22):
    noise = qkv(T=30, S=30, seed=t0)
    # Future keys with large norms would move a sequence-wide stabiliser.
    moved = fn(*(x.at[:, t0:].set(4 * n[:, t0:]) for x, n in
                 zip((q, k, v), noise)))
    np.testing.assert_array_equal(moved[:, :t0], base[:, :t0])
    assert not np.allclose(moved[:, t0:], base[:, t0:])


@pytest.mark.parametrize('kernel', performer.KERNELS)
def test_parallel_equals_chunked_equals_recurrent(kernel):
  q, k, v = qkv(T=24, S=24, magnitude=0.5)
  options = dict(kernel=kernel, num_features=32,
                 projection=jax.random.key(2))
  parallel = attention.performer_attention(q, k, v, is_causal=True,
                                           chunk_size=24, **options)
  chunked = attention.performer_attention(q, k, v, is_causal=True,
                                          chunk_size=5, **options)
  np.testing.assert_allclose(chunked, parallel, atol=2e-5, rtol=2e-5)
  state = performer.init_state(2, 2, H, kernel=kernel, num_features=32)
  step = jax.jit(functools.partial(performer.step, **options))
  outs = []
  for t in range(24):
    out, state = step(state, q[:, t:t + 1], k[:, t:t + 1], v[:, t:t + 1])
    outs.append(out)
  np.testing.assert_allclose(jnp.concatenate(outs, 1), parallel, atol=2e-5,
                             rtol=2e-5)


@pytest.mark.parametrize('is_causal', [False, True])
def test_padded_keys_leave_numerator_and_denominator(is_causal):
  q, k, v = qkv(T=20, S=20)
  lengths = jnp.array([20, 12])
  fn = functools.partial(attention.performer_attention, is_causal=is_causal,
                         key_value_seq_lengths=lengths, chunk_size=6,
                         num_features=32)
  base = fn(q, k, v)
  # Huge padded keys would dominate the stabiliser and the denominator.
  np.testing.assert_array_equal(
      fn(q, k.at[1, 12:].set(30.0), v.at[1, 12:].set(1e3)), base)
  if not is_causal:
    short = fn(q[1:], k[1:, :12], v[1:, :12], key_value_seq_lengths=None)
    np.testing.assert_allclose(base[1], short[0], atol=1e-5, rtol=1e-5)
  empty = fn(q, k, v, key_value_seq_lengths=jnp.array([20, 0]))
  np.testing.assert_array_equal(empty[1], 0.0)


def test_gradients_match_float64_autodiff_of_the_definition():
  q, k, v = qkv(T=20, S=20, magnitude=0.7)
  projection = performer.draw_projection(jax.random.key(1), 32, H)
  cotangent = jnp.asarray(np.random.default_rng(2).standard_normal(q.shape))

  def dense(q, k, v):  # The quadratic form, in jnp for autodiff.
    x = lambda a: a * H**-0.25
    phi_q = jnp.exp(x(q) @ projection.T.astype(q.dtype))
    phi_k = jnp.exp(x(k) @ projection.T.astype(q.dtype) -
                    0.5 * jnp.sum(x(k)**2, -1, keepdims=True))
    phi_k = jnp.repeat(phi_k, 2, axis=2)
    a = jnp.tril(jnp.einsum('BTNF,BSNF->BNTS', phi_q, phi_k))
    out = jnp.einsum('BNTS,BSNH->BTNH', a, jnp.repeat(v, 2, axis=2))
    return out / a.sum(-1).transpose(0, 2, 1)[..., None]

  loss = lambda f, q, k, v: jnp.sum(f(q, k, v) * cotangent.astype(q.dtype))
  ours = functools.partial(attention.performer_attention, is_causal=True,
                           projection=projection, num_features=32,
                           chunk_size=6)
  with jax.enable_x64(True):
    want = jax.jit(jax.grad(functools.partial(loss, dense),
                            argnums=(0, 1, 2)))(
                                *(x.astype(jnp.float64) for x in (q, k, v)))
  got = jax.jit(jax.grad(functools.partial(loss, ours), argnums=(0, 1, 2)))(
      q, k, v)
  for g, w in zip(got, want):
    w = np.asarray(w)
    np.testing.assert_allclose(g, w, atol=5e-5 * np.abs(w).max(), rtol=1e-4)


def test_bfloat16_stays_finite_and_close():
  q, k, v = qkv(T=64, S=64, magnitude=0.5)
  performer = jax.jit(attention.performer_attention,
                      static_argnames='is_causal')
  for is_causal in (False, True):
    want = performer(q, k, v, is_causal=is_causal)
    got = performer(*(x.astype(jnp.bfloat16) for x in (q, k, v)),
                    is_causal=is_causal)
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(got.astype(jnp.float32), want, atol=3e-2,
                               rtol=3e-2)


@pytest.mark.parametrize('kwargs,message', [
    (dict(mask=jnp.ones((5, 5), bool)), 'does not support mask'),
    (dict(logits_soft_cap=5.0), 'does not support logits_soft_cap'),
    (dict(kernel='cosine'), 'kernel must be one of'),
    (dict(projection=jnp.ones((8, H))), r'projection must be .*\(256, 16\)'),
    (dict(num_features=0), 'num_features must be a positive int'),
])
def test_bad_options_are_named(kwargs, message):
  q, k, v = qkv(T=5, S=5)
  with pytest.raises(ValueError, match=message):
    attention.performer_attention(q, k, v, **kwargs)
