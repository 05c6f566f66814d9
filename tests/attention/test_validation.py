"""Bad input gets an error that names the argument and what was expected."""

import jax.numpy as jnp
import pytest

import attention

FUNCTIONS = [attention.dot_product_attention, attention.blockwise_attention]
B, T, S, N, K, H = 2, 6, 5, 4, 2, 8


def qkv(query=(B, T, N, H), key=(B, S, K, H), value=(B, S, K, H)):
  return jnp.ones(query), jnp.ones(key), jnp.ones(value)


SHAPE_ERRORS = [
    (dict(query=(B, T, N * H)), {}, 'query must be'),
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
  with pytest.raises(AssertionError, match=message):
    fn(*qkv(**shapes), **kwargs)


VALUE_ERRORS = [
    (dict(local_window_size=-1), 'local_window_size'),
    (dict(local_window_size=(1, 2, 3)), 'local_window_size'),
    (dict(dropout_rate=0.1, deterministic=False), 'dropout'),
    (dict(module=object()), 'sow'),
    (dict(scale=jnp.float32(0.5)), 'scale'),
]


@pytest.mark.parametrize('fn', FUNCTIONS, ids=lambda f: f.__name__)
@pytest.mark.parametrize('kwargs,message', VALUE_ERRORS)
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
