"""Typed options: each mechanism declares its hyperparameters once.

A mechanism's options are a frozen dataclass (`Options` subclass) whose
fields carry the defaults and one comment each, and whose `__post_init__`
validates them. They are the static hyperparameters only (chunk sizes,
feature counts, memory lengths): hashable, so a model config can hold them
and `jit` can close over them. Arrays a call needs (the Performer's
projection, Infini-attention's gates, a mask, a score) are arguments.

`takes(OptionsType)` decorates a mechanism's function, `init_state` and
`step`: callers pass options as keywords (`memory_length=8`) or whole
(`options=XLOptions(memory_length=8)`), and the function receives each
field it declares as a keyword-only parameter without a default. A keyword
that is neither an argument of the function nor an option raises
`ValueError` naming it, its near matches and every valid name, on every
path (direct call, `attention.get(name)(...)`, decoding, layers, configs).
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import io
import textwrap
import tokenize
from typing import Any, Callable, Mapping, TypeVar

T = TypeVar('T', bound='Options')


def unknown_message(where: str, unknown, valid, others=()) -> str:
  """`where`: unknown option 'x' (did you mean 'y'?); valid: ... .

  `valid` are the options, `others` the function's other keywords (listed
  apart, and offered as near matches too).
  """
  valid, others = sorted(valid), sorted(others)
  parts = []
  for name in sorted(unknown):
    near = difflib.get_close_matches(name, valid + others, n=3, cutoff=0.6)
    hint = f' (did you mean {", ".join(map(repr, near))}?)' if near else ''
    parts.append(f'{name!r}{hint}')
  noun = 'option' if len(parts) == 1 else 'options'
  listed = f'valid options: {", ".join(valid) or "none"}'
  if others:
    listed += f'; other keywords: {", ".join(others)}'
  return f'{where}: unknown {noun} {", ".join(parts)}; {listed}'


def check_positive_int(where: str | None, name: str, value, *,
                       allow_none=False, allow_zero=False):
  """ValueError unless `value` is a positive int (or None / 0 if allowed);
  the message starts with `where` when given."""
  if value is None and allow_none:
    return
  low = 0 if allow_zero else 1
  if isinstance(value, bool) or not isinstance(value, int) or value < low:
    what = 'a non-negative' if allow_zero else 'a positive'
    prefix = f'{where}: ' if where else ''
    raise ValueError(f'{prefix}{name} must be {what} int, got {value!r}')


def check_choice(where: str, name: str, value, choices):
  if value not in choices:
    raise ValueError(f'{where}: {name} must be one of {tuple(choices)}, got '
                     f'{value!r}')


def check_bool(where: str, name: str, value):
  if not isinstance(value, bool):
    raise ValueError(f'{where}: {name} must be a bool, got {value!r}')


@dataclasses.dataclass(frozen=True)
class Options:
  """Base of every mechanism's options; subclasses are frozen dataclasses."""

  @classmethod
  def names(cls) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))

  @classmethod
  def create(cls: type[T], options: 'Options | Mapping[str, Any] | None' = None,
             /, **overrides) -> T:
    """Options from an instance, a mapping or keywords (keywords win).

    Raises:
      ValueError: an unknown name (with near matches and the valid names),
        an instance of another mechanism's options, or an invalid value.
    """
    if isinstance(options, Options):
      if not isinstance(options, cls):
        raise ValueError(f'expected {cls.__name__}, got '
                         f'{type(options).__name__}')
      values = options.as_dict()
    elif options is None:
      values = {}
    elif isinstance(options, Mapping):
      values = dict(options)
    else:  # (name, value) pairs, as a frozen model config holds them
      values = dict(options)
    values.update(overrides)
    unknown = set(values) - set(cls.names())
    if unknown:
      raise ValueError(unknown_message(cls.__name__, unknown, cls.names()))
    return cls(**values)

  def as_dict(self) -> dict[str, Any]:
    return {name: getattr(self, name) for name in self.names()}

  def replace(self: T, **changes) -> T:
    return type(self).create(self, **changes)

  def non_default(self) -> dict[str, Any]:
    """The fields that differ from their defaults (for short reprs, configs)."""
    default = type(self)()
    return {k: v for k, v in self.as_dict().items()
            if getattr(default, k) != v}


