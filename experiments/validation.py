"""One validation step for experiment configs, before anything is compiled.

`validate_config(config)` checks a config against the schema of
`experiments/configs/default.py`: no unknown or missing fields (an unknown
one is named with its nearest valid names), each value of the right type and
range, and the fields that constrain each other. `validate_corpus(config,
corpus)` checks the loaded text against the sequence length. Every problem
is reported at once, in one `ConfigError` (a `ValueError`), one line each, naming
`config.section.field`, the value and what is allowed.

The schema lives here, one entry per field of the default config (a test
keeps the two in step); variant configs override values, never add fields.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
from typing import Any, Callable

import jax
import ml_collections

from efficient_attention import attention
from efficient_attention.experiments import model_config as model_config_lib
from efficient_attention.experiments import tasks
from efficient_attention.models import config as model_config

SCHEDULES = ('cosine', 'rsqrt')
SOURCES = ('stdlib', 'file') + tuple(tasks.TASKS)
DTYPES = ('float32', 'bfloat16')


class ConfigError(ValueError):
  """A config (or its data) that cannot run; the message lists why."""


@dataclasses.dataclass(frozen=True)
class Field:
  """What one config field may hold: a type and a range or set of values."""

  kind: type  # int, float, bool, str, tuple (pairs) or dict (options)
  low: float | None = None  # smallest allowed (inclusive unless open_low)
  high: float | None = None  # largest allowed (inclusive unless open_high)
  open_low: bool = False
  open_high: bool = False
  choices: Callable[[], tuple] | None = None  # allowed values, when a set
  finite: bool = True  # floats: reject inf and nan

  def allowed(self) -> str:
    """What is allowed, in words."""
    if self.choices is not None:
      return f'one of {tuple(self.choices())}'
    kind = {int: 'an int', float: 'a number', bool: 'True or False',
            str: 'a string', tuple: 'a tuple of (from_step, size) pairs',
            dict: 'a dict of the mechanism\'s options'}[self.kind]
    bounds = []
    if self.low is not None:
      bounds.append(f'{">" if self.open_low else ">="} {self.low:g}')
    if self.high is not None:
      bounds.append(f'{"<" if self.open_high else "<="} {self.high:g}')
    if not self.finite:
      bounds.append('inf allowed')
    return kind + (' ' + ' and '.join(bounds) if bounds else '')

  def check(self, value) -> bool:
    """Whether `value` is of this field's type and within its range."""
    if self.choices is not None:
      return isinstance(value, str) and value in self.choices()
    if self.kind is bool:
      return isinstance(value, bool)
    if self.kind is int:
      ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    elif self.kind is float:
      ok = (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and not math.isnan(value) and (math.isfinite(value) or
                                           not self.finite))
    elif self.kind is dict:
      return isinstance(value, (dict, ml_collections.ConfigDict))
    elif self.kind is tuple:
      return isinstance(value, (tuple, list))
    else:
      return isinstance(value, self.kind)
    if not ok:
      return False
    if self.low is not None and (value <= self.low if self.open_low
                                 else value < self.low):
      return False
    return self.high is None or not (value >= self.high if self.open_high
                                     else value > self.high)


_POSITIVE = Field(int, low=1)
_FRACTION = Field(float, low=0, high=1, open_low=True, open_high=True)

SCHEMA: dict[str, Field] = {
    'seed': Field(int, low=0),
    'data.source': Field(str, choices=lambda: SOURCES),
    'data.path': Field(str),
    'data.validation_fraction': _FRACTION,
    'data.sequence_length': _POSITIVE,
    'data.size': _POSITIVE,
    'data.eval_size': Field(int, low=0),
    'data.score_all_tokens': Field(bool),
    'data.pack': Field(bool),
    'data.size_schedule': Field(tuple),
    'data.max_length': _POSITIVE,
    'model.attention': Field(str, choices=lambda: tuple(attention.names())),
    'model.attention_options': Field(dict),
    'model.attention_mask': Field(str),
    'model.attention_scores': Field(str),
    'model.attention_pattern': Field(tuple),
    'model.vocab_size': Field(int, low=256),
    'model.head_dim': Field(int, low=0),
    'model.post_norm': Field(bool),
    'model.logits_soft_cap': Field(float, low=0),
    'model.model_dim': _POSITIVE,
    'model.num_layers': _POSITIVE,
    'model.num_heads': _POSITIVE,
    'model.num_kv_heads': _POSITIVE,
    'model.mlp_dim': _POSITIVE,
    'model.mlp': Field(str, choices=lambda: model_config.MLPS),
    'model.norm': Field(str, choices=lambda: model_config.NORMS),
    'model.position': Field(str, choices=lambda: model_config.POSITIONS),
    'model.dropout_rate': Field(float, low=0, high=1, open_high=True),
    'model.tie_embeddings': Field(bool),
    'model.qk_norm': Field(bool),
    'model.shared_qk': Field(bool),
    'train.batch_size': _POSITIVE,
    'train.num_steps': _POSITIVE,
    'train.max_seconds': Field(float, low=0, finite=False),  # 0: no cap
    'train.learning_rate': Field(float, low=0, open_low=True),
    'train.schedule': Field(str, choices=lambda: SCHEDULES),
    'train.warmup_steps': _POSITIVE,
    'train.weight_decay': Field(float, low=0),
    # optax.clip_by_global_norm with a negative norm flips the gradient.
    'train.grad_clip_norm': Field(float, low=0, open_low=True, finite=False),
    'train.compute_dtype': Field(str, choices=lambda: DTYPES),
    'train.log_every': _POSITIVE,
    'train.eval_every': _POSITIVE,
    'train.eval_batches': _POSITIVE,
    'train.checkpoint_every': _POSITIVE,
    'train.keep_checkpoints': _POSITIVE,
    'train.redraw_projections_every': Field(int, low=0),
}


