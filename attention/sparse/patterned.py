"""Exact attention under a fixed sparse pattern, at the cost of the pattern.

A sparse mechanism here is blockwise attention (`attention.exact`) with a
pattern mask, in one or more parts: one pattern for every head, or one per
head (`masks.per_head`: head h takes part `h % parts`, the Sparse
Transformer's factorisation over heads). Each part says how its pattern
becomes dense tiles:

  direct   the pattern is local (windows, blocks, random blocks, global
           tokens): tile skipping alone visits what it needs.
  residue  the pattern is strided with period l: queries and keys are
           reordered residue-major (`layouts.by_residue`), where it is
           block-diagonal, and the output is put back in order.
  ends     the pattern is the last c positions of each block of l: those
           keys are gathered (`layouts.block_ends`) and attended densely.

The reordered path serves self-attention of a whole sequence (T = S, no
query offset, no bias array, no position-dependent score such as ALiBi, no
per-head user mask); any other call (decoding steps, cross-attention, a
bias) takes the mask path, the pattern evaluated per tile at its absolute
positions: the same result, at the cost of the tiles the pattern touches.
Both paths take every argument of `blockwise_attention` and its chunk
sizes; causality, windows, lengths and user masks are evaluated at the
original positions in either.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Callable, Sequence

import jax.numpy as jnp

from efficient_attention.attention import arguments as arguments_lib
from efficient_attention.attention import masks
from efficient_attention.attention import options as options_lib
from efficient_attention.attention.exact import blockwise
from efficient_attention.attention.sparse import layouts


@dataclasses.dataclass(frozen=True)
class Part:
  """One half of a factorised pattern (or the whole of an unfactorised
  one): its mask of positions and how it is tiled (see the module doc)."""

  pattern: masks.Mask
  tiling: str = 'direct'  # 'direct', 'residue' or 'ends'
  period: int = 1  # l, for 'residue' and 'ends'
  count: int = 1  # c, the gathered positions per block, for 'ends'


def pattern_mask(parts: Sequence[Part]) -> masks.Mask:
  """The whole pattern as one mask: head h sees `parts[h % len(parts)]`."""
  if len(parts) == 1:
    return parts[0].pattern
  return masks.per_head(*[p.pattern for p in parts])


# Docstring parts every patterned mechanism shares.
ARGUMENTS_DOC = """    query: `[B, T, N, H]`.
    key: `[B, S, K, H]`, K dividing N.
    value: `[B, S, K, H]`.
    bias, mask, scale, is_causal, query_offset, score: as
      `blockwise_attention`, combined with the pattern (a query sees what
      both allow).
    query_seq_lengths, key_value_seq_lengths, local_window_size: as
      `blockwise_attention`.
    alibi_slopes, logits_soft_cap, return_residual: as `blockwise_attention`.
    dropout_rng, dropout_rate, broadcast_dropout, deterministic: Flax's
      keywords, as `blockwise_attention` takes them.
    dtype, precision, module: as `blockwise_attention`.
"""
RETURNS_DOC = """  Returns:
    `[B, T, N, H]` in the dtype of `query`; rows that see no key are zero.
"""

# The arguments every patterned mechanism takes: blockwise attention's.
_BLOCKWISE = inspect.signature(blockwise.blockwise_attention)
_SHARED = [p for n, p in _BLOCKWISE.parameters.items()
           if n not in blockwise.BlockwiseOptions.names()]


def signature(options_type: type[options_lib.Options],
              data: Sequence[str] = ()) -> inspect.Signature:
  """Blockwise attention's signature with `data` keywords (default None)
  and `options_type`'s fields as keyword-only options."""
  keyword = inspect.Parameter.KEYWORD_ONLY
  shared = [p for p in _SHARED if p.name != 'return_residual']
  last = [p for p in _SHARED if p.name == 'return_residual']
  return _BLOCKWISE.replace(parameters=(
      shared + [inspect.Parameter(n, keyword, default=None,
                                  annotation='ArrayLike | None')
                for n in data] +
      [inspect.Parameter(f.name, keyword, annotation=f.type)
       for f in dataclasses.fields(options_type)] + last))


