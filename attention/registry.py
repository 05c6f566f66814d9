"""Attention mechanisms by name: `get(name)`, `names()`, `register(...)`.

Each mechanism module registers itself on import with its default options;
configs and models refer to mechanisms by these names only.
"""

from __future__ import annotations

import dataclasses
import types
from typing import Any, Callable

_REGISTRY: dict[str, 'Mechanism'] = {}


@dataclasses.dataclass(frozen=True)
class Mechanism:
  """A registered attention function with its default options.

  Calling it calls `fn` with the defaults, overridden by the call's keywords.
  `decoding` is the module with `init_state`/`step` for causal decoding, or
  None where the mechanism has no decoding form yet.
  """

  name: str
  fn: Callable[..., Any]
  defaults: types.MappingProxyType
  decoding: Any = None

  def __call__(self, query, key, value, *args, **kwargs):
    return self.fn(query, key, value, *args, **{**self.defaults, **kwargs})


def register(name: str, fn: Callable[..., Any], *, decoding=None, **defaults):
  """Registers `fn` under `name`; a second registration of a name raises."""
  if name in _REGISTRY and _REGISTRY[name].fn is not fn:
    raise ValueError(f'attention mechanism {name!r} is already registered')
  _REGISTRY[name] = Mechanism(name, fn, types.MappingProxyType(defaults),
                              decoding)
  return fn


def get(name: str) -> Mechanism:
  """The mechanism registered as `name`; a ValueError lists the known ones."""
  try:
    return _REGISTRY[name]
  except KeyError:
    raise ValueError(f'unknown attention mechanism {name!r}; known: '
                     f'{", ".join(names())}') from None


def names() -> list[str]:
  """Sorted names of all registered mechanisms."""
  return sorted(_REGISTRY)