def flatten(config, prefix: str = '') -> dict[str, Any]:
  """`{'section.field': value}` of a (nested) config, options kept whole."""
  out = {}
  for name, value in config.items():
    path = prefix + name
    if isinstance(value, (dict, ml_collections.ConfigDict)) and any(
        p.startswith(path + '.') for p in SCHEMA):
      out.update(flatten(value, path + '.'))
    else:
      out[path] = value
  return out


def _unknown_field(path: str) -> str:
  """`path` is not in the schema: name it and its nearest valid names."""
  depth = path.count('.') + 1
  same_depth = sorted({'.'.join(p.split('.')[:depth]) for p in SCHEMA
                       if p.count('.') + 1 >= depth})
  section, _, name = path.rpartition('.')
  siblings = [p for p in same_depth if p.rpartition('.')[0] == section]
  near = (difflib.get_close_matches(path, siblings, n=2, cutoff=0.8) or
          [p for p in same_depth if p.rpartition('.')[2] == name] or
          difflib.get_close_matches(path, same_depth, n=2, cutoff=0.6))
  hint = (f'did you mean {" or ".join("config." + p for p in near)}?'
          if near else f'valid names there: {", ".join(siblings)}')
  return f'config.{path} is not a field of the config; {hint}'


def _problems(config) -> list[str]:
  fields = flatten(config)
  problems = [_unknown_field(p) for p in fields if p not in SCHEMA]
  problems += [f'config.{p} is missing (expected {f.allowed()})'
               for p, f in SCHEMA.items() if p not in fields]
  for path, field in SCHEMA.items():
    if path in fields and not field.check(fields[path]):
      problems.append(f'config.{path} = {fields[path]!r} is not allowed; '
                      f'expected {field.allowed()}')
  if problems:  # cross-field checks need well-typed fields
    return problems
  return _cross_field_problems(config)


def _task_sizes(config) -> dict[str, int]:
  d = config.data
  sizes = {'data.size': d.size}
  if d.eval_size:
    sizes['data.eval_size'] = d.eval_size
  for i, (_, size) in enumerate(d.size_schedule):
    sizes[f'data.size_schedule[{i}]'] = size
  return sizes


def _cross_field_problems(config) -> list[str]:
  d, m, t = config.data, config.model, config.train
  problems = []
  say = lambda path, value, allowed: problems.append(
      f'config.{path} = {value!r} is not allowed; expected {allowed}')
  if t.warmup_steps >= t.num_steps:
    say('train.warmup_steps', t.warmup_steps,
        f'fewer than train.num_steps={t.num_steps}')
  if t.batch_size % jax.device_count():
    say('train.batch_size', t.batch_size,
        f'a multiple of the {jax.device_count()} devices')
  if m.num_heads % m.num_kv_heads:
    say('model.num_kv_heads', m.num_kv_heads,
        f'a divisor of model.num_heads={m.num_heads}')
  if m.shared_qk and m.num_kv_heads != m.num_heads:
    say('model.num_kv_heads', m.num_kv_heads,
        f'model.num_heads={m.num_heads} when model.shared_qk is True')
  try:  # unknown mechanisms, options, masks, scores: named with the path
    model_config_lib.attention_specs(m)
  except ValueError as e:
    problems.append(str(e))
  for i, pair in enumerate(d.size_schedule):
    if (not isinstance(pair, (tuple, list)) or len(pair) != 2 or
        not all(Field(int, low=0).check(x) for x in pair)):
      say(f'data.size_schedule[{i}]', pair,
          'a pair (from_step >= 0, size > 0) of ints')
  if problems:
    return problems
  if d.source == 'file' and not d.path:
    say('data.path', d.path, "a file to read when data.source='file'")
  if d.source in tasks.TASKS:
    low, high = tasks.SIZES[d.source]
    for path, size in _task_sizes(config).items():
      if not low <= size <= (high or size):
        say(path, size, f'a {d.source} size in [{low}, {high or "inf"}]')
  if d.pack:
    problems += _pack_problems(config)
  if m.position == 'learned':
    problems += _length_problems(config)
  return problems


