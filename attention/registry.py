"""Attention mechanisms by name: `get(name)`, `names()`, `register(...)`.

Each mechanism module registers itself on import with its default options;
configs and models refer to mechanisms by these names only.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

_REGISTRY: dict[str, 'Mechanism'] = {}


@dataclasses.dataclass(frozen=True)
class Mechanism:
  """A registered attention function with its default options.

  Calling it calls `fn` with the defaults, overridden by the call's keywords.
  `init_state(batch_size, num_kv_heads, head_dim, **options)` and
  `step(state, query, key, value, **options) -> (out, state)` decode
  causally (see `attention.decoding.kv_cache`); None where a mechanism cannot.

  `exact`: computes softmax attention exactly (tested against the oracle);
  approximations are tested against their own definitions. `refuses`: the
  shared options it cannot honour (each raises ValueError when set).
  `draw_projection(rng, head_dim, **options)`: for randomised mechanisms,
  a new draw of their random option, named by `projection_option` (the
  Performer's `projection`, LSH's `rng`); models keep it as a non-trainable
  variable and can redraw it. `rope_inside`: the mechanism takes content
  queries and keys and applies RoPE itself (option `rope_base`), at
  positions it knows (from a segment's start, say); models then pass the
  base instead of rotating. `learned_options`: `(option, initial value)`
  pairs of options that models learn, one float per query head
  (Infini-attention's `gate_logits`).
  """

  name: str
  fn: Callable[..., Any]
  defaults: tuple[tuple[str, Any], ...]  # sorted (option, value) pairs
  init_state: Callable[..., Any] | None = None
  step: Callable[..., Any] | None = None
  exact: bool = True
  refuses: tuple[str, ...] = ()
  draw_projection: Callable[..., Any] | None = None
  projection_option: str = 'projection'
  rope_inside: bool = False
  learned_options: tuple[tuple[str, float], ...] = ()

  @property
  def decodable(self) -> bool:
    return self.step is not None

  def __call__(self, query, key, value, *args, **kwargs):
    return self.fn(query, key, value, *args, **{**dict(self.defaults),
                                                 **kwargs})


def register(name: str, fn: Callable[..., Any], *, init_state=None,
             step=None, exact=True, refuses=(), draw_projection=None,
             projection_option='projection', rope_inside=False,
             learned_options=(), **defaults):
  """Registers `fn` (and its decoding pair) under `name` with defaults."""
  if name in _REGISTRY and _REGISTRY[name].fn is not fn:
    raise ValueError(f'attention mechanism {name!r} is already registered')
  if (init_state is None) != (step is None):
    raise ValueError(f'{name}: give both init_state and step, or neither')
  _REGISTRY[name] = Mechanism(name, fn, tuple(sorted(defaults.items())),
                              init_state, step, exact, tuple(refuses),
                              draw_projection, projection_option, rope_inside,
                              tuple(map(tuple, learned_options)))
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
