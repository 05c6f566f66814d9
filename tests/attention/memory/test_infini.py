"""Infini-attention against a plain per-segment definition, and its memory."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from efficient_attention.attention.memory import infini
from efficient_attention.attention.memory import infini_decoding
from efficient_attention.attention import positional

B, T, N, K, H = 2, 37, 4, 2, 8
L = 8  # segment length: 37 = 4 full segments and 5 tokens


def inputs(seed=0, length=T, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  q, k, v = (jnp.asarray(rng.standard_normal((B, length, n, H)), dtype)
             for n in (N, K, K))
  return q, k, v, jnp.asarray(rng.standard_normal(N), jnp.float32)


def definition(q, k, v, gate_logits, *, update, rope_base=None):
  """The paper's equations, one segment at a time, in float64 NumPy."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  sigma = lambda x: np.where(x > 0, x + 1.0, np.exp(x))
  M, z = np.zeros((B, K, H, H)), np.zeros((B, K, H))
  gate = 1 / (1 + np.exp(-np.asarray(gate_logits, np.float64)))
  out = np.zeros((B, T, N, H))
  for s in range(0, T, L):
    e = min(s + L, T)
    qs, ks, vs = q[:, s:e], k[:, s:e], v[:, s:e]
    ql, kl = qs, ks
    if rope_base is not None:
      ql, kl = (np.asarray(positional.rope(jnp.asarray(x, jnp.float32),
                                           jnp.arange(s, e), base=rope_base),
                           np.float64) for x in (qs, ks))
    for n in range(N):
      h = n // (N // K)
      logits = np.einsum('btd,bsd->bts', ql[:, :, n], kl[:, :, h]) / H**0.5
      logits = np.where(np.tril(np.ones((e - s, e - s), bool)), logits,
                        -np.inf)
      p = np.exp(logits - logits.max(-1, keepdims=True))
      local = np.einsum('bts,bsd->btd', p / p.sum(-1, keepdims=True),
                        vs[:, :, h])
      sq = sigma(qs[:, :, n])
      den = np.einsum('btd,bd->bt', sq, z[:, h])
      num = np.einsum('btd,bde->bte', sq, M[:, h])
      mem = np.where(den[..., None] > 0, num / np.where(
          den > 0, den, 1)[..., None], 0)
      out[:, s:e, n] = gate[n] * mem + (1 - gate[n]) * local
    for h in range(K):
      sk = sigma(ks[:, :, h])
      new = vs[:, :, h]
      if update == 'delta':
        den = np.einsum('btd,bd->bt', sk, z[:, h])
        num = np.einsum('btd,bde->bte', sk, M[:, h])
        new = new - np.where(den[..., None] > 0, num / np.where(
            den > 0, den, 1)[..., None], 0)
      M[:, h] += np.einsum('btd,bte->bde', sk, new)
      z[:, h] += sk.sum(1)
  return out, M


@pytest.mark.parametrize('update,rope_base', [('delta', 10000.0),
                                              ('linear', None)])
