"""Heavy blockwise checks at real sizes: `make test-slow`."""

import json
import subprocess
import sys

import jax.numpy as jnp
import pytest

from efficient_attention import attention
from tests.attention import cases
from tests.attention.exact import test_reference

pytestmark = pytest.mark.slow


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16],
                         ids=['f32', 'bf16'])
def test_matches_jax_nn_at_4k_with_default_chunks(dtype):
  case = cases.Case('4k', B=1, T=4096, S=4096, N=8, K=2, H=64,
                    is_causal=True, q_len=(4000,), kv_len=(3900,))
  test_reference.check_against_jax_nn(attention.blockwise_attention, case,
                                      dtype)


_RUN_64K = """
import json, resource, jax, jax.numpy as jnp
from efficient_attention import attention
shape = (1, 65536, 8, 64)
q, k, v = (jax.random.normal(jax.random.key(i), shape) for i in range(3))
loss = lambda q, k, v: attention.blockwise_attention(
    q, k, v, is_causal=True).sum()
grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)
finite = all(bool(jnp.isfinite(g).all()) for g in grads)
rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
print(json.dumps(dict(finite=finite, rss_gb=rss_gb)))
"""


def test_forward_backward_at_64k_fits_in_24_gb():
  """Causal forward+backward at N=65536 (B=1, 8 heads, H=64), own process."""
  result = subprocess.run([sys.executable, '-c', _RUN_64K], check=True,
                          capture_output=True, text=True, timeout=1800)
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert report['finite']
  assert report['rss_gb'] < 24, report