def mechanism(name: str, options_type: type[options_lib.Options],
              parts: Callable[..., Sequence[Part]],
              data: Sequence[str] = (), module: str | None = None,
              global_positions: Callable[..., object] | None = None,
              global_projections: bool = False) -> Callable:
  """A patterned attention function, decorated to take `options_type`
  (`module`: the defining module's name, for errors and docs).

  `parts(options, T, S, is_causal)` gives the pattern's parts for a
  `[T, S]` problem; `options` is the typed options. `data` names the mechanism's
  own array arguments (Longformer's global positions), which
  `global_positions(options, B, **data)` turns into the global positions
  int `[B, P]` (None: none). With `global_projections`, the function also
  takes `global_query`, `global_key` and `global_value` (shaped as query,
  key and value): the global rows attend with those instead (Longformer's
  separate projections). The docstring is the caller's to set.
  """
  option_names = options_type.names()
  chunk_names = blockwise.BlockwiseOptions.names()
  projected = GLOBAL_INPUTS if global_projections else ()

  def fn(query, key, value, bias=None, mask=None, **kwargs):
    options = options_type(**{n: kwargs.pop(n) for n in option_names})
    extra = {n: kwargs.pop(n, None) for n in data}
    given = [kwargs.pop(n, None) for n in projected]
    if getattr(options, 'global_projections', False) and None in given:
      raise ValueError(f'{name}: global_projections=True needs the global '
                       f'rows\' own {", ".join(projected)} (the model layer '
                       'computes them)')
    chunks = {n: getattr(options, n) for n in chunk_names}
    positions = None if global_positions is None else (
        lambda B: global_positions(options, B, **extra))
    causal = kwargs.get('is_causal', False)
    return attend(name, query, key, value, bias, mask, chunks=chunks,
                  parts=lambda T, S: parts(options, T, S, causal),
                  global_positions=positions,
                  global_qkv=_global_inputs(name, given), **kwargs)

  fn.__name__ = fn.__qualname__ = name
  fn.__module__ = module or __name__
  fn.__signature__ = signature(options_type, (*data, *projected))
  return arguments_lib.any_batch_rank(options_lib.takes(options_type)(fn))


GLOBAL_INPUTS = ('global_query', 'global_key', 'global_value')


def _global_inputs(name, given):
  """`(global_query, global_key, global_value)`, or None when none is
  given; a ValueError when only some are."""
  if all(x is None for x in given):
    return None
  missing = [n for n, x in zip(GLOBAL_INPUTS, given) if x is None]
  if missing:
    raise ValueError(f'{name}: global projections need all of '
                     f'{", ".join(GLOBAL_INPUTS)}; missing {missing}')
  return tuple(given)


def _checked_global_inputs(name, args, global_qkv, query_offset, bias, score):
  """The global projections in the inputs' dtype, after checking that
  they match the inputs and that the call is one they can serve."""
  refused = [n for n, used in [('query_offset', query_offset is not None),
                               ('bias', bias is not None),
                               ('score', score is not None),
                               ('alibi_slopes', args.alibi_slopes is not None),
                               ('cross-attention (T != S)',
                                args.dims.T != args.dims.S)] if used]
  if refused:
    raise ValueError(f'{name}: global projections serve self-attention of '
                     f'a whole sequence; they cannot combine with '
                     f'{refused[0]}')
  out = []
  for n, x, like in zip(GLOBAL_INPUTS, global_qkv,
                        (args.query, args.key, args.value)):
    x = jnp.asarray(x)
    if x.shape != like.shape:
      raise ValueError(f'{name}: {n} must have the shape of '
                       f'{n.split("_")[1]}, {like.shape}, got {x.shape}')
    out.append(x.astype(like.dtype))
  return tuple(out)


