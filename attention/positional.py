"""Positional schemes as pure functions: RoPE, ALiBi, sinusoidal.

- RoPE (Su et al. 2021, "RoFormer", arXiv 2104.09864) rotates pairs of query
  and key features by position-dependent angles, so that logits depend on
  the distance `t - s` only. Pairs are `(x[i], x[i + H/2])` (the GPT-NeoX /
  LLaMA layout). Decoding passes the absolute positions of the new tokens.
- ALiBi (Press et al. 2022, "Train Short, Test Long", arXiv 2108.12409) adds
  `-slope[n] * |t - s|` to head n's logits. The exact kernels take the
  `[N]` slopes (`alibi_slopes=`) and build this bias per tile from
  positions; `alibi_bias` forms it whole, for tests and small inputs.
- Sinusoidal embeddings (Vaswani et al. 2017, arXiv 1706.03762) are added to
  token embeddings.

Learned absolute embeddings are a parameter table: see `models`.
"""

from __future__ import annotations

import math

import jax.numpy as jnp


def rope(x, positions, *, base: float = 10000.0):
  """Rotary position embedding of queries or keys.

  Args:
    x: `[B, T, N, H]` (N may be K), H even.
    positions: int `[B, T]` or `[T]`: absolute position of each token.
    base: wavelength base; frequencies are `base^(-2i/H)`.

  Returns:
    `[B, T, N, H]` in x's dtype, computed in float32. O(B T N H).
  """
  H = x.shape[-1]
  if H % 2:
    raise ValueError(f'rope needs an even head dim, got H={H}')
  positions = jnp.asarray(positions)
  if positions.ndim == 1:
    positions = positions[None, :]
  freq = base ** (-jnp.arange(0, H // 2, dtype=jnp.float32) * 2.0 / H)
  angle_BTF = positions.astype(jnp.float32)[:, :, None] * freq[None, None, :]
  cos, sin = jnp.cos(angle_BTF)[:, :, None], jnp.sin(angle_BTF)[:, :, None]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)
  return rotated.astype(x.dtype)


def alibi_slopes(num_heads: int):
  """The ALiBi head slopes `[N]` of the paper (geometric, interleaved).

  For N a power of two: `2^(-8 n / N)`, n = 1..N. Otherwise the slopes of the
  nearest lower power of two, then every other slope of the next one.
  """
  def powers(n):
    start = 2.0 ** (-8.0 / n)
    return [start ** (i + 1) for i in range(n)]

  lower = 2 ** math.floor(math.log2(num_heads))
  slopes = powers(lower)
  if lower != num_heads:
    slopes += powers(2 * lower)[0::2][:num_heads - lower]
  return jnp.asarray(slopes, jnp.float32)


def alibi_bias(slopes, q_positions, k_positions):
  """`-slope[n] * |t - s|` as float32 `[N, T, S]` (whole; for tests)."""
  distance = jnp.abs(q_positions[:, None] - k_positions[None, :])
  return -slopes[:, None, None] * distance[None].astype(jnp.float32)


def sinusoidal(positions, dim: int, *, base: float = 10000.0):
  """Sinusoidal embeddings `[..., T, dim]` (sin on even, cos on odd features).

  Args:
    positions: int `[..., T]`.
    dim: embedding width D, even.
  """
  if dim % 2:
    raise ValueError(f'sinusoidal needs an even dim, got {dim}')
  freq = base ** (-jnp.arange(0, dim // 2, dtype=jnp.float32) * 2.0 / dim)
  positions = jnp.asarray(positions, jnp.float32)
  angle = positions[..., None] * freq.reshape((1,) * positions.ndim + (-1,))
  return jnp.stack([jnp.sin(angle), jnp.cos(angle)], -1).reshape(
      angle.shape[:-1] + (dim,))
