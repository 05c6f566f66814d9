"""Splash attention (JAX's Pallas TPU kernel) behind `blockwise_attention`.

On a TPU, `blockwise_attention` hands the calls splash attention can
express to `jax.experimental.pallas.ops.tpu.splash_attention` and keeps its
own tiled scan for the rest (`implementation='auto'`); `'splash'` asks for
it anywhere (off a TPU in Pallas interpret mode, which is how the tests run
it on a CPU) and raises `ValueError` naming what it cannot express;
`'scan'` never uses it.

The translation. Our masks are position functions `mask(batch, head, q,
k)`; splash takes per-head mask objects it evaluates block by block on the
host (to find empty, partial and full blocks) and inside the kernel (from
`mask_function(q_ids, kv_ids)`). Any mask of positions alone (causal,
windows, chunks, strides, per-head patterns and their `&`, `|`, `~`)
becomes one splash mask per head whose function is ours, so every
pattern's empty blocks are skipped by splash as by our scan. A document
mask (`masks.document`, packed sequences) that is one of the `&`-parts
becomes splash's `SegmentIds`. Rows the mask leaves empty are zero, as our
contract says (splash would average the values there): known on the host
for position masks; with documents, the diagonal must be visible (it is,
under causal or no position mask), so no row is empty.

What splash cannot take falls back to the scan under 'auto': a bias or
dense mask array, ALiBi, score modifiers, query or key lengths, a
`query_offset` (decoding), `return_residual`, other data masks, or lengths
not multiples of 128 (splash's blocks are multiples of 128 lanes).
`logits_soft_cap` and GQA (K dividing N) go through. Queries are scaled
before the kernel (splash does not scale); logits and the softmax are float32
inside it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from efficient_attention.attention import masks as masks_lib
from efficient_attention.attention.masks import data as data_masks

IMPLEMENTATIONS = ('auto', 'scan', 'splash')
BLOCKS = (512, 256, 128)  # splash block sizes tried, largest dividing T


def _splash():
  """The splash modules, imported only when used (Pallas is heavy)."""
  # pylint: disable=g-import-not-at-top
  from jax.experimental.pallas.ops.tpu.splash_attention import (
      splash_attention_kernel as kernel)
  from jax.experimental.pallas.ops.tpu.splash_attention import (
      splash_attention_mask as mask)
  return kernel, mask


def on_tpu() -> bool:
  return jax.default_backend() == 'tpu'


def block_size(n: int) -> int | None:
  """The largest of `BLOCKS` dividing n (None: none does)."""
  return next((b for b in BLOCKS if n % b == 0), None)


def split_documents(mask: masks_lib.Mask | None):
  """`(positions, document)`: the `&`-parts of `mask` that are position
  masks, as one mask (None: none), and its document mask (None: none).
  Raises ValueError when another data mask is part of it."""
  parts = [mask] if mask is not None else []
  while any(isinstance(p, masks_lib.base.Combined) and p.op == 'and'
            for p in parts):
    parts = [q for p in parts for q in (
        p.parts if isinstance(p, masks_lib.base.Combined) and p.op == 'and'
        else (p,))]
  documents = [p for p in parts if isinstance(p, data_masks.Document)]
  others = [p for p in parts if not isinstance(p, data_masks.Document)]
  held = [p for p in others if p.per_example]
  if held or len(documents) > 1:
    raise ValueError(f'masks holding data other than one document mask '
                     f'({type((held or documents)[0]).__name__})')
  return masks_lib.all_of(*others), (documents[0] if documents else None)


def reason_not_expressible(*, T, S, bias, dense_mask, alibi_slopes,
                           score, q_len, kv_len, query_offset,
                           return_residual, mask) -> str | None:
  """Why splash cannot compute this call (None: it can)."""
  used = [name for name, value in [
      ('bias', bias), ('a dense mask array', dense_mask),
      ('alibi_slopes', alibi_slopes), ('score', score),
      ('query_seq_lengths', q_len), ('key_value_seq_lengths', kv_len),
      ('query_offset', query_offset)] if value is not None]
  if return_residual:
    used.append('return_residual')
  if used:
    return f'splash attention takes no {used[0]}'
  if block_size(T) is None or block_size(S) is None:
    return (f'splash attention needs lengths that are multiples of 128, got '
            f'T={T}, S={S}')
  try:
    positions, document = split_documents(mask)
  except ValueError as e:
    return f'splash attention takes no {e}'
  if document is not None:
    if T != S:
      return 'splash attention takes a document mask in self-attention only'
    if positions is not None and not _diagonal_visible(positions, T):
      return ('splash attention takes a document mask only where every '
              'query sees its own position')
  return None


def _evaluate(positions, head, q, k):
  """The mask at one head, on the host (NumPy positions in and out)."""
  with jax.ensure_compile_time_eval():  # under jit too
    return np.asarray(positions(0, head, q, k), bool)


def _mask_function(positions, head):
  """Splash's `mask_function(q_ids, kv_ids)`: NumPy on the host, traced
  inside the kernel."""
  def fn(q, k):
    if isinstance(q, np.ndarray) and isinstance(k, np.ndarray):
      return _evaluate(positions, head, q, k)
    return positions(0, head, q, k)
  return fn


def _diagonal_visible(positions, T) -> bool:
  q = np.arange(T)
  heads = range(positions.count) if positions.per_head else (0,)
  return all(_evaluate(positions, h, q, q).all() for h in heads)


def _empty_rows(positions, N, T, S, rows=512) -> np.ndarray:
  """bool `[N, T]`: queries that see no key (on the host, O(T S))."""
  if positions is None:
    return np.zeros((N, T), bool)
  count = positions.count if positions.per_head else 1
  empty = np.zeros((count, T), bool)
  k = np.arange(S)[None, :]
  for h in range(count):
    for start in range(0, T, rows):
      q = np.arange(start, min(start + rows, T))[:, None]
      empty[h, q[:, 0]] = ~_evaluate(positions, h, q, k).any(1)
  return empty[np.arange(N) % count]


def _kernel(positions, N, T, S, soft_cap, interpret):
  """A splash kernel for this pattern and shape (building one evaluates
  the mask block by block on the host, once per trace)."""
  kernel_lib, mask_lib = _splash()

  class Positions(mask_lib._ComputableMask):  # pylint: disable=protected-access
    """Our position mask at one head, as a splash mask."""

    def __init__(self, head):
      self.head = head
      super().__init__((T, S), _mask_function(positions, head))

    def __eq__(self, other):
      return isinstance(other, Positions) and other.head == self.head

    def __hash__(self):
      return hash(('positions', self.head))

  if positions is None:
    heads = [mask_lib.FullMask((T, S))] * N
  else:
    count = positions.count if positions.per_head else 1
    unique = [Positions(h) for h in range(count)]
    heads = [unique[h % count] for h in range(N)]
  bq, bkv = block_size(T), block_size(S)
  blocks = kernel_lib.BlockSizes(
      block_q=bq, block_kv=bkv, block_kv_compute=bkv, block_q_dkv=bq,
      block_kv_dkv=bkv, block_kv_dkv_compute=bkv, block_q_dq=bq,
      block_kv_dq=bkv)
  return kernel_lib.make_splash_mha(
      mask_lib.MultiHeadMask(heads), block_sizes=blocks, head_shards=1,
      q_seq_shards=1, attn_logits_soft_cap=soft_cap, interpret=interpret)


def attend(query, key, value, mask, *, scale, logits_soft_cap):
  """Splash attention of `query [B, T, N, H]` over `key`, `value [B, S, K,
  H]` under `mask` (one `attention.masks` object: position masks and at
  most one document mask); `[B, T, N, H]`. The caller has checked
  `reason_not_expressible`."""
  kernel_lib, _ = _splash()
  B, T, N, _ = query.shape
  S = key.shape[1]
  positions, document = split_documents(mask)
  empty = _empty_rows(positions, N, T, S)
  if empty.all():  # nothing to attend (splash needs one visible block)
    return jnp.zeros_like(query)
  splash = _kernel(positions, N, T, S, logits_soft_cap, not on_tpu())
  q = (query.astype(jnp.float32) * scale).astype(query.dtype)
  q, k, v = (x.transpose(0, 2, 1, 3) for x in (q, key, value))
  if document is None:
    out = jax.vmap(splash)(q, k, v)
  else:
    ids = kernel_lib.SegmentIds(document.q_ids.astype(jnp.int32),
                                document.k_ids.astype(jnp.int32))
    out = jax.vmap(lambda *x: splash(*x[:3], segment_ids=x[3]))(q, k, v, ids)
  out = out.transpose(0, 2, 1, 3)
  if empty.any():
    out = jnp.where(empty.T[None, :, :, None], 0, out)
  return out.astype(query.dtype)
