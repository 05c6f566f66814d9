"""Infini-attention: local causal attention plus a compressive memory.

Munkhdalai et al. 2024, "Leave No Context Behind: Efficient Infinite
Context Transformers with Infini-attention" (arXiv 2404.07143). The input
is cut into segments of L tokens. Inside a segment, causal softmax
attention (`blockwise_attention`). Across segments, each key/value head
keeps a memory M `[H, H]` and a normaliser z `[H]`, with sigma = ELU + 1:

  read:    A_mem = sigma(Q) M / (sigma(Q) z)           (0 while z is 0)
  linear:  M += sigma(K)^T V
  delta:   M += sigma(K)^T (V - sigma(K) M / (sigma(K) z))
  both:    z += sum_t sigma(K_t)
  output:  g A_mem + (1 - g) A_local,  g = sigmoid(gate_logits) per head

A segment reads the memory of the segments before it, then writes its own
keys and values (the delta rule subtracts what the memory already returns
for a key, so writing a pair twice leaves M as it was). The memory holds
content only: with `rope_base`, RoPE rotates queries and keys for the local
attention alone, and the memory reads and writes the un-rotated vectors, so
both sides of it see the same thing. Local attention never leaves its
segment, so RoPE uses positions from the segment's start: the same logits
as absolute positions, without float32 angles of a millionth token.

State: `Memory` (M, z and the tokens seen), O(K H^2) per sequence whatever
its length; `segment_step` is one segment, `scan_segments` a whole sequence
in a `lax.scan` (constant memory in the forward pass; the backward pass
keeps one memory per segment). Decoding (`init_state`/`step`,
`attention.memory.infini_decoding`) carries the memory and the keys and values of
the unfinished segment, and writes them when it fills.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from efficient_attention.attention import arguments
from efficient_attention.attention import masks
from efficient_attention.attention import scores
from efficient_attention.attention.types import (Any, ArrayLike, DTypeLike, Output,
                                               PrecisionLike)
from efficient_attention.attention import options as options_lib
from efficient_attention.attention.exact import blockwise
from efficient_attention.attention.kernelized import chunked
from efficient_attention.attention.kernelized import linear
from efficient_attention.attention import positional

RULES = ('delta', 'linear')
_REFUSED_WHY = 'segments attend causally to themselves and the memory'
# The gate's logit when none is given, and where models start learning it:
# g = sigmoid(-3) = 0.05, the memory nearly shut. With g = 1/2 from the
# start (reading an empty, then untrained, memory), a 2-layer model did not
# learn to copy a passkey inside one segment in 600 steps; from -3 it did in
# 300 to 500, as full attention does (experiments/configs/passkey.py).
DEFAULT_GATE_LOGIT = -3.0


@dataclasses.dataclass(frozen=True)
class InfiniOptions(options_lib.Options):
  """Options of `infini_attention` (the per-head gates are an argument)."""

  segment_size: int = 2048  # L, tokens per segment
  update: str = 'delta'  # memory rule, one of RULES
  chunk_size: int = 512  # tile size of the local attention in a segment

  def __post_init__(self):
    where = 'InfiniOptions'
    options_lib.check_positive_int(where, 'segment_size', self.segment_size)
    options_lib.check_choice(where, 'update', self.update, RULES)
    options_lib.check_positive_int(where, 'chunk_size', self.chunk_size)


class Memory(NamedTuple):
  """Compressive memory of one batch of sequences (a pytree)."""

  matrix: jax.Array  # float32 [B, K, H, H]: sum of sigma(k)^T v
  normaliser: jax.Array  # float32 [B, K, H]: sum of sigma(k)
  position: jax.Array  # int32 [B]: tokens written so far


def init_memory(batch_size: int, num_kv_heads: int, head_dim: int) -> Memory:
  """An empty memory."""
  B, K, H = batch_size, num_kv_heads, head_dim
  return Memory(jnp.zeros((B, K, H, H), jnp.float32),
                jnp.zeros((B, K, H), jnp.float32), jnp.zeros((B,), jnp.int32))


def _sigma(x):
  return linear.FEATURE_MAPS['elu_plus_one'](x.astype(jnp.float32))


def retrieve(sigma_q_BLKGH, memory: Memory):
  """`sigma(Q) M / (sigma(Q) z)` float32 `[B, L, K, G, H]`; 0 where z is 0."""
  num = jnp.einsum('BLKGH,BKHD->BLKGD', sigma_q_BLKGH, memory.matrix)
  den = jnp.einsum('BLKGH,BKH->BLKG', sigma_q_BLKGH, memory.normaliser)
  return chunked.normalise(num, den, 0.0)  # den >= 0: 0 only when empty


def write(memory: Memory, key_BLKH, value_BLKH, valid_BL, rule: str):
  """The memory after writing one segment's valid keys and values."""
  sigma_k = _sigma(key_BLKH) * valid_BL[:, :, None, None]
  value = value_BLKH.astype(jnp.float32)
  if rule == 'delta':
    value = value - retrieve(sigma_k[:, :, :, None], memory)[:, :, :, 0]
  matrix = memory.matrix + jnp.einsum('BLKH,BLKD->BKHD', sigma_k, value)
  normaliser = memory.normaliser + jnp.sum(sigma_k, axis=1)
  position = memory.position + jnp.sum(valid_BL, axis=1, dtype=jnp.int32)
  return Memory(matrix, normaliser, position)


