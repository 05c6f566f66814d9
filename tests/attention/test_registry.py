"""The registry, and conformance checks for every registered mechanism."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from efficient_attention import attention
from tests.attention import cases

# Options each registered mechanism is conformance-tested with. A mechanism
# registered without an entry here fails test_every_mechanism_is_tested.
CONFORMANCE = {
    'dot_product': {},
    # Segments of 8 (4 tiles each): decoding writes the memory 4 times.
    'infini': dict(segment_size=8, chunk_size=4),
    'blockwise': dict(query_chunk_size=16, key_chunk_size=5),
    'linear': dict(chunk_size=5),
    # One chunk: exact shared-QK attention (test_lsh.py tests the hashing).
    'lsh': dict(chunk_size=64, num_buckets=4),
    'performer': dict(chunk_size=5, num_features=32),
    # Projected to fewer rows than the 37 keys (never causal).
    'linformer': dict(projected_length=16),
    # Blocks of 4 with a global and a random one (the causal draw).
    'bigbird': dict(block_size=4, global_blocks=1, random_blocks=1,
                    query_chunk_size=16, key_chunk_size=5),
    # A dilated window with one global token: decodes from the KV cache.
    'longformer': dict(window=4, dilation=2, global_tokens=1,
                       query_chunk_size=16, key_chunk_size=5),
    # Period 6 on 37 positions; tiles that divide nothing.
    'sparse_transformer': dict(stride=6, summary=2, query_chunk_size=16,
                               key_chunk_size=5),
    'xl': dict(segment_size=8, memory_length=5, chunk_size=4),
}
REFUSED_VALUES = dict(bias=jnp.zeros((1, 1, 37, 37)),
                      mask=jnp.ones((37, 37), bool), local_window_size=3,
                      alibi_slopes=jnp.ones(4), logits_soft_cap=5.0,
                      score=attention.scores.soft_cap(5.0))


def test_every_mechanism_is_tested():
  assert set(attention.names()) == set(CONFORMANCE)


def test_unknown_name_lists_the_known_ones():
  with pytest.raises(ValueError, match='known: .*blockwise.*dot_product'):
    attention.get('flash')


def test_call_merges_registered_defaults_with_options():
  mechanism = attention.get('blockwise')
  assert mechanism.fn is attention.blockwise_attention
  x = cases.inputs(cases.CASES[1], jnp.float32)
  args = (x['query'], x['key'], x['value'])
  np.testing.assert_array_equal(
      mechanism(*args, is_causal=True, query_chunk_size=8),
      attention.blockwise_attention(*args, is_causal=True,
                                    query_chunk_size=8))


def test_registering_another_function_under_a_taken_name_raises():
  with pytest.raises(ValueError, match='already registered'):
    attention.register('blockwise', lambda q, k, v: q,
                       options=attention.options.NoOptions)


EXACT = sorted(n for n in CONFORMANCE if attention.get(n).exact)


@pytest.mark.parametrize('case', [cases.CASES[6], cases.CASES[-1]], ids=str)
@pytest.mark.parametrize('name', EXACT)
def test_conformance_exact(name, case):
  fn = functools.partial(attention.get(name), **CONFORMANCE[name])
  cases.check_against_oracle(fn, case, jnp.float32)


def _qkv(T=37, seed=0):
  x = cases.inputs(cases.Case('gqa', T=T, S=T), jnp.float32, seed=seed)
  return x['query'], x['key'], x['value']


@pytest.mark.parametrize('name', sorted(CONFORMANCE))
def test_conformance_causal_padding_decoding(name):
  """What every mechanism keeps, exact or not (DESIGN.md contracts)."""
  mechanism = attention.get(name)
  fn = functools.partial(mechanism, **CONFORMANCE[name])
  q, k, v = _qkv()
  if mechanism.causal:
    base = fn(q, k, v, is_causal=True)
    assert base.shape == q.shape and base.dtype == q.dtype
    # Future tokens leave earlier outputs bitwise unchanged.
    nq, nk, nv = _qkv(seed=1)
    moved = fn(q.at[:, 20:].set(nq[:, 20:]),
               k.at[:, 20:].set(3 * nk[:, 20:]),
               v.at[:, 20:].set(nv[:, 20:]), is_causal=True)
    np.testing.assert_array_equal(moved[:, :20], base[:, :20])
  else:  # it says why, and cannot decode
    with pytest.raises(ValueError, match='cannot be causal'):
      fn(q, k, v, is_causal=True)
    assert not mechanism.decodable
  # Whatever lies in padded keys never reaches an output.
  lengths = jnp.array([37, 15])
  padded = functools.partial(fn, key_value_seq_lengths=lengths,
                             is_causal=mechanism.causal)
  np.testing.assert_array_equal(
      padded(q, k.at[1, 15:].set(20.0), v.at[1, 15:].set(1e4)),
      padded(q, k, v))
  if mechanism.decodable:
    state = mechanism.init_state(2, 2, 16, max_length=40,
                                   **CONFORMANCE[name])
    step = jax.jit(functools.partial(mechanism.step,
                                     **CONFORMANCE[name]))
    for t in range(37):
      out, state = step(state, q[:, t:t + 1], k[:, t:t + 1], v[:, t:t + 1])
      np.testing.assert_allclose(out[:, 0], base[:, t], atol=1e-5,
                                 rtol=1e-5)


@pytest.mark.parametrize('name', cases.by_family(sorted(CONFORMANCE)))
def test_conformance_refused_options_raise_by_name(name):
  q, k, v = _qkv()
  refuses = attention.get(name).refuses
  for option in refuses:
    with pytest.raises(ValueError, match=f'does not support {option}'):
      attention.get(name)(q, k, v, **{option: REFUSED_VALUES[option]})
  for option in set(REFUSED_VALUES) - set(refuses):  # honoured: no error
    attention.get(name)(q, k, v, **{option: REFUSED_VALUES[option]})


@pytest.mark.parametrize('name', sorted(CONFORMANCE))
def test_conformance_nan_in_padding_never_reaches_an_output(name):
  """NaN poison past `key_value_seq_lengths` and `query_seq_lengths`:
  outputs and gradients are those of clean inputs, padded rows zero."""
  q_len, kv_len = jnp.array([37, 20]), jnp.array([37, 15])
  fn = jax.jit(functools.partial(
      attention.get(name), **CONFORMANCE[name],
      is_causal=attention.get(name).causal,
      query_seq_lengths=q_len, key_value_seq_lengths=kv_len))
  loss = jax.jit(jax.grad(lambda q, k, v: (fn(q, k, v) ** 2).sum(),
                          argnums=(0, 1, 2)))
  q, k, v = _qkv()
  nan = jnp.float32(jnp.nan)
  poisoned = (q.at[1, 20:].set(nan), k.at[1, 15:].set(nan),
              v.at[1, 15:].set(nan))
  clean = fn(q, k, v)
  np.testing.assert_array_equal(fn(*poisoned), clean)
  np.testing.assert_array_equal(clean[1, 20:], 0.0)
  for got, want in zip(loss(*poisoned), loss(q, k, v)):
    np.testing.assert_array_equal(got, want)
  # A NaN in a valid value may reach valid rows, never the padded ones.
  out = fn(q, k, v.at[1, 3].set(nan))
  np.testing.assert_array_equal(out[1, 20:], 0.0)
  np.testing.assert_array_equal(out[0], clean[0])
