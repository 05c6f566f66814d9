"""Functions for Flax's `attention_fn=` slot, with settings that stick.

Flax NNX's `MultiHeadAttention` passes `is_causal` to its attention
function on every call (False unless the call says otherwise), so
`functools.partial(blockwise_attention, is_causal=True)` is silently
overridden and the layer attends bidirectionally. `attention_fn` builds a
slot function whose causality is the OR of its own setting and the
layer's, and whose options are checked when it is built.

  layer = nnx.MultiHeadAttention(..., attention_fn=attention.attention_fn(
      'blockwise', is_causal=True, query_chunk_size=256))
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

from efficient_attention.attention import options as options_lib
from efficient_attention.attention import registry


def attention_fn(mechanism: str | Callable[..., Any] = 'blockwise', /, *,
                 is_causal: bool = False, **options) -> Callable[..., Any]:
  """A function for the `attention_fn=` slot of Flax's attention layers.

  Args:
    mechanism: a registry name or an attention function of this package.
    is_causal: attend causally whatever the layer passes (the layer's own
      `is_causal=True` also makes it causal).
    **options: the mechanism's options (checked now) and other keywords,
      fixed for every call.

  Returns:
    `fn(query, key, value, bias=None, mask=None, **flax_keywords)`.
  """
  fn = registry.get(mechanism) if isinstance(mechanism, str) else mechanism
  if not isinstance(is_causal, bool):
    raise ValueError(f'is_causal must be a bool, got {is_causal!r}')
  base = getattr(fn, 'fn', fn)  # a registry Mechanism holds its function
  options_type = getattr(base, 'options_type', None)
  if options_type is not None:  # misspelt options fail here, not per call
    keywords = set(inspect.signature(base).parameters) - {
        'query', 'key', 'value', 'is_causal'}
    unknown = set(options) - keywords
    if unknown:
      raise ValueError(options_lib.unknown_message(
          f'attention_fn({base.__name__})', unknown, options_type.names(),
          keywords - set(options_type.names())))
    options_type.create({k: v for k, v in options.items()
                         if k in options_type.names()})
  causal = is_causal

  def slot(query, key, value, bias=None, mask=None, *, is_causal=False,
           **kwargs):
    return fn(query, key, value, bias, mask, is_causal=causal or is_causal,
              **options, **kwargs)

  slot.__name__ = f'{getattr(fn, "__name__", getattr(fn, "name", "attention"))}_slot'
  return slot
