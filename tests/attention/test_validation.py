"""Bad input gets an error that names the argument and what was expected."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from efficient_attention import attention
from tests.attention import cases
FUNCTIONS = [attention.dot_product_attention, attention.blockwise_attention]
B, T, S, N, K, H = 2, 6, 5, 4, 2, 8


def qkv(query=(B, T, N, H), key=(B, S, K, H), value=(B, S, K, H)):
  return jnp.ones(query), jnp.ones(key), jnp.ones(value)


SHAPE_ERRORS = [
    (dict(query=(B, T, N * H)), {}, 'key must have the rank of query'),
    (dict(query=(T, N * H)), {}, 'query must be'),
    (dict(key=(B, S, K, H + 1)), {}, 'key must be'),
    (dict(key=(B, S, 3, H), value=(B, S, 3, H)), {}, 'multiple of key/value'),
    (dict(value=(B, S + 1, K, H)), {}, 'value must'),
    ({}, dict(mask=jnp.ones((B, 1, T, S + 1), bool)), 'mask must broadcast'),
    ({}, dict(bias=jnp.ones((3, 1, T, S))), 'bias must broadcast'),
    ({}, dict(bias=jnp.ones((1, B, N, T, S))), 'bias must broadcast'),
    ({}, dict(key_value_seq_lengths=jnp.ones((B, 1), jnp.int32)),
     'key_value_seq_lengths must be'),
    ({}, dict(query_seq_lengths=jnp.ones((B,))), 'query_seq_lengths must be'),
]


@pytest.mark.parametrize('fn', FUNCTIONS, ids=lambda f: f.__name__)
@pytest.mark.parametrize('shapes,kwargs,message', SHAPE_ERRORS)
def test_bad_shapes_name_the_argument(fn, shapes, kwargs, message):
  with pytest.raises(ValueError, match=message):
    fn(*qkv(**shapes), **kwargs)


VALUE_ERRORS = [
    (dict(local_window_size=-1), 'local_window_size'),
    (dict(local_window_size=(1, 2, 3)), 'local_window_size'),
    (dict(dropout_rate=0.1, deterministic=False), 'dropout'),
    (dict(module=object()), 'sow'),
    (dict(scale=jnp.float32(0.5)), 'scale'),
]


# dot_product_attention sows weights into a module rather than refusing
# (tests/attention/test_residual_and_weights.py).
@pytest.mark.parametrize('fn,kwargs,message', [
    pytest.param(fn, kwargs, message, id=f'{message}-{fn.__name__}')
    for kwargs, message in VALUE_ERRORS for fn in FUNCTIONS
    if not (message == 'sow' and fn.__name__ == 'dot_product_attention')])
def test_bad_options_raise_value_error(fn, kwargs, message):
  with pytest.raises(ValueError, match=message):
    fn(*qkv(), **kwargs)


@pytest.mark.parametrize('name', ['query_chunk_size', 'key_chunk_size'])
@pytest.mark.parametrize('size', [0, -4, 2.5, True])
def test_bad_chunk_sizes_raise_value_error(name, size):
  with pytest.raises(ValueError, match=name):
    attention.blockwise_attention(*qkv(), **{name: size})


@pytest.mark.parametrize('fn', FUNCTIONS, ids=lambda f: f.__name__)
def test_unknown_keyword_is_not_silently_dropped(fn):
  with pytest.raises(ValueError, match="unknown option 'query_chunks'"):
    fn(*qkv(), query_chunks=4)


@pytest.mark.parametrize('fn', FUNCTIONS, ids=lambda f: f.__name__)
def test_dropout_is_accepted_when_deterministic(fn):
  out = fn(*qkv(), dropout_rate=0.1, deterministic=True)
  assert out.shape == (B, T, N, H)


@pytest.mark.parametrize('fn', FUNCTIONS, ids=lambda f: f.__name__)
def test_numeric_mask_means_nonzero_attends_as_in_flax(fn):
  mask = jnp.arange(S) < 3
  out_bool = fn(*qkv(), mask=mask)
  out_float = fn(*qkv(), mask=mask.astype(jnp.float32))
  assert (out_bool == out_float).all()


@pytest.mark.parametrize('name', attention.names())
def test_lengths_outside_the_sequence_raise_when_concrete(name):
  """Every mechanism: lengths past the sequence or negative are refused
  where their values are known; under jit they are used as given."""
  mechanism = attention.get(name)
  q = jnp.ones((B, T, N, H))
  kv = jnp.ones((B, T, K, H))  # S = T: self-attention mechanisms too
  for kwargs, message in [
      (dict(key_value_seq_lengths=jnp.array([T + 1, 2])),
       rf'key_value_seq_lengths must lie in \[0, S={T}\], got \[{T + 1}, 2\]'),
      (dict(key_value_seq_lengths=jnp.array([-1, 2])),
       'key_value_seq_lengths must lie in'),
      (dict(query_seq_lengths=jnp.array([3, T + 2])),
       rf'query_seq_lengths must lie in \[0, T={T}\]'),
  ]:
    with pytest.raises(ValueError, match=message):
      mechanism(q, kv, kv, is_causal=mechanism.causal, **kwargs)
  if name == 'blockwise':  # the shared parsing: once is enough
    traced = jax.jit(lambda lengths: mechanism(
        q, kv, kv, is_causal=True, key_value_seq_lengths=lengths))
    assert traced(jnp.array([T + 1, 2])).shape == q.shape


@pytest.mark.parametrize('args,message', [
    ((jnp.ones((B, T, N, H)), jnp.ones((B, S, K, H)), jnp.ones((B, S, K))),
     r'value must be \[B, S, K, H\] \(rank 4\)'),
    ((jnp.ones((B, T, N, H)), jnp.ones((B, S, K, H)), jnp.ones((B, S, K, 2))),
     'value must have the shape of key'),
])
def test_shape_errors_are_value_errors_as_in_jax_nn(args, message):
  """jax.nn raises ValueError for bad shapes; chex's AssertionError is
  gone from the public entry points."""
  for fn in FUNCTIONS:
    with pytest.raises(ValueError, match=message):
      fn(*args)


@pytest.mark.parametrize('name', cases.by_family(attention.names()))
def test_mixed_and_integer_dtypes_are_refused_as_in_jax_nn(name):
  """jax.nn refuses a bfloat16 query with float32 keys; so does every
  mechanism (it used to return bfloat16). Integers are refused too (they
  came back as wrong integers); `dtype=` casts all three, as Flax does."""
  mechanism = attention.get(name)
  q = jnp.ones((B, T, N, H), jnp.bfloat16)
  kv = jnp.ones((B, T, K, H), jnp.float32)
  with pytest.raises(ValueError, match='query dtype should be float32'):
    jax.nn.dot_product_attention(q, kv, kv)
  causal = mechanism.causal  # Linformer cannot be (that raises first)
  with pytest.raises(ValueError, match="query dtype must be the key's, "
                     'float32, got bfloat16'):
    mechanism(q, kv, kv, is_causal=causal)
  ints = jnp.ones((B, T, K, H), jnp.int32)
  with pytest.raises(ValueError, match='must be floating point, got int32'):
    mechanism(jnp.ones((B, T, N, H), jnp.int32), ints, ints, is_causal=causal)
  out = mechanism(q, kv, kv, is_causal=causal, dtype=jnp.float32)
  assert out.dtype == jnp.float32


SELF_ATTENTION = ('lsh', 'infini', 'xl')  # S = T by construction


@pytest.mark.parametrize('name', attention.names())
def test_empty_sequences_give_empty_or_zero_outputs(name):
  """T = 0: an empty output, as jax.nn gives (it used to divide by zero).
  S = 0: every query sees no key, so zeros; gradients of the right shape."""
  mechanism = attention.get(name)
  causal = name in ('infini', 'xl')
  sizes = [(0, 0)] + ([(0, 5), (5, 0)] if name not in SELF_ATTENTION else [])
  for t, s in sizes:
    q = jnp.ones((B, t, N, H))
    kv = jnp.ones((B, s, K, H))
    out = mechanism(q, kv, kv, is_causal=causal)
    assert out.shape == (B, t, N, H) and out.dtype == q.dtype
    assert not out.size or (out == 0).all()
    grads = jax.grad(lambda q, k, v: mechanism(q, k, v, is_causal=causal)
                     .sum(), argnums=(0, 1, 2))(q, kv, kv)
    assert [g.shape for g in grads] == [q.shape, kv.shape, kv.shape]


@pytest.mark.parametrize('name', [  # one wrapper (any_batch_rank) for all
    n if n in ('blockwise', 'dot_product', 'linear', 'xl') else
    pytest.param(n, marks=pytest.mark.slow) for n in attention.names()])
def test_unbatched_and_many_batch_axes_as_jax_nn_and_flax_pass_them(name):
  """[T, N, H] as jax.nn allows, [*batch, T, N, H] as Flax layers pass:
  the same as the rank-4 call on the flattened batch."""
  mechanism = attention.get(name)
  keys = jax.random.split(jax.random.key(0), 3)
  q = jax.random.normal(keys[0], (2, 3, T, N, H))
  k, v = (jax.random.normal(x, (2, 3, T, K, H)) for x in keys[1:])
  flat = lambda x: x.reshape((6,) + x.shape[2:])
  causal = dict(is_causal=mechanism.causal)
  want = mechanism(flat(q), flat(k), flat(v), **causal)
  np.testing.assert_allclose(mechanism(q, k, v, **causal),
                             want.reshape(q.shape), atol=1e-6)
  np.testing.assert_allclose(mechanism(q[0, 1], k[0, 1], v[0, 1], **causal),
                             want[1], atol=1e-6)
  if name in ('dot_product', 'blockwise'):  # jax.nn's unbatched form, masks
    lengths = jnp.array([[5, 3, 6], [1, 2, 4]])  # lengths of shape batch
    np.testing.assert_allclose(
        mechanism(q, k, v, key_value_seq_lengths=lengths, **causal),
        mechanism(flat(q), flat(k), flat(v),
                  key_value_seq_lengths=lengths.reshape(6), **causal
                  ).reshape(q.shape), atol=1e-6)
    np.testing.assert_allclose(
        mechanism(q[0, 1], k[0, 1], v[0, 1]),
        jax.nn.dot_product_attention(q[0, 1], k[0, 1], v[0, 1]), atol=1e-5)
    mask = jax.random.bernoulli(keys[0], 0.7, (2, 3, 1, T, T))
    np.testing.assert_allclose(
        mechanism(q, k, v, mask=mask),
        mechanism(flat(q), flat(k), flat(v), mask=flat(mask)).reshape(
            q.shape), atol=1e-6)
