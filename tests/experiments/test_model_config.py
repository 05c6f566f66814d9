"""Every TransformerConfig field is reachable from an experiment config."""

import dataclasses

import jax.numpy as jnp
import pytest

from efficient_attention import attention
from efficient_attention.experiments import model_config
from efficient_attention.experiments import validation
from efficient_attention.experiments.configs import default
from efficient_attention import models
# For each TransformerConfig field: a value for its experiment config path
# and what the field then holds.
CHANGES = {
    'vocab_size': (300, 300),
    'model_dim': (64, 64),
    'num_layers': (3, 3),
    'num_heads': (8, 8),
    'num_kv_heads': (4, 4),
    'head_dim': (24, 24),
    'mlp_dim': (96, 96),
    'mlp': ('gelu', 'gelu'),
    'norm': ('layer', 'layer'),
    'post_norm': (True, True),
    'dropout_rate': (0.25, 0.25),
    'attention': ('dot_product', attention.AttentionSpec('dot_product')),
    'attention_options': ({'query_chunk_size': 64},
                          attention.AttentionSpec('blockwise',
                                                  {'query_chunk_size': 64})),
    'position': ('alibi', 'alibi'),
    'max_length': (4096, 4096),
    'tie_embeddings': (False, False),
    'qk_norm': (False, False),
    'shared_qk': (True, True),
    'logits_soft_cap': (30.0, 30.0),
    'dtype': ('bfloat16', jnp.bfloat16),
}


def test_every_field_has_a_path_and_a_test():
  fields = {f.name for f in dataclasses.fields(models.TransformerConfig)}
  assert set(model_config.FIELDS) == fields
  assert set(CHANGES) == fields


@pytest.mark.parametrize('field', sorted(CHANGES))
def test_each_field_is_set_from_its_config_path(field):
  path, _ = model_config.FIELDS[field]
  value, want = CHANGES[field]
  config = default.get_config()
  base = model_config.transformer_config(config)
  section, name = path.split('.')
  with config.unlocked():
    config[section][name] = value
    if field == 'shared_qk':
      config.model.num_kv_heads = config.model.num_heads
  validation.validate_config(config)
  built = model_config.transformer_config(config)
  got = built.layer_spec(0) if field.startswith('attention') else getattr(
      built, field)
  assert got == want
  before = base.layer_spec(0) if field.startswith('attention') else getattr(
      base, field)
  assert before != want  # the default differs: the path really sets it


def test_masks_scores_and_patterns_from_the_config():
  config = default.get_config()
  config.model.attention_mask = 'sliding_window(16)'
  config.model.attention_scores = 'soft_cap(20.0)'
  config.model.attention_pattern = ({}, {}, {'attention_mask': ''})
  built = model_config.transformer_config(config)
  local = attention.AttentionSpec('blockwise', mask='sliding_window(16)',
                                  scores='soft_cap(20.0)')
  assert [built.layer_spec(i) for i in range(4)] == [
      local, local, attention.AttentionSpec('blockwise',
                                            scores='soft_cap(20.0)'), local]


@pytest.mark.parametrize('path,value,match', [
    ('attention_options', {'memory_lenght': 8, 'segment_size': 8},
     r"config.model.attention: XLOptions: unknown option 'memory_lenght' "
     r"\(did you mean 'memory_length'"),
    ('attention_mask', 'sliding_windw(8)', "unknown mask 'sliding_windw'"),
    ('attention_scores', 'soft_cap(-1.0)', 'soft_cap must be a positive number'),
    ('attention_pattern', ({'attention_mask': 'chunked(0)'},),
     r'attention_pattern\[0\]: .*chunked'),
    ('attention_pattern', ({'mask': 'chunked(4)'},),
     r"attention_pattern\[0\]: unknown keys \['mask'\]"),
])
def test_bad_attention_fields_fail_validation_naming_the_path(path, value,
                                                               match):
  config = default.get_config()
  config.model.attention = 'xl'
  with config.unlocked():
    config.model[path] = value
  with pytest.raises(validation.ConfigError, match=match):
    validation.validate_config(config)
