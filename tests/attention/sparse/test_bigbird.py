"""BigBird: the pattern against the paper's definition (window, global and
random blocks, one fixed draw), the mechanism against the dense reference
under the same pattern, on both paths."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from efficient_attention import attention
from efficient_attention.attention.sparse import bigbird as bb
from tests.attention.sparse import reference

B, T, N, H = 2, 45, 4, 16
OPTIONS = dict(block_size=4, window_blocks=3, global_blocks=1,
               random_blocks=2, seed=3)


@pytest.mark.parametrize('is_causal', [False, True], ids=['both', 'causal'])
def test_pattern_is_the_papers(is_causal):
  """Zaheer et al. 2020, Appendix D: block i sees blocks i-1..i+1, the
  global block 0 (which sees all), and r random blocks outside those; the
  draw is fixed by the seed, and when causal only earlier blocks are
  drawn, whatever the length."""
  dense = bb.pattern(is_causal=is_causal, **OPTIONS).dense(T, T)
  b, blocks = 4, -(-T // 4)
  q, k = np.arange(T)[:, None] // b, np.arange(T)[None, :] // b
  fixed = (np.abs(q - k) <= 1) | (q == 0) | (k == 0)
  assert (dense >= fixed).all()
  extra = dense & ~fixed  # the random blocks, whole blocks at a time
  per_block = extra[::b, ::b]
  np.testing.assert_array_equal(
      np.repeat(np.repeat(per_block, b, 0), b, 1)[:T, :T], extra)
  drawn = per_block.sum(1)
  for i in range(1, blocks):
    candidates = [j for j in range(blocks) if abs(j - i) > 1 and j >= 1
                  and (j <= i or not is_causal)]
    assert drawn[i] == min(2, len(candidates)), i
    assert set(np.nonzero(per_block[i])[0]) <= set(candidates), i
  np.testing.assert_array_equal(
      dense, bb.pattern(is_causal=is_causal, **OPTIONS).dense(T, T))
  assert (bb.pattern(is_causal=is_causal, **{**OPTIONS, 'seed': 4}).dense(
      T, T) != dense).any()
  if is_causal:  # a longer sequence keeps the rows of a shorter one
    longer = bb.pattern(is_causal=True, **OPTIONS).dense(2 * T, 2 * T)
    np.testing.assert_array_equal(longer[:T, :T], dense)


def inputs(dtype, seed=0):
  keys = jax.random.split(jax.random.key(seed), 4)
  shapes = [(B, T, N, H), (B, T, 2, H), (B, T, 2, H), (B, T, N, H)]
  return [jax.random.normal(k, s, dtype) for k, s in zip(keys, shapes)]


@pytest.mark.parametrize('is_causal,dtype,chunks,kwargs', [
    (False, jnp.float32, (16, 5), {}),
    (True, jnp.bfloat16, (4, 4), {}),
    (True, jnp.float32, (16, 5), dict(
        query_offset=0, key_value_seq_lengths=jnp.array([45, 17]))),
], ids=['both-f32', 'causal-bf16', 'mask-path-lengths'])
def test_equals_the_dense_reference_under_its_pattern(is_causal, dtype,
                                                      chunks, kwargs):
  dense = jnp.asarray(bb.pattern(is_causal=is_causal, **OPTIONS).dense(T, T))
  reference.assert_same(
      functools.partial(attention.bigbird_attention, is_causal=is_causal,
                        query_chunk_size=chunks[0], key_chunk_size=chunks[1],
                        **OPTIONS, **kwargs),
      functools.partial(attention.dot_product_attention, mask=dense,
                        is_causal=is_causal, **kwargs), inputs(dtype), dtype)


def test_options_are_checked():
  q, k, v, _ = inputs(jnp.float32)
  with pytest.raises(ValueError, match='window_blocks must be odd'):
    attention.bigbird_attention(q, k, v, window_blocks=2)
  with pytest.raises(ValueError, match="unknown option 'random_block'"):
    attention.bigbird_attention(q, k, v, random_block=2)


def test_each_layer_of_a_model_has_its_own_fixed_draw():
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from efficient_attention import models  # pylint: disable=g-import-not-at-top
  config = models.TransformerConfig(
      vocab_size=16, model_dim=16, num_layers=3, num_heads=2, mlp_dim=32,
      max_length=64, attention='bigbird',
      attention_options=(('block_size', 4), ('seed', 7)))
  model = models.Encoder(config, rngs=nnx.Rngs(0))
  seeds = [block.attention.options.seed for block in model.stack.blocks]
  assert seeds == [7, 8, 9]
