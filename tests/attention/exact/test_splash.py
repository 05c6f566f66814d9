"""Splash attention behind blockwise_attention: the mask translation and the
dispatch, against our own scan, forward and backward (Pallas interpret
mode on the CPU, where a TPU runs the kernel natively)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from efficient_attention import attention
from efficient_attention.attention import masks
from efficient_attention.attention.exact import splash
from tests.attention import cases

B, T, N, K, H = 2, 256, 4, 2, 64  # splash blocks are multiples of 128
SEGMENTS = np.repeat(np.array([[0, 1, 2, 3], [5, 5, 6, 7]]), T // 4, axis=1)


def inputs(dtype, seed=0):
  keys = jax.random.split(jax.random.key(seed), 4)
  shapes = [(B, T, N, H), (B, T, K, H), (B, T, K, H), (B, T, N, H)]
  return [jax.random.normal(k, s, dtype) for k, s in zip(keys, shapes)]


def program(implementation, **kwargs):
  """jit of the output and the gradients of q, k, v of a weighted sum."""
  fn = functools.partial(attention.blockwise_attention,
                         implementation=implementation, query_chunk_size=64,
                         key_chunk_size=64, **kwargs)

  def loss(q, k, v, weights):
    out = fn(q, k, v)
    return jnp.sum(out.astype(jnp.float32) * weights), out
  return jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True))


def assert_same_as_the_scan(dtype=jnp.float32, **kwargs):
  x = inputs(dtype)
  want_grads, want = program('scan', **kwargs)(*x)
  got_grads, got = program('splash', **kwargs)(*x)
  for name, a, b in zip(('out', 'dq', 'dk', 'dv'), (got, *got_grads),
                        (want, *want_grads)):
    cases.assert_close(np.asarray(a, np.float32), np.asarray(b, np.float32),
                       dtype, name)
  return got


@pytest.mark.parametrize('kwargs,dtype', [
    (dict(is_causal=True), jnp.float32),
    (dict(mask=masks.per_head(masks.causal(), ~masks.causal()),
          logits_soft_cap=5.0), jnp.bfloat16),
    pytest.param(dict(is_causal=True, local_window_size=(16, 0)),
                 jnp.bfloat16, marks=pytest.mark.slow),
    pytest.param(dict(mask=masks.chunked(64) | masks.strided(32)),
                 jnp.float32, marks=pytest.mark.slow),
], ids=['causal-gqa', 'per-head-empty-rows-capped-bf16',
        'causal-window-bf16', 'chunked-or-strided'])
def test_position_masks_translate(kwargs, dtype):
  out = assert_same_as_the_scan(dtype, **kwargs)
  if 'logits_soft_cap' in kwargs:  # ~causal leaves the last query empty
    assert not np.asarray(out[:, -1, 1::2], np.float32).any()


def test_documents_become_segment_ids():
  assert_same_as_the_scan(mask=masks.document(SEGMENTS), is_causal=True)


def test_a_mask_with_nothing_visible_gives_zeros():
  q, k, v, _ = inputs(jnp.float32)
  out = attention.blockwise_attention(
      q, k, v, implementation='splash',
      mask=masks.sliding_window(0, 0) & ~masks.causal())
  assert not np.asarray(out).any()


def test_what_splash_cannot_express_falls_back_or_raises():
  q, k, v, _ = inputs(jnp.float32)
  lengths = jnp.array([T, 100])
  refused = [
      (dict(key_value_seq_lengths=lengths), 'key_value_seq_lengths'),
      (dict(bias=jnp.zeros((T, T))), 'bias'),
      (dict(query_offset=3), 'query_offset'),
      (dict(mask=masks.key_lengths(lengths)), 'masks holding data'),
  ]
  for kwargs, named in refused:
    with pytest.raises(ValueError, match=f"implementation='splash'.*{named}"):
      attention.blockwise_attention(q, k, v, implementation='splash',
                                    **kwargs)
  with pytest.raises(ValueError, match='multiples of 128, got T=255'):
    attention.blockwise_attention(q[:, :255], k[:, :255], v[:, :255],
                                  implementation='splash')
  with pytest.raises(ValueError, match='implementation must be one of'):
    attention.blockwise_attention(q, k, v, implementation='pallas')
  # 'auto' off a TPU is the scan, whatever the call.
  assert not splash.on_tpu()
  np.testing.assert_array_equal(
      attention.blockwise_attention(q, k, v, is_causal=True),
      attention.blockwise_attention(q, k, v, is_causal=True,
                                    implementation='scan'))
