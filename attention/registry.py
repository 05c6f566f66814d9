"""Attention mechanisms by name: `get(name)`, `names()`, `register(...)`.

Each mechanism module registers itself on import: its function, its
decoding pair and its option type. Configs and models refer to mechanisms
by these names only. The registry holds kernels, nothing of layers: what a
model adds around a kernel (RoPE applied inside, learned gates, random
projections kept as state) lives in `models.layers`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from efficient_attention.attention import options as options_lib

_REGISTRY: dict[str, 'Mechanism'] = {}


@dataclasses.dataclass(frozen=True)
class Mechanism:
  """A registered attention function, its decoding pair and option type.

  `fn(query, key, value, ..., **options)`; calling the mechanism calls it.
  `init_state(batch_size, num_kv_heads, head_dim, *, max_length, dtype,
  **options)` and `step(state, query, key, value, **arguments_and_options)
  -> (out, state)` decode causally (see `attention.decoding.kv_cache`);
  None where a mechanism cannot. All three take the same options, as
  keywords or `options=options_type(...)`, and reject unknown ones with a
  ValueError.

  `exact`: computes softmax attention exactly (tested against the oracle);
  approximations are tested against their own definitions. `refuses`: the
  shared arguments it cannot honour (each raises ValueError when set).
  `not_causal`: why it cannot be causal (empty when it can): its
  `is_causal=True` raises with this reason, and so does a decoder built
  on it.
  """

  name: str
  fn: Callable[..., Any]
  options: type[options_lib.Options]
  init_state: Callable[..., Any] | None = None
  step: Callable[..., Any] | None = None
  exact: bool = True
  refuses: tuple[str, ...] = ()
  not_causal: str = ''

  @property
  def causal(self) -> bool:
    """Whether it can attend causally (decoders need it)."""
    return not self.not_causal

  @property
  def decodable(self) -> bool:
    return self.step is not None

  @property
  def defaults(self) -> dict[str, Any]:
    """The default options, as a dict."""
    return self.options().as_dict()

  def make_options(self, options=None, /, **overrides) -> options_lib.Options:
    """This mechanism's options from an instance, a mapping or pairs."""
    return self.options.create(options, **overrides)

  def __call__(self, query, key, value, *args, **kwargs):
    return self.fn(query, key, value, *args, **kwargs)


def register(name: str, fn: Callable[..., Any], *,
             options: type[options_lib.Options],
             init_state: Callable[..., Any] | None = None,
             step: Callable[..., Any] | None = None, exact: bool = True,
             refuses: tuple[str, ...] = (), not_causal: str = '') -> None:
  """Registers `fn` (and its decoding pair) under `name`.

  `fn`, `init_state` and `step` take `options` (an `Options` subclass):
  decorate them with `attention.options.takes(options)`.
  """
  if name in _REGISTRY and _REGISTRY[name].fn is not fn:
    raise ValueError(f'attention mechanism {name!r} is already registered')
  if (init_state is None) != (step is None):
    raise ValueError(f'{name}: give both init_state and step, or neither')
  if not (isinstance(options, type) and
          issubclass(options, options_lib.Options)):
    raise TypeError(f'{name}: options must be an attention.options.Options '
                    f'subclass, got {options!r}')
  for what, f in [('fn', fn), ('init_state', init_state)]:
    if f is not None and getattr(f, 'options_type', None) is not options:
      raise TypeError(f'{name}: {what} must be decorated with '
                      f'attention.options.takes({options.__name__})')
  if not_causal and step is not None:
    raise ValueError(f'{name}: a mechanism that cannot be causal cannot '
                     'decode')
  _REGISTRY[name] = Mechanism(name, fn, options, init_state, step, exact,
                              tuple(refuses), not_causal)
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
