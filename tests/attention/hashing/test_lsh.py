"""Reformer LSH attention against dense attention over the same buckets."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from efficient_attention.attention.hashing import lsh
from efficient_attention.attention.hashing import rounds
from efficient_attention.attention import masking

B, T, N, H = 2, 37, 4, 16


def qv(K=N, dtype=jnp.float32, seed=0, length=T):
  rng = np.random.default_rng(seed)
  q = jnp.asarray(rng.standard_normal((B, length, N, H)), dtype)
  v = jnp.asarray(rng.standard_normal((B, length, K, H)), dtype)
  return q, v


def dense(query, key, value, *, visible_BNTS, scale=H**-0.5, shared_qk=True):
  """Softmax attention over the visible keys; shared-QK: normalised keys and
  the self-logit."""
  B, T, N, H = query.shape
  K = key.shape[2]
  if shared_qk:
    key = key / jnp.linalg.norm(key, axis=-1, keepdims=True)
  q = query.reshape(B, T, K, N // K, H)
  logits = jnp.einsum('BTKGH,BSKH->BKGTS', q, key) * scale
  if shared_qk:
    logits = jnp.where(jnp.eye(T, dtype=bool), lsh.SELF_LOGIT, logits)
  visible = jnp.broadcast_to(visible_BNTS, (B, N, T, T)).reshape(
      B, K, N // K, T, T)
  logits = jnp.where(visible, logits, masking.NEG_INF)
  probs = jax.nn.softmax(logits, axis=-1)
  probs = jnp.where(jnp.any(visible, -1)[..., None], probs, 0.0)
  out = jnp.einsum('BKGTS,BSKH->BTKGH', probs, value)
  return out.reshape(B, T, N, H)


def _chunks(x, rotations, C, ok):
  """Chunk of every position in every round: `[B, M, P, T]` (numpy)."""
  T = x.shape[1]
  Tp = T + (-T % C)
  x = jnp.pad(x, [(0, 0), (0, Tp - T), (0, 0), (0, 0)])
  U = 2 * rotations.shape[2]
  _, inverse = rounds.sort_by_bucket(
      rounds.hash_buckets(x, rotations), ok, U)
  return np.asarray(inverse // C)[..., :T]


def same_window(query, key, rotations, chunk_size, lengths=None,
                shared_qk=True):
  """bool `[B, N, T, S]`: the pairs sharing a chunk window in some round."""
  B, T, N, _ = query.shape
  K = key.shape[2]
  C = min(chunk_size, T)
  Tp = T + (-T % C)
  ok = jnp.broadcast_to(jnp.arange(Tp) < T, (B, Tp))
  k_ok = ok
  if lengths is not None:
    k_ok = ok & (jnp.arange(Tp)[None, :] < jnp.asarray(lengths)[:, None])
  if shared_qk:
    key = key / jnp.maximum(jnp.linalg.norm(key, axis=-1, keepdims=True),
                            1e-6)
  kc = np.repeat(_chunks(key, rotations, C, k_ok), N // K, axis=1)
  qc = kc if shared_qk else _chunks(query, rotations, C, ok)
  nC = Tp // C
  qc, kc = qc[..., :, None], kc[..., None, :]
  together = (kc == qc) | ((kc == (qc - 1) % nC) if nC > 1 else True)
  return jnp.asarray(np.any(together, axis=2) & np.asarray(k_ok)[
      :, None, None, :T])


def causal_mask(T):
  return jnp.tril(jnp.ones((1, 1, T, T), bool))


@pytest.mark.parametrize('is_causal', [False, True])
@pytest.mark.parametrize('chunk_size', [64, 19])
def test_equals_exact_shared_qk_attention(chunk_size, is_causal):
  # One chunk of all tokens, or two chunks that each look back at the other.
  q, v = qv()
  options = dict(chunk_size=chunk_size, num_buckets=8)
  got = jax.jit(functools.partial(lsh.lsh_attention, is_causal=is_causal,
                                  **options))(q, q, v)
  visible = jnp.ones((B, N, T, T), bool) & (causal_mask(T) if is_causal
                                            else True)
  np.testing.assert_allclose(got, dense(q, q, v, visible_BNTS=visible),
                             atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize('K,is_causal,shared_qk', [
    (N, True, True), (2, False, True), (2, True, False),
    pytest.param(N, False, False, marks=pytest.mark.slow)])
def test_equals_dense_attention_over_the_same_buckets(K, is_causal,
                                                      shared_qk):
  q, v = qv(K=K)
  if shared_qk:
    k = q[:, :, ::N // K]  # shared-QK per key head
  else:
    k = qv(K=K, seed=7)[1]
  rotations = lsh.draw_rotations(jax.random.key(3), H, 3, 8)
  lengths = jnp.array([37, 29])
  fn = jax.jit(functools.partial(
      lsh.lsh_attention, rotations=rotations, chunk_size=5,
      is_causal=is_causal, key_value_seq_lengths=lengths,
      shared_qk=shared_qk))
  visible = same_window(q, k, rotations, 5, lengths, shared_qk=shared_qk)
  if is_causal:
    visible &= causal_mask(T)
  if is_causal and not shared_qk:  # Rows that find no key are zeros.
    assert not jnp.all(jnp.any(visible, -1))
  ref = functools.partial(dense, visible_BNTS=visible, shared_qk=shared_qk)
  np.testing.assert_allclose(fn(q, k, v), ref(q, k, v), atol=1e-6, rtol=1e-5)
  cotangent = jnp.asarray(np.random.default_rng(1).standard_normal(q.shape),
                          jnp.float32)
  loss = lambda f, *a: jnp.sum(f(*a) * cotangent)
  grad = lambda f: jax.jit(jax.grad(functools.partial(loss, f),
                                    argnums=(0, 1, 2)))(q, k, v)
  got, want = grad(fn), grad(ref)
  for g, w in zip(got, want):
    assert jnp.all(jnp.isfinite(g))
    np.testing.assert_allclose(g, w, atol=2e-5, rtol=2e-4)


def test_separate_hashing_with_one_chunk_is_exact_attention():
  q, v = qv(K=2)
  k = qv(K=2, seed=7)[1]
  got = jax.jit(functools.partial(lsh.lsh_attention, is_causal=True,
                                  shared_qk=False, chunk_size=64))(q, k, v)
  want = jax.nn.dot_product_attention(q, k, v, is_causal=True)
  np.testing.assert_allclose(got, want, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize('is_causal', [
    pytest.param(False, marks=pytest.mark.slow), True])  # causal: the harder
def test_error_falls_as_hash_rounds_grow(is_causal):
  q, v = qv()
  visible = jnp.ones((B, N, T, T), bool) & (causal_mask(T) if is_causal
                                            else True)
  exact = dense(q, q, v, visible_BNTS=visible)

  def error(rounds):
    fn = jax.jit(lambda rng: jnp.linalg.norm(lsh.lsh_attention(
        q, q, v, is_causal=is_causal, num_hashes=rounds, num_buckets=8,
        chunk_size=4, rng=rng) - exact) / jnp.linalg.norm(exact))
    return float(np.mean([fn(jax.random.key(seed)) for seed in range(4)]))

  errors = [error(p) for p in (1, 2, 4, 8)]
  assert all(b < a for a, b in zip(errors, errors[1:])), errors
  assert errors[-1] < 0.6 * errors[0], errors


def test_future_values_never_move_earlier_outputs():
  q, v = qv()
  k = qv(seed=7)[1]
  for shared_qk in (True, False):
    fn = jax.jit(functools.partial(lsh.lsh_attention, is_causal=True,
                                   chunk_size=4, num_buckets=8,
                                   shared_qk=shared_qk))
    base = fn(q, k, v)
    for t0 in (1, 12, 30):
      moved = fn(q, k, v.at[:, t0:].set(100.0))
      np.testing.assert_array_equal(moved[:, :t0], base[:, :t0])
  # With one chunk, future queries and keys cannot move them either.
  whole = jax.jit(functools.partial(lsh.lsh_attention, is_causal=True,
                                    chunk_size=64, num_buckets=8))
  base = whole(q, q, v)
  noise, _ = qv(seed=5)
  moved = whole(q.at[:, 20:].set(noise[:, 20:]), q.at[:, 20:].set(
      noise[:, 20:]), v)
  np.testing.assert_array_equal(moved[:, :20], base[:, :20])


def test_a_different_key_gives_different_buckets():
  q, _ = qv()
  k = q / jnp.linalg.norm(q, axis=-1, keepdims=True)
  buckets = [rounds.hash_buckets(k, lsh.draw_rotations(
      jax.random.key(s), H, 2, 8)) for s in (0, 1)]
  assert buckets[0].shape == (B, N, 2, T)
  assert not np.array_equal(buckets[0], buckets[1])
  assert int(buckets[0].max()) < 8 and int(buckets[0].min()) >= 0


def test_bfloat16_and_rows_without_keys():
  q, v = qv(dtype=jnp.bfloat16)
  fn = functools.partial(lsh.lsh_attention, is_causal=True, chunk_size=8,
                         num_buckets=4)
  got = jax.jit(fn)(q, q, v)
  want = jax.jit(fn)(*(x.astype(jnp.float32) for x in (q, q, v)))
  assert got.dtype == jnp.bfloat16
  np.testing.assert_allclose(got.astype(jnp.float32), want, atol=5e-2,
                             rtol=5e-2)
  q, v = qv()
  out = jax.jit(lsh.lsh_attention)(q, q, v,
                                   key_value_seq_lengths=jnp.array([37, 0]))
  np.testing.assert_array_equal(out[1], 0.0)
  assert jnp.all(jnp.isfinite(out))
