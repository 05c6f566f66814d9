"""One attention spec: mechanism, typed options, mask and scores together.

An `AttentionSpec` travels unchanged from a config file to the kernel:

  spec = AttentionSpec('blockwise', {'query_chunk_size': 256},
                       mask='sliding_window(512)', scores='soft_cap(30.0)')
  out = spec(query, key, value, is_causal=True)

`options` become the mechanism's typed options on construction (a
misspelt name raises ValueError there). `mask` and `scores` are objects of
`attention.masks` / `attention.scores`, or expressions in the small
language below, which a config file or a command-line flag can hold:

  mask:    sliding_window(512) & chunked(64) | global_tokens((0, 1))
           per_head(strided(8), fixed(8, 1))
  scores:  soft_cap(30.0), self_logit(-1e5)     (comma-separated: a chain)

Only constructors of static patterns and scores are accepted (masks of
data, such as `document(segment_ids)`, come with the inputs, not the
config), and only literal arguments: the expression is parsed, never
evaluated as Python.
"""

from __future__ import annotations

import ast
import dataclasses
from typing import Any

from efficient_attention.attention import masks
from efficient_attention.attention import options as options_lib
from efficient_attention.attention import registry
from efficient_attention.attention import scores as scores_lib

MASKS = {
    'causal': masks.causal,
    'sliding_window': masks.sliding_window,
    'chunked': masks.chunked,
    'block_window': masks.block_window,
    'strided': masks.strided,
    'fixed': masks.fixed,
    'global_tokens': masks.global_tokens,
    'random_blocks': masks.random_blocks,
    'prefix_lm': masks.prefix_lm,
    'per_head': masks.per_head,
}
SCORES = {
    'soft_cap': scores_lib.soft_cap,
    'self_logit': scores_lib.self_logit,
    'alibi': scores_lib.alibi,
}


def _literal(node, text):
  try:
    return ast.literal_eval(node)
  except ValueError:
    raise ValueError(f'in {text!r}: arguments must be literals, got '
                     f'{ast.unparse(node)!r}') from None


def _build(node, text, table, kind):
  if isinstance(node, ast.BinOp) and isinstance(node.op,
                                                (ast.BitAnd, ast.BitOr)):
    if kind != 'mask':
      raise ValueError(f'in {text!r}: & and | combine masks, not scores')
    left = _build(node.left, text, table, kind)
    right = _build(node.right, text, table, kind)
    return left & right if isinstance(node.op, ast.BitAnd) else left | right
  if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
    name = node.func.id
    if name not in table:
      raise ValueError(options_lib.unknown_message(
          f'{kind} {text!r}', {name}, table).replace('option', kind))
    if name == 'per_head':
      args = [_build(a, text, table, kind) for a in node.args]
    else:
      args = [_literal(a, text) for a in node.args]
    kwargs = {k.arg: _literal(k.value, text) for k in node.keywords}
    try:
      return table[name](*args, **kwargs)
    except TypeError as e:
      raise ValueError(f'in {text!r}: {e}') from None
  raise ValueError(f'in {text!r}: expected a call such as '
                   f'{next(iter(table))}(...), got {ast.unparse(node)!r}')


def _parse(text: str, kind: str):
  try:
    tree = ast.parse(text.strip(), mode='eval').body
  except SyntaxError as e:
    raise ValueError(f'{kind} {text!r} is not an expression: {e.msg}') from None
  table = MASKS if kind == 'mask' else SCORES
  if kind == 'score' and isinstance(tree, ast.Tuple):
    return tuple(_build(n, text, table, kind) for n in tree.elts)
  built = _build(tree, text, table, kind)
  return (built,) if kind == 'score' else built


def parse_mask(text: str) -> masks.Mask | None:
  """The mask of an expression such as `'sliding_window(512) & causal()'`;
  None for an empty string."""
  return _parse(text, 'mask') if text and text.strip() else None


def parse_scores(text: str) -> tuple[scores_lib.Score, ...]:
  """The scores of `'soft_cap(30.0), self_logit(-1e5)'` (a chain, in order)."""
  return _parse(text, 'score') if text and text.strip() else ()


