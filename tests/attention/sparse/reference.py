"""Comparing a sparse mechanism with the dense reference under the same
pattern: outputs and gradients of one weighted loss, compiled once each."""

import jax
import jax.numpy as jnp
import numpy as np

from tests.attention import cases


def grads_program(fn):
  """jit(grad) of `sum(fn(q, k, v, *rest) * weights)`, with the output."""
  def loss(q, k, v, weights, *rest):
    out = fn(q, k, v, *rest)
    return jnp.sum(out.astype(jnp.float32) * weights), out
  return jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True))


def assert_same(got_fn, want_fn, inputs, dtype, got_rest=(), want_rest=()):
  """Output and gradients of q, k, v of `got_fn` equal `want_fn`'s;
  `inputs` are `(q, k, v, weights)`. Returns the output."""
  want_grads, want = grads_program(want_fn)(*inputs, *want_rest)
  got_grads, got = grads_program(got_fn)(*inputs, *got_rest)
  for name, a, b in zip(('out', 'dq', 'dk', 'dv'), (got, *got_grads),
                        (want, *want_grads)):
    # atol relative to the largest expected magnitude (cases.assert_close).
    cases.assert_close(np.asarray(a, np.float32), np.asarray(b, np.float32),
                       dtype, name)
  return got
