"""Linformer against its own definition, softmax(Q (E K)^T) (F V) written
out densely, its refusals, its place in models, and memory linear in T."""

import functools

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from efficient_attention import attention
from efficient_attention import models
from efficient_attention.attention.lowrank import linformer
from tests.attention.sparse import reference

B, T, N, K, H, R = 2, 37, 4, 2, 16, 8  # R: the projected length k


def definition(q, k, v, projection, lengths=None):
  """The paper's equation, with padded keys zeroed first; GQA repeated."""
  if lengths is not None:
    keep = (jnp.arange(k.shape[1])[None, :] < lengths[:, None])[..., None,
                                                                  None]
    k, v = jnp.where(keep, k, 0), jnp.where(keep, v, 0)
  E, F = projection[0][..., :k.shape[1]], projection[-1][..., :k.shape[1]]
  if E.ndim == 2:  # one pair for every head
    E, F = (jnp.broadcast_to(P, (K,) + P.shape) for P in (E, F))
  # Projected rows are held in the input dtype, as the kernel holds them.
  project = lambda P, x: jnp.einsum('KRS,BSKH->BRKH', P, x.astype(
      jnp.float32)).astype(x.dtype).astype(jnp.float32)
  k = jnp.repeat(project(E, k), N // K, axis=2)
  v = jnp.repeat(project(F, v), N // K, axis=2)
  logits = jnp.einsum('BTNH,BRNH->BNTR', q.astype(jnp.float32), k) / np.sqrt(H)
  out = jnp.einsum('BNTR,BRNH->BTNH', jax.nn.softmax(logits, -1), v)
  return out.astype(q.dtype)


def inputs(dtype, seed=0):
  keys = jax.random.split(jax.random.key(seed), 4)
  shapes = [(B, T, N, H), (B, T, K, H), (B, T, K, H), (B, T, N, H)]
  return [jax.random.normal(k, s, dtype) for k, s in zip(keys, shapes)]


@pytest.mark.parametrize('share,heads,length,dtype', [
    (False, True, T, jnp.float32), (True, True, 64, jnp.float32),
    (False, False, 50, jnp.bfloat16)],
    ids=['E-F', 'shared-longer', 'per-head-bf16'])
def test_equals_its_definition(share, heads, length, dtype):
  projection = linformer.draw_projection(
      jax.random.key(3), R, length, share_key_value=share,
      num_kv_heads=None if heads else K)
  options = dict(projected_length=R, share_key_value=share,
                 share_heads=heads)
  lengths = jnp.array([37, 20])
  reference.assert_same(
      functools.partial(attention.linformer_attention, projection=projection,
                        key_value_seq_lengths=lengths, **options),
      functools.partial(definition, projection=projection, lengths=lengths),
      inputs(dtype), dtype)


def test_default_projection_is_the_papers_draw():
  """Without a projection: N(0, 1/k) from the seed, the same every call."""
  q, k, v, _ = inputs(jnp.float32)
  got = attention.linformer_attention(q, k, v, projected_length=R, seed=5)
  drawn = linformer.draw_projection(jax.random.key(5), R, T)
  np.testing.assert_allclose(got, definition(q, k, v, drawn), atol=2e-5)
  big = linformer.draw_projection(jax.random.key(0), 64, 4096)
  assert abs(float(big.var()) * 64 - 1) < 0.02


def test_refusals_name_the_argument():
  q, k, v, _ = inputs(jnp.float32)
  fn = functools.partial(attention.linformer_attention, projected_length=R)
  with pytest.raises(ValueError, match='cannot be causal'):
    fn(q, k, v, is_causal=True)
  with pytest.raises(ValueError, match='does not support mask'):
    fn(q, k, v, mask=jnp.ones((T, T), bool))
  with pytest.raises(ValueError, match=r'projection must be \[count, k, n\]'):
    fn(q, k, v, projection=jnp.ones((2, R, T - 1)))
  with pytest.raises(ValueError, match=r'must be \[count, K, k, n\] = '
                     r'\[2, 2, 8, .n.\]'):
    fn(q, k, v, projection=jnp.ones((2, R, T)), share_heads=False)
  with pytest.raises(ValueError, match='share_layers must be'):
    fn(q, k, v, share_layers=1)
  with pytest.raises(ValueError, match='no log-sum-exp'):
    fn(q, k, v, return_residual=True)


def test_a_decoder_refuses_it_and_an_encoder_learns_its_projections():
  config = models.TransformerConfig(
      vocab_size=32, model_dim=16, num_layers=1, num_heads=2, mlp_dim=32,
      max_length=64, attention='linformer',
      attention_options=(('projected_length', 8), ('sequence_length', 64)))
  with pytest.raises(ValueError, match="decoder cannot use attention "
                     "'linformer'.*cannot be causal"):
    models.DecoderLM(config, rngs=nnx.Rngs(0))
  encoder = models.Encoder(config, num_classes=3, rngs=nnx.Rngs(0))
  layer = encoder.stack.blocks[0].attention
  assert layer.projection[...].shape == (2, 8, 64)
  tokens = jnp.ones((1, 40), jnp.int32)
  grads = nnx.grad(lambda m: m.classify(m(tokens)).sum())(encoder)
  assert jnp.abs(grads.stack.blocks[0].attention.projection[...]).sum() > 0


def test_memory_grows_linearly_in_the_length():
  """Compiled temporary memory, forward and backward, at T = S = 1k, 2k,
  4k with k = 64: each doubling at most doubles it (dense attention's
  grows fourfold)."""
  def temp(length):
    shape = jax.ShapeDtypeStruct((1, length, 4, 32), jnp.float32)
    loss = lambda q, k, v: attention.linformer_attention(
        q, k, v, projected_length=64).sum()
    compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(
        shape, shape, shape).compile()
    return compiled.memory_analysis().temp_size_in_bytes
  sizes = [temp(n) for n in (1024, 2048, 4096)]
  for small, large in zip(sizes, sizes[1:]):
    assert large <= 2.2 * small, sizes


def test_layers_share_one_projection_when_asked():
  """share_layers ties every Linformer layer's projection to the first's:
  one parameter, whose gradient is the sum of the untied layers'."""
  def encoder(**options):
    config = models.TransformerConfig(
        vocab_size=32, model_dim=16, num_layers=3, num_heads=2, mlp_dim=32,
        max_length=64, attention='linformer', attention_options=tuple(dict(
            projected_length=8, sequence_length=64, **options).items()))
    return models.Encoder(config, num_classes=3, rngs=nnx.Rngs(0))
  tied, untied = encoder(share_layers=True), encoder()
  projections = [b.attention.projection for b in tied.stack.blocks]
  assert all(p is projections[0] for p in projections)
  count = lambda m: sum(x.size for x in jax.tree.leaves(nnx.state(m, nnx.Param)))
  assert count(untied) - count(tied) == 2 * 2 * 8 * 64
  for block in untied.stack.blocks:  # the same values, held apart
    block.attention.projection[...] = projections[0][...]
  tokens = jnp.arange(40)[None] % 32
  loss = lambda m: m.classify(m(tokens)).sum()
  np.testing.assert_allclose(loss(tied), loss(untied), rtol=1e-6)
  tied_grad = nnx.grad(loss)(tied).stack.blocks[0].attention.projection[...]
  untied_grads = nnx.grad(loss)(untied).stack.blocks
  total = sum(untied_grads[i].attention.projection[...] for i in range(3))
  np.testing.assert_allclose(tied_grad, total, rtol=1e-4, atol=1e-7)
