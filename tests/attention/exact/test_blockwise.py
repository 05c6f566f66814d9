"""attention.blockwise_attention: exactness, causality, chunking, skipping."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from efficient_attention import attention
from tests.attention import cases
from tests.attention.exact import test_reference

# (query_chunk_size, key_chunk_size): neither divides 37; query chunk larger
# than, smaller than, and longer than the sequence.
CHUNKS = [(16, 5), (5, 16), (8, 8), (64, 64)]


def blockwise(chunks):
  return functools.partial(attention.blockwise_attention,
                           query_chunk_size=chunks[0],
                           key_chunk_size=chunks[1])


DTYPES = {'f32': jnp.float32, 'bf16': jnp.bfloat16}
# Every (chunks, dtype) pair; each case meets one of them by default, the
# whole cross product in `make test-slow`.
SETTINGS = [(chunks, dtype) for dtype in DTYPES for chunks in CHUNKS]


@pytest.mark.parametrize('case,setting', cases.covering(
    cases.CASES + cases.EXTRA_CASES, SETTINGS))
def test_matches_float64_oracle(case, setting):
  chunks, dtype = setting
  cases.check_against_oracle(blockwise(chunks), case, DTYPES[dtype])


@pytest.mark.parametrize('case', [
    pytest.param(c, marks=() if i == 0 else pytest.mark.slow)
    for i, c in enumerate(cases.CASES[1:4])], ids=str)
def test_matches_float64_oracle_without_jit(case):
  cases.check_against_oracle(blockwise((16, 5)), case, jnp.float32,
                             jit=False)


@pytest.mark.parametrize('case,dtype', cases.covering(cases.CASES,
                                                      list(DTYPES)))
def test_matches_jax_nn(case, dtype):
  test_reference.check_against_jax_nn(blockwise((16, 5)), case,
                                      DTYPES[dtype])


CAUSAL = cases.Case('causal', T=50, S=50, is_causal=True, window=(20, 0))


@pytest.mark.parametrize('chunks', [(16, 7), (7, 16)], ids=str)
def test_future_tokens_do_not_move_past_outputs(chunks):
  x = cases.inputs(CAUSAL, jnp.float32)
  f = jax.jit(functools.partial(blockwise(chunks), is_causal=True,
                                local_window_size=(20, 0)))
  out = f(x['query'], x['key'], x['value'])
  t0 = 23
  noise = cases.inputs(CAUSAL, jnp.float32, seed=1)
  moved = {n: x[n].at[:, t0:].add(100 * noise[n][:, t0:])
           for n in ('query', 'key', 'value')}
  out2 = f(moved['query'], moved['key'], moved['value'])
  np.testing.assert_array_equal(out2[:, :t0], out[:, :t0])
  assert not np.allclose(out2[:, t0:], out[:, t0:])


def test_gradient_of_past_output_wrt_future_keys_is_zero():
  x = cases.inputs(CAUSAL, jnp.float32)
  f = functools.partial(blockwise((16, 7)), is_causal=True)
  grad = jax.jit(jax.grad(  # one program for every t
      lambda k, v, t: jnp.take(f(x['query'], k, v), t, axis=1).sum(),
      argnums=(0, 1)))
  for t in (0, 15, 16, 31, 49):
    grads = grad(x['key'], x['value'], t)
    for g in grads:
      np.testing.assert_array_equal(g[:, t + 1:], 0.0)
      assert np.abs(g[:, :t + 1]).max() > 0


ALL_FEATURES = cases.CASES[-1]


def test_chunk_sizes_do_not_change_results():
  x = cases.inputs(ALL_FEATURES, jnp.float32)
  results = [cases.output_and_grads(blockwise(chunks), ALL_FEATURES, x)
             for chunks in [(1, 1), (3, 29), (29, 3), (30, 45), (512, 512)]]
  first_out, first_grads = results[0]
  for out, grads in results[1:]:
    np.testing.assert_allclose(out, first_out, atol=2e-6)
    for name in grads:
      np.testing.assert_allclose(grads[name], first_grads[name], atol=1e-5)


@pytest.mark.parametrize('chunks', [(32, 16), (16, 32), (16, 16), (32, 8)],
                         ids=str)
def test_invisible_tiles_are_skipped_by_position(chunks):
  """NaNs in keys and values past the first 32 reach no earlier output.

  A visited tile would carry them in (0 * NaN = NaN), so finite outputs
  prove the causal tiles were skipped, for any ratio of chunk sizes.
  """
  case = cases.Case('skip', T=64, S=64, is_causal=True)
  x = cases.inputs(case, jnp.float32)
  poison = lambda a: a.at[:, 32:].set(jnp.nan)
  f = jax.jit(functools.partial(blockwise(chunks), is_causal=True))
  loss = lambda q, k, v: f(q, k, v)[:, :32].sum()
  out = f(x['query'], poison(x['key']), poison(x['value']))
  assert np.isfinite(out[:, :32]).all()
  dq = jax.jit(jax.grad(loss))(x['query'], poison(x['key']),
                               poison(x['value']))
  assert np.isfinite(dq[:, :32]).all()


def test_window_skips_tiles_behind_it():
  case = cases.Case('window_skip', T=64, S=64)
  x = cases.inputs(case, jnp.float32)
  f = functools.partial(blockwise((8, 8)), local_window_size=(8, 0))
  out = f(x['query'], x['key'].at[:, :16].set(jnp.nan),
          x['value'].at[:, :16].set(jnp.nan))
  assert np.isfinite(out[:, 32:]).all()


def test_lengths_skip_padding_tiles_and_zero_empty_rows():
  case = cases.Case('lengths', T=40, S=40)
  x = cases.inputs(case, jnp.float32)
  kv_len = jnp.array([0, 13], jnp.int32)
  q_len = jnp.array([40, 9], jnp.int32)
  f = functools.partial(blockwise((8, 8)), key_value_seq_lengths=kv_len,
                        query_seq_lengths=q_len)
  nan_tail = lambda a: a.at[:, 16:].set(jnp.nan)
  out = f(x['query'], nan_tail(x['key']), nan_tail(x['value']))
  np.testing.assert_array_equal(out[0], 0.0)  # batch 0 sees no key
  np.testing.assert_array_equal(out[1, 9:], 0.0)  # queries past q_len
  assert np.isfinite(out).all()
  grads = jax.jit(jax.grad(lambda q, k, v: f(q, k, v).sum(),
                           argnums=(0, 1, 2)))(x['query'], x['key'],
                                               x['value'])
  assert all(np.isfinite(g).all() for g in grads)
  np.testing.assert_array_equal(grads[1][1, 13:], 0.0)


def test_default_chunks_match_reference():
  """The default (512, 256) tiles, at a length neither divides."""
  case = cases.Case('default_chunks', B=1, T=1100, S=1100, N=4, K=2, H=32,
                    is_causal=True, kv_len=(1000,))
  x = cases.inputs(case, jnp.float32)
  out, grads = cases.output_and_grads(attention.blockwise_attention, case, x)
  want_out, want_grads = cases.output_and_grads(
      attention.dot_product_attention, case, x)
  cases.assert_close(out, want_out, jnp.float32, 'output')
  for name in grads:
    cases.assert_close(grads[name], want_grads[name], jnp.float32, name)