def field_docs(options_type: type[Options]) -> dict[str, str]:
  """Each field's comment, as written beside it in the class body.

  `name: type = default  # what it is` is how every options class documents
  a field; the documentation pages are generated from these comments (so
  they cannot drift from the code), and a test requires one per field. A
  comment continues on the lines below that hold only a comment starting in
  the same column. Fields inherited from a parent options class keep the
  parent's comment unless redefined.
  """
  docs = {}
  for parent in reversed(options_type.__mro__[1:]):
    if issubclass(parent, Options) and parent is not Options:
      docs.update(_own_field_docs(parent))
  docs.update(_own_field_docs(options_type))
  return docs


def _own_field_docs(options_type) -> dict[str, str]:
  """The comments beside the fields defined in `options_type`'s body."""
  source = textwrap.dedent(inspect.getsource(options_type))
  [class_def] = ast.parse(source).body
  field_lines = {  # the last line of each field's statement -> its name
      statement.end_lineno: statement.target.id
      for statement in class_def.body
      if isinstance(statement, ast.AnnAssign) and
      isinstance(statement.target, ast.Name)}
  comments = {  # line -> (text, whether the line holds only it, column)
      token.start[0]: (token.string.lstrip('#').strip(),
                       token.line.strip().startswith('#'), token.start[1])
      for token in tokenize.generate_tokens(io.StringIO(source).readline)
      if token.type == tokenize.COMMENT}
  docs = {}
  for line, name in field_lines.items():
    if line not in comments or comments[line][1]:
      continue
    text, _, column = comments[line]
    line += 1
    while line in comments and comments[line][1:] == (True, column):
      text, line = f'{text} {comments[line][0]}', line + 1
    docs[name] = text
  return docs


@dataclasses.dataclass(frozen=True)
class NoOptions(Options):
  """A mechanism without hyperparameters (dense attention)."""


def takes(options_type: type[Options]) -> Callable[[Callable], Callable]:
  """Decorates `fn` to take `options_type`'s fields as checked keywords.

  `fn` declares the fields it uses as keyword-only parameters without
  defaults (the defaults live in the dataclass); the wrapper accepts every
  field (unused ones are validated and dropped) and `options=`.
  """
  fields = set(options_type.names())

  def decorate(fn):
    params = inspect.signature(fn).parameters
    wanted = [n for n, p in params.items()
              if n in fields and p.kind is inspect.Parameter.KEYWORD_ONLY]
    stray = [n for n, p in params.items() if n in fields and
             (p.kind is not inspect.Parameter.KEYWORD_ONLY or
              p.default is not inspect.Parameter.empty)]
    if stray:
      raise TypeError(f'{fn.__qualname__}: options {stray} must be '
                      'keyword-only without defaults (defaults live in '
                      f'{options_type.__name__})')
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
      raise TypeError(f'{fn.__qualname__}: no **kwargs with typed options')
    arguments = {n for n in params if n not in fields}
    keywords = {n for n, p in params.items() if n not in fields and (
        p.kind is inspect.Parameter.KEYWORD_ONLY or
        p.default is not inspect.Parameter.empty)} | {'options'}
    where = fn.__name__
    if not where.endswith('_attention'):  # init_state, step: say whose
      where = f'{fn.__module__.rsplit(".", 1)[-1]}.{where}'

    @functools.wraps(fn)
    def wrapper(*args, options=None, **kwargs):
      unknown = set(kwargs) - arguments - fields
      if unknown:
        raise ValueError(unknown_message(where, unknown, fields, keywords))
      given = {n: kwargs.pop(n) for n in list(kwargs) if n in fields}
      resolved = options_type.create(options, **given)
      return fn(*args, **kwargs, **{n: getattr(resolved, n) for n in wanted})

    wrapper.options_type = options_type
    return wrapper

  return decorate