@dataclasses.dataclass(frozen=True, eq=False)
class AttentionSpec:
  """A mechanism by name with its typed options, a mask and scores.

  Attributes:
    name: a registry name (`attention.names()`).
    options: that mechanism's `Options` (a mapping or `(name, value)` pairs
      are converted, and checked, on construction).
    mask: an `attention.masks.Mask`, an expression (see the module
      docstring), or None. It is ANDed with the masks of each call.
    scores: `attention.scores` modifiers or an expression; applied in
      order, before the call's own `score`.
  """

  name: str = 'blockwise'
  options: Any = None
  mask: Any = None
  scores: Any = ()

  def __post_init__(self):
    mechanism = registry.get(self.name)  # unknown names fail here
    object.__setattr__(self, 'options', mechanism.make_options(self.options))
    if isinstance(self.mask, str):
      object.__setattr__(self, 'mask_text', self.mask)
      object.__setattr__(self, 'mask', parse_mask(self.mask))
    elif self.mask is not None and not isinstance(self.mask, masks.Mask):
      raise ValueError(f'mask must be an attention.masks.Mask, an expression '
                       f'or None, got {type(self.mask).__name__}')
    scores = self.scores
    if isinstance(scores, str):
      object.__setattr__(self, 'scores_text', scores)
      scores = parse_scores(scores)
    elif isinstance(scores, scores_lib.Score):
      scores = (scores,)
    scores = tuple(scores)
    for s in scores:
      if not isinstance(s, scores_lib.Score):
        raise ValueError(f'scores must be attention.scores modifiers or an '
                         f'expression, got {type(s).__name__}')
    object.__setattr__(self, 'scores', scores)
    for what, used in [('mask', self.mask is not None),
                       ('score', bool(scores))]:
      if used and what in mechanism.refuses:  # no attention matrix
        raise ValueError(f'attention {self.name!r} does not support a '
                         f'{what} (spec {self.name}: mask={self.mask!r}, '
                         f'scores={scores!r})')

  def _key(self):
    """Equality: masks and scores given as expressions compare by text."""
    return (self.name, self.options,
            getattr(self, 'mask_text', None) or id(self.mask),
            getattr(self, 'scores_text', None) or tuple(map(id, self.scores)))

  def __eq__(self, other):
    return isinstance(other, AttentionSpec) and self._key() == other._key()

  def __hash__(self):
    return hash(self._key())

  def __repr__(self):
    parts = [repr(self.name)]
    if self.options.non_default():
      parts.append(f'options={self.options.non_default()!r}')
    if self.mask is not None:
      parts.append(f'mask={getattr(self, "mask_text", self.mask)!r}')
    if self.scores:
      parts.append(f'scores={getattr(self, "scores_text", self.scores)!r}')
    return f'AttentionSpec({", ".join(parts)})'

  @classmethod
  def create(cls, spec=None, **fields) -> 'AttentionSpec':
    """A spec from a spec, a registry name, or a mapping of its fields
    (`name`, `options`, `mask`, `scores`); `fields` override."""
    if isinstance(spec, AttentionSpec):
      if not fields:
        return spec
      spec = {'name': spec.name, 'options': spec.options,
              'mask': getattr(spec, 'mask_text', None) or spec.mask,
              'scores': getattr(spec, 'scores_text', None) or spec.scores}
    elif isinstance(spec, str):
      spec = {'name': spec}
    spec = dict(spec or {})
    spec.update(fields)
    unknown = set(spec) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
      raise ValueError(options_lib.unknown_message(
          'AttentionSpec', unknown, ('name', 'options', 'mask', 'scores')))
    return cls(**spec)

  @property
  def mechanism(self) -> registry.Mechanism:
    return registry.get(self.name)

  @property
  def window(self) -> tuple[int, int] | None:
    """`(left, 0)` when the mask is one causal-side sliding window: exact
    decoding then keeps a ring of `left` tokens instead of a whole cache."""
    if (isinstance(self.mask, masks.patterns.Window) and self.mask.right == 0
        and 'local_window_size' not in self.mechanism.refuses):
      return (self.mask.left, 0)
    return None

  def __call__(self, query, key, value, bias=None, mask=None, *, score=None,
               **arguments):
    """The mechanism on `query [B, T, N, H]`, `key/value [B, S, K, H]`, with
    this spec's options, its mask ANDed with `mask` and its scores before
    `score`."""
    extra = self._extra(mask, score)
    return self.mechanism(query, key, value, bias, options=self.options,
                          **extra, **arguments)

  def _extra(self, mask, score):
    merged_mask = self.mask
    if mask is not None:
      if self.mask is not None and not isinstance(mask, masks.Mask):
        raise ValueError('a spec with a mask takes other masks as '
                         'attention.masks objects, not boolean arrays')
      merged_mask = mask if self.mask is None else self.mask & mask
    merged_score = scores_lib.chain(*self.scores, score)
    extra = {}
    if merged_mask is not None:
      extra['mask'] = merged_mask
    if merged_score is not None:
      extra['score'] = merged_score
    return extra

  def init_state(self, batch_size: int, num_kv_heads: int, head_dim: int, *,
                 max_length: int, dtype=None, **arguments):
    """The mechanism's empty decoding state under this spec's options."""
    mechanism = self.mechanism
    if not mechanism.decodable:
      raise ValueError(f'attention {self.name!r} has no decoding form '
                       '(init_state/step)')
    kwargs = {} if dtype is None else {'dtype': dtype}
    if self.window is not None:
      kwargs['local_window_size'] = self.window
    return mechanism.init_state(batch_size, num_kv_heads, head_dim,
                                max_length=max_length, options=self.options,
                                **kwargs, **arguments)

  def step(self, state, query, key, value, *, mask=None, score=None,
           **arguments):
    """One causal decoding step under this spec (see `Mechanism.step`)."""
    mechanism = self.mechanism
    if not mechanism.decodable:
      raise ValueError(f'attention {self.name!r} has no decoding form '
                       '(init_state/step)')
    extra = self._extra(mask, score)
    if self.window is not None and mask is None:  # the ring cache's form
      extra.pop('mask')
      arguments['local_window_size'] = self.window
    return mechanism.step(state, query, key, value, options=self.options,
                          **extra, **arguments)

  def to_config(self) -> dict[str, Any]:
    """A dict of plain values a config file can hold (masks and scores as
    expressions when they were given as expressions)."""
    return {'name': self.name, 'options': self.options.non_default(),
            'mask': getattr(self, 'mask_text', self.mask),
            'scores': getattr(self, 'scores_text', self.scores)}
