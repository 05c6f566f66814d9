"""The model's `TransformerConfig` from an experiment config, field by field.

Every field of `models.TransformerConfig` is set from one experiment config
path (`FIELDS`; a test enumerates them), and the attention fields become one
`attention.AttentionSpec` per pattern entry here, which then travels
unchanged to the kernel.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax.numpy as jnp

from efficient_attention.attention.spec import AttentionSpec
from efficient_attention import models
DTYPES = {'float32': None, 'bfloat16': jnp.bfloat16}

# The experiment config's fields of one attention spec (a pattern entry
# overrides any of them).
SPEC_FIELDS = ('attention', 'attention_options', 'attention_mask',
               'attention_scores')


def _spec(fields: dict[str, Any]) -> AttentionSpec:
  return AttentionSpec(fields['attention'],
                       dict(fields['attention_options']),
                       mask=fields['attention_mask'] or None,
                       scores=fields['attention_scores'])


def attention_specs(model) -> tuple[AttentionSpec, ...]:
  """The spec of `model.attention*`, or one per `model.attention_pattern`
  entry (each a dict overriding some of `SPEC_FIELDS`).

  Raises:
    ValueError: naming the config path of an unknown mechanism, option,
      mask or score.
  """
  base = {name: model[name] for name in SPEC_FIELDS}
  pattern = list(model.attention_pattern) or [{}]
  specs = []
  for i, entry in enumerate(pattern):
    where = (f'config.model.attention_pattern[{i}]'
             if model.attention_pattern else 'config.model.attention')
    entry = dict(entry)
    unknown = set(entry) - set(SPEC_FIELDS)
    if unknown:
      raise ValueError(f'{where}: unknown keys {sorted(unknown)}; expected '
                       f'some of {list(SPEC_FIELDS)}')
    try:
      specs.append(_spec({**base, **entry}))
    except ValueError as e:
      raise ValueError(f'{where}: {e}') from None
  return tuple(specs)


def _none_if_zero(value):
  return value or None


# TransformerConfig field -> (experiment config path, conversion).
FIELDS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    'vocab_size': ('model.vocab_size', int),
    'model_dim': ('model.model_dim', int),
    'num_layers': ('model.num_layers', int),
    'num_heads': ('model.num_heads', int),
    'num_kv_heads': ('model.num_kv_heads', int),
    'head_dim': ('model.head_dim', _none_if_zero),
    'mlp_dim': ('model.mlp_dim', int),
    'mlp': ('model.mlp', str),
    'norm': ('model.norm', str),
    'post_norm': ('model.post_norm', bool),
    'dropout_rate': ('model.dropout_rate', float),
    'attention': ('model.attention', None),  # with the spec fields, below
    'attention_options': ('model.attention_options', None),  # into the spec
    'position': ('model.position', str),
    'max_length': ('data.max_length', int),
    'tie_embeddings': ('model.tie_embeddings', bool),
    'qk_norm': ('model.qk_norm', bool),
    'shared_qk': ('model.shared_qk', bool),
    'logits_soft_cap': ('model.logits_soft_cap', _none_if_zero),
    'dtype': ('train.compute_dtype', DTYPES.__getitem__),
}


def _get(config, path: str):
  for part in path.split('.'):
    config = config[part]
  return config


def transformer_config(config) -> models.TransformerConfig:
  """The `TransformerConfig` of experiment config `config`."""
  missing = ({f.name for f in dataclasses.fields(models.TransformerConfig)}
             - set(FIELDS))
  if missing:  # a new TransformerConfig field must be given a config path
    raise ValueError(f'TransformerConfig fields without a config path: '
                     f'{sorted(missing)}')
  values = {name: convert(_get(config, path))
            for name, (path, convert) in FIELDS.items() if convert}
  specs = attention_specs(config.model)
  values['attention'] = specs if len(specs) > 1 else specs[0]
  return models.TransformerConfig(**values)