def test_equals_the_definition_and_segment_by_segment(update, rope_base):
  q, k, v, g = inputs()
  options = dict(segment_size=L, update=update, rope_base=rope_base)
  whole, memory = jax.jit(functools.partial(infini.scan_segments,
                                            **options))(q, k, v, None, g)
  want, matrix = definition(q, k, v, g, update=update, rope_base=rope_base)
  np.testing.assert_allclose(whole, want, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(memory.matrix, matrix, atol=1e-4, rtol=1e-5)
  # One segment at a time with the carried memory, and in two calls.
  step = jax.jit(functools.partial(infini.segment_step, update=update,
                                   rope_base=rope_base))
  carried, outs = infini.init_memory(B, K, H), []
  for s in range(0, T, L):
    out, carried = step(q[:, s:s + L], k[:, s:s + L], v[:, s:s + L],
                        carried, g)
    outs.append(out)
  np.testing.assert_allclose(jnp.concatenate(outs, 1), whole, atol=1e-6)
  np.testing.assert_array_equal(carried.position, [T, T])
  scan = jax.jit(functools.partial(infini.scan_segments, **options))
  first, middle = scan(q[:, :16], k[:, :16], v[:, :16], None, g)
  second, end = scan(q[:, 16:], k[:, 16:], v[:, 16:], middle, g)
  np.testing.assert_allclose(jnp.concatenate([first, second], 1), whole,
                             atol=1e-6)
  np.testing.assert_allclose(end.matrix, memory.matrix, atol=1e-5)


def test_future_tokens_never_move_earlier_outputs():
  q, k, v, g = inputs()
  fn = jax.jit(functools.partial(infini.infini_attention, gate_logits=g,
                                 segment_size=L, rope_base=10000.0))
  base = fn(q, k, v)
  noise = inputs(seed=3)
  for t0 in (3, 8, 20):  # inside a segment, at a boundary, inside
    moved = fn(*(x.at[:, t0:].set(y[:, t0:]) for x, y in zip(
        (q, k, v), noise)))
    np.testing.assert_array_equal(moved[:, :t0], base[:, :t0])
    assert not np.allclose(moved[:, t0:], base[:, t0:])


def test_delta_rule_writing_a_pair_twice_leaves_the_memory():
  _, k, v, _ = inputs()
  key, value = k[:, :1], v[:, :1]  # one token
  valid = jnp.ones((B, 1), bool)
  for rule, unchanged in (('delta', True), ('linear', False)):
    once = infini.write(infini.init_memory(B, K, H), key, value, valid, rule)
    twice = infini.write(once, key, value, valid, rule)
    assert np.allclose(twice.matrix, once.matrix, atol=1e-5) == unchanged
  # Padding is never written.
  empty = infini.write(infini.init_memory(B, K, H), key, value,
                       jnp.zeros((B, 1), bool), 'linear')
  np.testing.assert_array_equal(empty.matrix, 0.0)


def test_state_and_compiled_memory_do_not_grow_with_length():
  def temp_bytes(length):
    spec = jax.ShapeDtypeStruct((2, length, 4, 64), jnp.float32)
    fn = jax.jit(functools.partial(infini.infini_attention,
                                   segment_size=1024))
    return fn.lower(spec, spec, spec).compile().memory_analysis(
        ).temp_size_in_bytes

  assert temp_bytes(65536) == temp_bytes(8192)
  q, k, v, g = inputs()
  _, short = jax.eval_shape(functools.partial(
      infini.scan_segments, segment_size=L), q[:, :9], k[:, :9], v[:, :9],
      None, g)
  _, long = jax.eval_shape(functools.partial(
      infini.scan_segments, segment_size=L), q, k, v, None, g)
  assert jax.tree.map(lambda x: x.shape, short) == jax.tree.map(
      lambda x: x.shape, long)


def test_gradients_flow_through_the_memory():
  q, k, v, g = inputs()

  def last_segment(value, gate_logits):
    out = infini.infini_attention(q, k, value, gate_logits=gate_logits,
                                  segment_size=L)
    return jnp.sum(out[:, 32:] ** 2)

  grad = jax.jit(jax.grad(last_segment, argnums=(0, 1)))
  d_value, d_gate = grad(v, g)
  assert jnp.all(jnp.isfinite(d_value)) and jnp.all(d_gate != 0)
  assert jnp.abs(d_value[:, :8]).max() > 1e-3  # the first segment, via M
  # A gate shut on the memory (sigmoid(-1e4) = 0): only the own segment.
  d_value, _ = grad(v, jnp.full((N,), -1e4))
  np.testing.assert_array_equal(d_value[:, :32], 0.0)


def test_lengths_bfloat16_and_errors():
  q, k, v, g = inputs()
  fn = functools.partial(infini.infini_attention, gate_logits=g,
                         segment_size=L)
  lengths = jnp.array([37, 20])
  out = fn(q, k, v, key_value_seq_lengths=lengths)
  short = fn(q[1:, :20], k[1:, :20], v[1:, :20])
  np.testing.assert_allclose(out[1, :20], short[0], atol=1e-6)
  np.testing.assert_array_equal(out[1, 20:], 0.0)
  half = fn(*(x.astype(jnp.bfloat16) for x in (q, k, v)))
  assert half.dtype == jnp.bfloat16
  np.testing.assert_allclose(half.astype(jnp.float32), fn(q, k, v),
                             atol=5e-2, rtol=5e-2)
  with pytest.raises(ValueError, match='update must be one of'):
    fn(q, k, v, update='hebbian')
  with pytest.raises(ValueError, match=r'gate_logits must be \[N\]'):
    infini.infini_attention(q, k, v, gate_logits=jnp.zeros(3))
  with pytest.raises(ValueError, match='is_causal must be True'):
    fn(q, k, v, is_causal=False)
  with pytest.raises(ValueError, match='mask'):
    fn(q, k, v, mask=jnp.ones((T, T), bool))


@pytest.mark.parametrize('update', ['delta', 'linear'])
def test_decoding_equals_one_call_and_state_size_is_fixed(update):
  q, k, v, g = inputs()
  options = dict(segment_size=L, update=update, rope_base=100.0)
  whole = jax.jit(functools.partial(infini.infini_attention, gate_logits=g,
                                    **options))(q, k, v)
  state = infini_decoding.init_state(B, K, H, segment_size=L)
  step = jax.jit(functools.partial(infini_decoding.step, gate_logits=g,
                                   **options))
  shapes = jax.tree.map(jnp.shape, state)
  # Whole segments from a segment's start: the parallel path.
  out, state = step(state, q[:, :8], k[:, :8], v[:, :8])
  np.testing.assert_allclose(out, whole[:, :8], atol=1e-5, rtol=1e-5)
  q, k, v, whole = (x[:, 8:] for x in (q, k, v, whole))
  # Calls that cross segment boundaries, rows of different lengths.
  out, state = step(state, q[:, :13], k[:, :13], v[:, :13],
                    num_new=jnp.array([13, 6]))
  np.testing.assert_allclose(out[0], whole[0, :13], atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(out[1, :6], whole[1, :6], atol=1e-5, rtol=1e-5)
  np.testing.assert_array_equal(state.memory.position, [16, 8])
  np.testing.assert_array_equal(state.fill, [5, 6])
  q1, k1, v1 = (jnp.stack([x[0, 13:], x[1, 6:22]]) for x in (q, k, v))
  out, state = step(state, q1, k1, v1)
  np.testing.assert_allclose(out[0], whole[0, 13:], atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(out[1], whole[1, 6:22], atol=1e-5, rtol=1e-5)
  assert jax.tree.map(jnp.shape, state) == shapes
  # Row 0: four full segments written, five tokens waiting.
  q, k, v, _ = inputs()
  _, memory = jax.jit(functools.partial(infini.scan_segments, **options))(
      q[:, :32], k[:, :32], v[:, :32], None, g)
  np.testing.assert_array_equal(state.fill, [5, 6])
  np.testing.assert_allclose(state.memory.matrix[0], memory.matrix[0],
                             atol=1e-4, rtol=1e-5)
  with pytest.raises(ValueError, match='differs from the state'):
    infini_decoding.step(state, q1[:, :1], k1[:, :1], v1[:, :1],
                         segment_size=16)


def test_one_gate_default_for_kernels_and_models():
  """Without gates the kernel uses the logit models start from (-3)."""
  q, k, v, _ = inputs()
  fn = jax.jit(functools.partial(infini.infini_attention, segment_size=L))
  N = q.shape[2]
  np.testing.assert_array_equal(
      fn(q, k, v), fn(q, k, v, gate_logits=jnp.full((N,), -3.0)))
  assert infini.DEFAULT_GATE_LOGIT == -3.0