def attend(name, query, key, value, bias, mask, *, chunks, parts,
           global_positions=None, global_qkv=None, scale=None, is_causal=False, query_seq_lengths=None,
           key_value_seq_lengths=None, local_window_size=None,
           dropout_rng=None, dropout_rate=0.0, broadcast_dropout=True,
           deterministic=True, dtype=None, precision=None, module=None,
           alibi_slopes=None, logits_soft_cap=None, query_offset=None,
           score=None, return_residual=False):
  """Blockwise attention under `parts(T, S)`, and the global positions
  `global_positions(B)` where given (see the module doc)."""
  del dropout_rng, broadcast_dropout
  args = arguments_lib.parse(
      name, query, key, value, scale=scale,
      local_window_size=local_window_size,
      query_seq_lengths=query_seq_lengths,
      key_value_seq_lengths=key_value_seq_lengths, dtype=dtype,
      dropout_rate=dropout_rate, deterministic=deterministic, module=module,
      alibi_slopes=alibi_slopes, logits_soft_cap=logits_soft_cap)
  if args.dims.T == 0 or args.dims.S == 0:
    return arguments_lib.empty_output(args, return_residual)
  user, dense = masks.split(mask)
  user = masks.all_of(user, None if dense is None else
                      masks.from_array(dense))
  T, S = args.dims.T, args.dims.S
  if user is not None:
    user = masks.checked_batch(user, args.dims.B).bind(T, S)
  # Patterns drawn per length (random blocks) draw here, at the true
  # lengths, not at those of the reordered or concatenated keys.
  the_parts = [dataclasses.replace(p, pattern=p.pattern.bind(T, S))
               for p in parts(T, S)]
  positions = None if global_positions is None else global_positions(
      args.dims.B)
  if global_qkv is not None:
    global_qkv = _checked_global_inputs(name, args, global_qkv, query_offset,
                                        bias, score)
  kernel = lambda q, k, v, **more: blockwise.blockwise_attention(
      q, k, v, scale=args.scale, logits_soft_cap=args.logits_soft_cap,
      precision=precision, return_residual=return_residual, **chunks,
      **more)
  reorder = (T == S and query_offset is None and bias is None and
             args.alibi_slopes is None and score is None and
             not (user is not None and user.per_head) and
             (any(p.tiling != 'direct' for p in the_parts) or
              positions is not None) and
             (positions is None or (len(the_parts) == 1 and
                                    not return_residual)))
  if not reorder:
    pattern = pattern_mask(the_parts)
    if positions is not None:
      pattern = pattern | masks.global_tokens(positions)
    out = kernel(args.query, args.key, args.value, bias=bias,
                 mask=masks.all_of(pattern, user),
                 is_causal=is_causal, query_seq_lengths=args.q_len,
                 key_value_seq_lengths=args.kv_len,
                 local_window_size=args.window, alibi_slopes=args.alibi_slopes,
                 query_offset=query_offset, score=score)
    if positions is None or global_qkv is None:
      return out
    # The global rows again, from their own projections.
    where = masks.all_of(
        user, *masks.from_arguments(is_causal, args.window, args.q_len,
                                    args.kv_len))
    positions = unique_positions(positions, T)
    return _global_rows(kernel, out, where, positions, *global_qkv)
  where = masks.all_of(
      user, *masks.from_arguments(is_causal, args.window, args.q_len,
                                  args.kv_len))
  inputs = (args.query, args.key, args.value)
  if positions is not None:
    return _with_globals(kernel, the_parts[0], where, *inputs, positions,
                         global_qkv=global_qkv)
  split = (layouts.split_heads(*inputs, len(the_parts))
           if len(the_parts) > 1 else [inputs])
  outs = [_reordered(kernel, part, where, *qkv)
          for part, qkv in zip(the_parts, split)]
  if len(outs) > 1:  # outputs [B, T, N, H] (and log-sum-exps [B, T, N])
    merge = lambda xs: layouts.merge_heads(xs, args.dims.K)
    outs = [merge(outs) if not return_residual else
            (merge([o for o, _ in outs]),
             merge([r[..., None] for _, r in outs])[..., 0])]
  return outs[0]


