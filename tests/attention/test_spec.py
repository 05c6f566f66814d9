"""AttentionSpec: a mechanism, its options, a mask and scores as one value."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from efficient_attention import attention
from efficient_attention.attention import masks
from efficient_attention.attention import scores
from efficient_attention.attention.decoding import ring_cache
from efficient_attention.attention.spec import AttentionSpec, parse_mask, parse_scores

B, T, N, K, H = 2, 12, 4, 2, 8


def qkv(seed=0):
  keys = jax.random.split(jax.random.key(seed), 3)
  return (jax.random.normal(keys[0], (B, T, N, H)),
          jax.random.normal(keys[1], (B, T, K, H)),
          jax.random.normal(keys[2], (B, T, K, H)))


def test_mask_expressions_equal_their_constructors():
  pairs = [
      ('sliding_window(3)', masks.sliding_window(3)),
      ('chunked(4) | global_tokens((0, 5))',
       masks.chunked(4) | masks.global_tokens((0, 5))),
      ('sliding_window(2, right=1) & strided(3)',
       masks.sliding_window(2, right=1) & masks.strided(3)),
      ('per_head(strided(2), fixed(4, 1))',
       masks.per_head(masks.strided(2), masks.fixed(4, 1))),
      ('random_blocks(1, 4, seed=3)', masks.random_blocks(1, 4, seed=3)),
  ]
  for text, mask in pairs:
    np.testing.assert_array_equal(parse_mask(text).dense(T, T),
                                  mask.dense(T, T), err_msg=text)
  assert parse_mask('') is None


@pytest.mark.parametrize('text,match', [
    ('slidng_window(3)', "unknown mask 'slidng_window'.*sliding_window"),
    ('document(ids)', 'unknown mask'),  # data masks come with the inputs
    ('sliding_window(x)', 'must be literals'),
    ('__import__("os")', 'unknown mask'),
    ('sliding_window(3', 'not an expression'),
    ('sliding_window(-1)', 'must be an int >= 0'),
    ('sliding_window(3, 4, 5)', 'positional argument'),
])
def test_bad_mask_expressions_raise_value_errors(text, match):
  with pytest.raises(ValueError, match=match):
    parse_mask(text)


def test_score_expressions():
  parsed = parse_scores('soft_cap(30.0), self_logit(-5.0)')
  assert [type(s) for s in parsed] == [scores.SoftCap, scores.SelfLogit]
  with pytest.raises(ValueError, match='combine masks, not scores'):
    parse_scores('soft_cap(1.0) & soft_cap(2.0)')
  with pytest.raises(ValueError, match="unknown score 'softcap'"):
    parse_scores('softcap(1.0)')


def test_a_spec_call_is_the_mechanism_with_its_mask_and_scores():
  q, k, v = qkv()
  spec = AttentionSpec('blockwise', {'query_chunk_size': 4,
                                     'key_chunk_size': 3},
                       mask='sliding_window(3)', scores='soft_cap(2.0)')
  want = attention.dot_product_attention(
      q, k, v, is_causal=True, mask=masks.sliding_window(3),
      score=scores.soft_cap(2.0))
  np.testing.assert_allclose(spec(q, k, v, is_causal=True), want,
                             atol=1e-5, rtol=1e-5)
  # A call's own mask is ANDed with the spec's.
  lengths = jnp.array([7, 12])
  want = attention.dot_product_attention(
      q, k, v, is_causal=True,
      mask=masks.sliding_window(3) & masks.key_lengths(lengths),
      score=scores.soft_cap(2.0))
  np.testing.assert_allclose(
      spec(q, k, v, is_causal=True, mask=masks.key_lengths(lengths)), want,
      atol=1e-5, rtol=1e-5)


def test_specs_compare_by_value_and_round_trip_through_config():
  a = AttentionSpec('blockwise', {'query_chunk_size': 64},
                    mask='sliding_window(8)')
  b = AttentionSpec.create({'name': 'blockwise', 'mask': 'sliding_window(8)',
                            'options': (('query_chunk_size', 64),)})
  assert a == b and hash(a) == hash(b)
  assert a != AttentionSpec('blockwise', mask='sliding_window(9)')
  assert AttentionSpec.create(**a.to_config()) == a
  assert AttentionSpec.create('xl') == AttentionSpec('xl')
  with pytest.raises(ValueError, match="unknown option 'maks'"):
    AttentionSpec.create({'name': 'blockwise', 'maks': ''})


def test_mechanisms_without_logits_refuse_masks_and_scores_by_name():
  with pytest.raises(ValueError, match="'linear' does not support a mask"):
    AttentionSpec('linear', mask='chunked(4)')
  with pytest.raises(ValueError, match="'performer' does not support a score"):
    AttentionSpec('performer', scores='soft_cap(3.0)')
  q, k, v = qkv()
  with pytest.raises(ValueError, match='does not support score'):
    attention.linear_attention(q, k, v, score=scores.soft_cap(3.0))


def test_a_window_spec_decodes_on_a_ring_and_equals_the_call():
  spec = AttentionSpec('blockwise', mask='sliding_window(3)')
  assert spec.window == (3, 0)
  q, k, v = qkv(1)
  want = spec(q, k, v, is_causal=True)
  state = spec.init_state(B, K, H, max_length=1 << 20)
  assert isinstance(state, ring_cache.RingCache)
  step = jax.jit(spec.step)
  for t in range(T):
    out, state = step(state, q[:, t:t + 1], k[:, t:t + 1], v[:, t:t + 1])
    np.testing.assert_allclose(out[:, 0], want[:, t], atol=1e-5, rtol=1e-5)
  # Other masks decode over the whole cache, O(tokens so far).
  chunked = AttentionSpec('blockwise', mask='chunked(4)')
  assert chunked.window is None
  want = chunked(q, k, v, is_causal=True)
  state = chunked.init_state(B, K, H, max_length=T)
  out, _ = chunked.step(state, q, k, v)
  np.testing.assert_allclose(out, want, atol=1e-5, rtol=1e-5)
