"""The registry, and conformance checks for every registered mechanism."""

import functools

import jax.numpy as jnp
import numpy as np
import pytest

import attention
from tests.attention import cases

# Options each registered mechanism is conformance-tested with. A mechanism
# registered without an entry here fails test_every_mechanism_is_tested.
CONFORMANCE = {
    'dot_product': {},
    'blockwise': dict(query_chunk_size=16, key_chunk_size=5),
}


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
    attention.register('blockwise', lambda q, k, v: q)


@pytest.mark.parametrize('case', [cases.CASES[6], cases.CASES[-1]], ids=str)
@pytest.mark.parametrize('name', sorted(CONFORMANCE))
def test_conformance_exact(name, case):
  fn = functools.partial(attention.get(name), **CONFORMANCE[name])
  cases.check_against_oracle(fn, case, jnp.float32)
