"""attention.dot_product_attention against float64 NumPy and jax.nn."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from efficient_attention import attention
from tests.attention import cases

DTYPES = [jnp.float32, jnp.bfloat16]


# Each case in one dtype by default (both dtypes covered); the cross
# product in `make test-slow`.
@pytest.mark.parametrize('case,dtype', cases.covering(
    cases.CASES + cases.EXTRA_CASES, DTYPES, id_of=lambda x: getattr(
        x, 'name', None) or jnp.dtype(x).name))
def test_matches_float64_oracle(case, dtype):
  cases.check_against_oracle(attention.dot_product_attention, case, dtype)


@pytest.mark.parametrize('case', [
    pytest.param(c, marks=() if i == 1 else pytest.mark.slow)
    for i, c in enumerate(cases.CASES[:4])], ids=str)
def test_matches_float64_oracle_without_jit(case):
  cases.check_against_oracle(attention.dot_product_attention, case,
                             jnp.float32, jit=False)


def jax_nn(query, key, value, *, scale=None, **kwargs):
  return jax.nn.dot_product_attention(query, key, value, scale=scale,
                                      implementation='xla', **kwargs)


def check_against_jax_nn(fn, case, dtype):
  """fn equals jax.nn.dot_product_attention on every row that sees a key.

  jax.nn averages over masked keys where a row sees none; the cotangent of
  those rows is set to zero so that both define the same gradients.
  """
  x = cases.inputs(case, dtype)
  seen = cases.seen_rows(case, x)
  x['d_out'] = x['d_out'] * jnp.asarray(seen, dtype)
  out, grads = cases.output_and_grads(fn, case, x)
  want_out, want_grads = cases.output_and_grads(jax_nn, case, x)
  cases.assert_close(np.where(seen, out, 0), np.where(seen, want_out, 0),
                     dtype, 'output')
  for name in grads:
    cases.assert_close(grads[name], want_grads[name], dtype,
                       f'gradient of {name}')


@pytest.mark.parametrize('case,dtype', cases.covering(
    cases.CASES, DTYPES, id_of=lambda x: getattr(x, 'name', None) or
    jnp.dtype(x).name))
def test_matches_jax_nn(case, dtype):
  check_against_jax_nn(attention.dot_product_attention, case, dtype)


def test_row_that_sees_nothing_is_zero_with_finite_gradients():
  x = cases.inputs(cases.Case('m', mask=(2, 1, 37, 37)), jnp.float32)
  mask = x['mask'].at[:, :, 3].set(False)  # query 3 sees nothing
  f = functools.partial(attention.dot_product_attention, mask=mask)
  out = f(x['query'], x['key'], x['value'])
  np.testing.assert_array_equal(out[:, 3], 0.0)
  grads = jax.grad(lambda q, k, v: f(q, k, v).sum(), argnums=(0, 1, 2))(
      x['query'], x['key'], x['value'])
  assert all(np.isfinite(g).all() for g in grads)
  np.testing.assert_array_equal(grads[0][:, 3], 0.0)
