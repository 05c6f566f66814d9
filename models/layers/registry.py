"""Which NNX layer class serves each attention mechanism.

Mechanisms that need nothing but projections use `MultiHeadAttention`;
a family that owns parameters or state registers its subclass here, by
mechanism name, next to its definition.
"""

from __future__ import annotations

_LAYERS: dict[str, type] = {}


def register_layer(name: str, cls: type) -> type:
  """Serves mechanism `name` with the layer class `cls`."""
  if name in _LAYERS and _LAYERS[name] is not cls:
    raise ValueError(f'a layer for {name!r} is already registered: '
                     f'{_LAYERS[name].__name__}')
  _LAYERS[name] = cls
  return cls


def registered_layer(name: str) -> type | None:
  """The layer class a family registered for mechanism `name`, or None
  (then `MultiHeadAttention` serves it)."""
  return _LAYERS.get(name)
