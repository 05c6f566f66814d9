"""RoPE, ALiBi and sinusoidal positions."""

import jax.numpy as jnp
import numpy as np
import pytest

from efficient_attention import attention
from efficient_attention.attention import positional


def test_rope_logits_depend_only_on_distance():
  rng = np.random.default_rng(0)
  q = jnp.asarray(rng.standard_normal((1, 1, 2, 16)), jnp.float32)
  k = jnp.asarray(rng.standard_normal((1, 1, 2, 16)), jnp.float32)
  logit = lambda tq, tk: jnp.sum(positional.rope(q, jnp.array([tq])) *
                                 positional.rope(k, jnp.array([tk])))
  for shift in (1, 17, 1000):
    np.testing.assert_allclose(logit(5 + shift, 2 + shift), logit(5, 2),
                               rtol=1e-4)
  assert not np.isclose(logit(5, 2), logit(5, 3))


def test_rope_keeps_norms_and_is_identity_at_zero():
  x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 7, 3, 8)),
                  jnp.float32)
  y = positional.rope(x, jnp.arange(7))
  np.testing.assert_allclose(jnp.linalg.norm(y, axis=-1),
                             jnp.linalg.norm(x, axis=-1), rtol=1e-5)
  np.testing.assert_allclose(y[:, 0], x[:, 0], atol=1e-6)
  with pytest.raises(ValueError, match='even head dim'):
    positional.rope(jnp.ones((1, 2, 1, 3)), jnp.arange(2))


def test_alibi_slopes_of_the_paper():
  np.testing.assert_allclose(positional.alibi_slopes(8),
                             [2.0 ** -i for i in range(1, 9)])
  # 12 heads: the 8 slopes of 8 heads, then every other slope of 16 heads
  # (2^(-i/2), i = 1, 3, 5, 7), as in the paper's code.
  np.testing.assert_allclose(
      positional.alibi_slopes(12),
      [2.0 ** -i for i in range(1, 9)] +
      [2.0 ** -(i / 2) for i in (1, 3, 5, 7)],
      rtol=1e-6)


@pytest.mark.parametrize('fn', [attention.dot_product_attention,
                                attention.blockwise_attention])
def test_alibi_slopes_argument_equals_the_whole_bias(fn):
  rng = np.random.default_rng(2)
  q = jnp.asarray(rng.standard_normal((2, 20, 4, 8)), jnp.float32)
  k = jnp.asarray(rng.standard_normal((2, 20, 2, 8)), jnp.float32)
  slopes = positional.alibi_slopes(4)
  bias = positional.alibi_bias(slopes, jnp.arange(20), jnp.arange(20))
  want = attention.dot_product_attention(q, k, k, bias=bias[None],
                                         is_causal=True)
  kwargs = {'query_chunk_size': 8, 'key_chunk_size': 3} if (
      fn is attention.blockwise_attention) else {}
  got = fn(q, k, k, alibi_slopes=slopes, is_causal=True, **kwargs)
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_sinusoidal_matches_the_formula():
  emb = positional.sinusoidal(jnp.arange(5), 6)
  pos, i = np.arange(5)[:, None], np.arange(3)[None, :]
  angle = pos / 10000 ** (2 * i / 6)
  np.testing.assert_allclose(emb[:, 0::2], np.sin(angle), atol=1e-6)
  np.testing.assert_allclose(emb[:, 1::2], np.cos(angle), atol=1e-6)