def _reordered(kernel, part: Part, where, query, key, value):
  """One part of a self-attention call, in the order that tiles it."""
  T = query.shape[1]
  visible = masks.all_of(part.pattern, where)
  if part.tiling == 'direct':
    return kernel(query, key, value, mask=visible)
  identity = layouts.Layout()
  if part.tiling == 'ends':
    gather = lambda x: layouts.block_ends(x, part.period, part.count)
    ends = layouts.Layout('ends', part.period, part.count)
    visible = layouts.at_positions(
        masks.all_of(visible, masks.key_lengths(T)), identity, ends)
    return kernel(query, gather(key), gather(value), mask=visible)
  l = part.period
  M = -(-T // l)  # positions per residue class
  residue = layouts.Layout('residue', l, M)
  # Same class is block-diagonal in the reordered index; the rest is
  # evaluated at the positions the indices hold (padding past T masked).
  visible = masks.all_of(masks.chunked(M), layouts.at_positions(
      masks.all_of(visible, masks.key_lengths(T)), residue, residue))
  reordered = [layouts.by_residue(x, l, M) for x in (query, key, value)]
  out = kernel(*reordered, mask=visible)
  back = lambda x: layouts.from_residue(x, l, M, T)
  return tuple(map(back, out)) if isinstance(out, tuple) else back(out)



def unique_positions(positions_BP, length: int):
  """Global positions int `[B, P]` sorted, with duplicates and entries
  outside `[0, length)` set to -1 (unused): each is gathered once."""
  nowhere = jnp.int32(2**30)
  p = jnp.asarray(positions_BP, jnp.int32)
  p = jnp.sort(jnp.where((p >= 0) & (p < length), p, nowhere), axis=-1)
  repeated = jnp.concatenate([jnp.zeros_like(p[:, :1], bool),
                              p[:, 1:] == p[:, :-1]], axis=1)
  return jnp.where(repeated | (p == nowhere), -1, p)


def gather_rows(x_BT, positions_BP):
  """Rows `x[b, positions[b, j]]`: `[B, P, ...]`, zero at unused (-1)."""
  index = jnp.maximum(positions_BP, 0)
  index = index.reshape(index.shape + (1,) * (x_BT.ndim - 2))
  rows = jnp.take_along_axis(x_BT, index, axis=1)
  used = (positions_BP >= 0).reshape(index.shape)
  return jnp.where(used, rows, 0)


def _global_rows(kernel, out, where, positions, query, key, value):
  """`out` with the rows of the global positions (unique, `[B, P]`)
  replaced by their attention over every key allowed by `where`; `out` may
  be `(out, log-sum-exp)`, the residual of `return_residual`."""
  B, T = query.shape[:2]
  rows = kernel(gather_rows(query, positions), key, value,
                mask=layouts.Gathered(where, q_table=positions))
  batch = jnp.arange(B)[:, None]
  at = jnp.where(positions >= 0, positions, T)
  put = lambda x, r: x.at[batch, at].set(r.astype(x.dtype), mode='drop')
  if isinstance(out, tuple):
    return tuple(put(x, r) for x, r in zip(out, rows))
  return put(out, rows)


def _with_globals(kernel, part: Part, where, query, key, value, positions,
                  global_qkv=None):
  """Self-attention under a local pattern and global positions, at the cost
  of what it computes: the local pattern tiled as its part says, with the
  global keys (gathered, `[B, P]`) appended after the keys and hidden from
  the local segment; the global queries' rows (gathered) then attend to
  every key and replace theirs, from `global_qkv` (their own projections)
  where given."""
  T = query.shape[1]
  positions = unique_positions(positions, T)
  P = positions.shape[1]
  local = masks.all_of(part.pattern, where, ~masks.listed_keys(positions))
  if part.tiling == 'residue':
    l = part.period
    M = -(-T // l)
    layout = layouts.Layout('residue', l, M)
    order = lambda x: layouts.by_residue(x, l, M)
    local = masks.all_of(masks.chunked(M), layouts.at_positions(
        masks.all_of(local, masks.key_lengths(T)), layout, layout))
  elif part.tiling == 'direct':
    layout, order = layouts.Layout(), lambda x: x
  else:
    raise ValueError(f'global positions with a {part.tiling!r} part')
  S1 = order(key).shape[1]
  mask = ((layouts.KeyRange(0, S1) & local) |
          (layouts.KeyRange(S1, S1 + P) & layouts.Gathered(
              where, k_table=positions, q_layout=layout, k_offset=S1)))
  keys, values = (jnp.concatenate([order(x), gather_rows(x, positions)], 1)
                  for x in (key, value))
  out = kernel(order(query), keys, values, mask=mask)
  if part.tiling == 'residue':
    out = layouts.from_residue(out, part.period, -(-T // part.period), T)
  return _global_rows(kernel, out, where, positions,
                      *(global_qkv or (query, key, value)))