def segment_step(query, key, value, memory: Memory, gate_logits, *,
                 update: str = InfiniOptions.update, scale=None,
                 rope_base=None, num_valid=None,
                 chunk_size: int = InfiniOptions.chunk_size):
  """One segment: `(query, key, value, memory, gate_logits) -> (out, memory)`.

  Args:
    query: `[B, L, N, H]`, content only (no RoPE applied).
    key, value: `[B, L, K, H]`.
    memory: `Memory` of the segments before.
    gate_logits: `[N]`: g = sigmoid(gate_logits) weighs the memory.
    update: 'delta' or 'linear'.
    scale: local logit scale; default `1 / sqrt(H)`.
    rope_base: RoPE for the local attention, at positions `0..L-1` from
      the segment's start; None: no rotation.
    num_valid: optional int `[B]`: tokens of this segment that are real
      (the rest is padding: never written, outputs zero).
    chunk_size: tile size of the local blockwise attention.

  Returns:
    `(out [B, L, N, H] in the query's dtype, Memory)`. O(L^2 H + L H^2)
    time per head, O(L + H^2) memory.
  """
  B, L, N, H = query.shape
  K = key.shape[2]
  valid = jnp.ones((B, L), bool)
  if num_valid is not None:
    valid = jnp.arange(L)[None, :] < num_valid[:, None]
  q_local, k_local = query, key
  if rope_base is not None:
    positions = jnp.arange(L)
    q_local = positional.rope(query, positions, base=rope_base)
    k_local = positional.rope(key, positions, base=rope_base)
  local = blockwise.blockwise_attention(
      q_local, k_local, value, scale=scale, is_causal=True,
      key_value_seq_lengths=num_valid, query_chunk_size=min(chunk_size, L),
      key_chunk_size=min(chunk_size, L))
  recalled = retrieve(_sigma(query).reshape(B, L, K, N // K, H), memory)
  out = mix(gate_logits, recalled, local)
  out = jnp.where(valid[:, :, None, None], out, 0.0)
  new_memory = write(memory, key, value, valid, update)
  return out.astype(query.dtype), new_memory


def mix(gate_logits, recalled_BLKGH, local_BLNH):
  """`g A_mem + (1 - g) A_local` float32 `[B, L, N, H]`, g per head."""
  B, L, K, G, H = recalled_BLKGH.shape
  gate = jax.nn.sigmoid(jnp.asarray(gate_logits, jnp.float32)).reshape(
      1, 1, K, G, 1)
  out = gate * recalled_BLKGH + (1.0 - gate) * local_BLNH.reshape(
      B, L, K, G, H).astype(jnp.float32)
  return out.reshape(B, L, K * G, H)


def check_options(update, segment_size, gate_logits, N):
  """Validates the options; returns the gate logits float32 `[N]`."""
  if update not in RULES:
    raise ValueError(f'update must be one of {RULES}, got {update!r}')
  arguments.check_positive_int('segment_size', segment_size)
  gate = jnp.full((N,), DEFAULT_GATE_LOGIT, jnp.float32) if (
      gate_logits is None) else jnp.asarray(gate_logits, jnp.float32)
  if gate.shape != (N,):
    raise ValueError(f'gate_logits must be [N] = ({N},), got shape '
                     f'{gate.shape}')
  return gate


def scan_segments(query, key, value, memory: Memory | None = None,
                  gate_logits=None, *,
                  segment_size: int = InfiniOptions.segment_size,
                  update: str = InfiniOptions.update, scale=None,
                  rope_base=None, key_value_seq_lengths=None,
                  chunk_size: int = InfiniOptions.chunk_size):
  """A whole sequence, segment by segment: `(out [B, T, N, H], Memory)`.

  Args:
    query: `[B, T, N, H]`; key, value: `[B, T, K, H]`.
    memory: the memory to start from (default: empty); its `position` is
      where these tokens start.
    gate_logits: `[N]`; default `DEFAULT_GATE_LOGIT` (-3: g = 0.05).
    segment_size: L; T is padded to a multiple of it (padding is never
      written to the memory).
    key_value_seq_lengths: optional int `[B]`: tokens past it are padding.
    update, scale, rope_base, chunk_size: as in `segment_step`.

  Each segment is read with a dynamic slice, written into the output in
  place, and the body is rematerialised, so the forward pass holds one
  segment's tiles whatever T (plus a padded copy of the inputs when L does
  not divide T).
  """
  B, T, N, H = query.shape
  K = key.shape[2]
  gate = check_options(update, segment_size, gate_logits, N)
  L = min(segment_size, T)
  num_segments = -(-T // L)
  pad = num_segments * L - T
  if pad:
    query, key, value = (jnp.pad(x, [(0, 0), (0, pad), (0, 0), (0, 0)])
                         for x in (query, key, value))
  lengths = jnp.full((B,), T, jnp.int32)
  if key_value_seq_lengths is not None:
    lengths = jnp.minimum(lengths, key_value_seq_lengths)
  if memory is None:
    memory = init_memory(B, K, H)

  @jax.checkpoint
  def body(carry, _):
    memory, out, start = carry
    take = lambda x: jax.lax.dynamic_slice_in_dim(x, start, L, axis=1)
    segment, memory = segment_step(
        take(query), take(key), take(value), memory, gate, update=update,
        scale=scale, rope_base=rope_base,
        num_valid=jnp.clip(lengths - start, 0, L), chunk_size=chunk_size)
    out = jax.lax.dynamic_update_slice_in_dim(out, segment, start, axis=1)
    return (memory, out, start + L), None

  # The output (updated in place) and the segment's start ride in the
  # carry: no temporary grows with T.
  (memory, out, _), _ = jax.lax.scan(
      body, (memory, jnp.zeros_like(query), jnp.int32(0)), None,
      length=num_segments)
  return out[:, :T], memory


@arguments.any_batch_rank
@options_lib.takes(InfiniOptions)
def infini_attention(query: ArrayLike, key: ArrayLike, value: ArrayLike,
                     bias: ArrayLike | None = None,
                     mask: ArrayLike | masks.Mask | None = None, *,
                     scale: float | None = None, is_causal: bool = True,
                     query_seq_lengths: ArrayLike | None = None,
                     key_value_seq_lengths: ArrayLike | None = None,
                     local_window_size: int | tuple[int, int] | None = None,
                     gate_logits: ArrayLike | None = None, segment_size: int,
                     update: str, rope_base: float | None = None,
                     chunk_size: int, dropout_rng: jax.Array | None = None,
                     dropout_rate: float = 0.0, broadcast_dropout: bool = True,
                     deterministic: bool = True,
                     dtype: DTypeLike | None = None,
                     precision: PrecisionLike = None, module: Any = None,
                     alibi_slopes: ArrayLike | None = None,
                     logits_soft_cap: float | None = None,
                     score: scores.Score | None = None,
                     return_residual: bool = False) -> Output:
  """Infini-attention (Munkhdalai et al. 2024, arXiv 2404.07143) over a
  whole sequence from an empty memory; see `scan_segments` for the memory.

  Args:
    query: `[B, T, N, H]` (content: RoPE, if any, through `rope_base`).
    key, value: `[B, T, K, H]` (self-attention, S = T), K dividing N.
    is_causal: must be True (the memory is causal by construction).
    gate_logits, segment_size, update, rope_base, chunk_size: as in
      `scan_segments`.
    query_seq_lengths, key_value_seq_lengths: optional int `[B]`.
    bias, mask, local_window_size, alibi_slopes, logits_soft_cap: refused
      (ValueError); dropout_rng, dropout_rate, broadcast_dropout,
      deterministic, dtype, precision, module: Flax's `attention_fn`
      keywords.

  Returns:
    `[B, T, N, H]` in the query's dtype. O(T (L + H) H) time per head,
    O(L^2 + H^2) memory in the forward pass.
  """
  del dropout_rng, broadcast_dropout, precision
  arguments.refuse('infini_attention', _REFUSED_WHY, bias=bias, mask=mask,
                   local_window_size=local_window_size,
                   alibi_slopes=alibi_slopes, logits_soft_cap=logits_soft_cap,
                   score=score)
  if not is_causal:
    raise ValueError('infini_attention is causal: is_causal must be True')
  args = arguments.parse_self(
      'infini_attention', query, key, value, scale=scale,
      query_seq_lengths=query_seq_lengths,
      key_value_seq_lengths=key_value_seq_lengths, dtype=dtype,
      dropout_rate=dropout_rate, deterministic=deterministic, module=module,
      return_residual=return_residual)
  if args.dims.T == 0 or args.dims.S == 0:  # as jax.nn: no division
    return arguments.empty_output(args)
  d = args.dims
  out, _ = scan_segments(args.query, args.key, args.value, None, gate_logits,
                         segment_size=segment_size, update=update,
                         scale=args.scale, rope_base=rope_base,
                         key_value_seq_lengths=args.kv_len,
                         chunk_size=chunk_size)
  if args.q_len is not None:
    out = jnp.where((jnp.arange(d.T)[None, :] < args.q_len[:, None])[
        :, :, None, None], out, 0)
  return out