def _pack_problems(config) -> list[str]:
  """Packing needs text and mechanisms that take the document mask."""
  d, m = config.data, config.model
  if d.source in tasks.TASKS:
    return [f'config.data.pack = True is not allowed with data.source='
            f'{d.source!r}; expected a text source (stdlib or file): task '
            'examples are one document each']
  refusing = sorted({spec.name for spec in model_config_lib.attention_specs(m)
                     if 'mask' in spec.mechanism.refuses})
  taking = ', '.join(n for n in attention.names()
                     if 'mask' not in attention.get(n).refuses)
  return [f'config.data.pack = True is not allowed with model.attention '
          f'{name!r}, which takes no mask (packed documents are kept apart '
          f'by the document mask); expected a mechanism that takes masks: '
          f'{taking}' for name in refusing]


def _length_problems(config) -> list[str]:
  """Examples longer than the learned position table."""
  d = config.data
  if d.source in tasks.TASKS:
    lengths = {path: tasks.length(d.source, size)
               for path, size in _task_sizes(config).items()}
  else:
    lengths = {'data.sequence_length': d.sequence_length}
  return [f'config.{path} gives {length}-token examples, longer than the '
          f'learned position table (config.data.max_length={d.max_length}); '
          'raise data.max_length or use another model.position'
          for path, length in lengths.items() if length > d.max_length]


def _raise(problems: list[str], what: str):
  if len(problems) == 1:  # one line: the problem names its field
    raise ConfigError(f'{what}: {problems[0]}')
  if problems:
    lines = '\n  '.join(problems)
    raise ConfigError(f'{len(problems)} problem{"s" * (len(problems) > 1)} '
                     f'with the {what}:\n  {lines}')


def override_problems(argv: list[str], flag: str = 'config') -> list[str]:
  """Command-line overrides `--config.a.b=...` naming no field of the schema.

  ml_collections raises a bare AttributeError (or KeyError) for these while
  it parses flags; this names each unknown path and its nearest valid names.
  Keys under a dict field (`model.attention_options`) are the mechanism's
  options: set the whole dict (`--config.model.attention_options="{...}"`)
  so that the typed options can name a misspelt one.
  """
  problems = []
  for arg in argv[1:]:
    if not arg.startswith(f'--{flag}.'):
      continue
    path = arg[len(flag) + 3:].split('=', 1)[0]
    parent = next((p for p in SCHEMA if path.startswith(p + '.')), None)
    if parent is not None and SCHEMA[parent].kind is dict:
      problems.append(
          f'--{flag}.{path}: {parent} is a dict that cannot gain keys from '
          f'the command line; set it whole, e.g. --{flag}.{parent}='
          f'"{{\'{path[len(parent) + 1:]}\': ...}}"')
    elif path not in SCHEMA:
      problems.append('--' + _unknown_field(path).replace(
          'config.', f'{flag}.', 1))
  return problems


def format_config(config) -> str:
  """Every field of `config` and its value, one `config.path = value` line
  each, grouped by section (what `--print_config` shows)."""
  lines = []
  for path, value in flatten(config).items():
    section = path.split('.')[0]
    if not lines or not lines[-1][0] == section:
      lines.append((section, []))
    note = SCHEMA[path].allowed() if path in SCHEMA else 'not in the schema'
    lines[-1][1].append(f'  config.{path} = {value!r}  # {note}')
  return '\n'.join(f'{section}:\n' + '\n'.join(rows)
                   for section, rows in lines)


def validate_config(config) -> None:
  """Raises ConfigError listing every problem of `config` (module doc)."""
  _raise(_problems(config), 'experiment config')


def validate_corpus(config, corpus) -> None:
  """Raises ConfigError when a text split is shorter than one example."""
  d, problems = config.data, []
  where = (f'data.path={d.path!r}' if d.source == 'file'
           else f'data.source={d.source!r}')
  need_train, need_validation = d.sequence_length + 2, d.sequence_length + 1
  if len(corpus.train) < need_train:
    problems.append(
        f'the training split of {where} holds {len(corpus.train)} bytes, '
        f'fewer than one example of config.data.sequence_length='
        f'{d.sequence_length} needs ({need_train})')
  if len(corpus.validation) < need_validation:
    problems.append(
        f'the validation split of {where} (config.data.validation_fraction='
        f'{d.validation_fraction}) holds {len(corpus.validation)} bytes, '
        f'fewer than one example of config.data.sequence_length='
        f'{d.sequence_length} needs ({need_validation})')
  _raise(problems, 'data')
