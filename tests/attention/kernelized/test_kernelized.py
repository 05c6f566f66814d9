"""The chunked scan shared by linear and Performer attention, in float64."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from efficient_attention import attention
H = 16
PROJECTION = attention.draw_projection(jax.random.key(0), 16, H)


def _elu_plus_one(x):
  return jax.nn.elu(x) + 1


def _positive(x):  # FAVOR+ features of x~ = x H^(-1/4)
  x = x * H**-0.25
  return jnp.exp(x @ PROJECTION.T.astype(x.dtype) -
                 0.5 * jnp.sum(x * x, -1, keepdims=True))


MECHANISMS = {  # name: (ours, features of the plain form, eps)
    'linear': (functools.partial(attention.linear_attention, is_causal=True),
               _elu_plus_one, 1e-6),
    'performer': (functools.partial(attention.performer_attention,
                                    is_causal=True, projection=PROJECTION,
                                    num_features=16), _positive, 0.0),
}


def _plain_cumsum(phi, eps, q, k, v):
  """The plain form: a `[T, F, H]` prefix state per token, no chunks."""
  phi_q, phi_k = phi(q), phi(k)
  kv = jnp.cumsum(jnp.einsum('BTKF,BTKH->BTKFH', phi_k, v), axis=1)
  z = jnp.cumsum(phi_k, axis=1)
  num = jnp.einsum('BTKF,BTKFH->BTKH', phi_q, kv)
  return num / (jnp.einsum('BTKF,BTKF->BTK', phi_q, z) + eps)[..., None]


def _gradient_error(name, T):
  """Max gradient error of ours (float32) relative to the largest gradient."""
  ours, phi, eps = MECHANISMS[name]
  rng = np.random.default_rng(T)
  q, k, v = (jnp.asarray(rng.standard_normal((1, T, 1, H)), jnp.float64)
             for _ in range(3))
  cotangent = jnp.asarray(rng.standard_normal(q.shape), jnp.float64)
  loss = lambda f, *a: jnp.sum(f(*a) * cotangent.astype(a[0].dtype))
  want = jax.jit(jax.grad(functools.partial(loss, functools.partial(
      _plain_cumsum, phi, eps)), argnums=(0, 1, 2)))(q, k, v)
  got = jax.jit(jax.grad(functools.partial(loss, ours), argnums=(0, 1, 2)))(
      *(x.astype(jnp.float32) for x in (q, k, v)))
  return max(float(jnp.max(jnp.abs(g - w)) / jnp.max(jnp.abs(w)))
             for g, w in zip(got, want))


@pytest.mark.parametrize('name', [  # the Performer's in make test-slow
    pytest.param(n, marks=pytest.mark.slow) if n == 'performer' else n
    for n in sorted(MECHANISMS)])
def test_gradient_error_does_not_grow_with_length(name):
  with jax.enable_x64(True):
    short, long = _gradient_error(name, 256), _gradient_error(name, 8192)
  assert short < 1e-5 and long < 1e-5, (short, long)
  assert long < 2 * short, (short, long)


if __name__ == '__main__':  # python -m tests.attention.kernelized.test_kernelized
  with jax.enable_x64(True):
    for mechanism in sorted(MECHANISMS):
      print(mechanism, {T: f'{_gradient_error(mechanism, T):.2g}'
                        for T in (256, 8192)})
