"""Experiment configs are validated, case by case, before anything runs."""

import importlib
import os

import ml_collections
import pytest

from efficient_attention.experiments import train
from efficient_attention.experiments import validation
from efficient_attention.experiments.configs import default

CONFIGS = sorted(f[:-3] for f in os.listdir(os.path.dirname(default.__file__))
                 if f.endswith('.py') and not f.startswith('_'))


def with_values(**changes):
  """The default config with `section__field=value` changes, type-unsafe
  (as a config built by hand or from a file can be)."""
  values = default.get_config().to_dict()
  for name, value in changes.items():
    *sections, field = name.split('__')
    place = values
    for section in sections:
      place = place[section]
    place[field] = value
  return ml_collections.ConfigDict(values)


def problems(config):
  with pytest.raises(ValueError) as error:
    validation.validate_config(config)
  return str(error.value)


def test_schema_has_exactly_the_default_fields():
  assert set(validation.flatten(default.get_config())) == set(
      validation.SCHEMA)


@pytest.mark.parametrize('name', CONFIGS)
def test_every_shipped_config_is_valid(name):
  config = importlib.import_module(f'efficient_attention.experiments.configs.{name}').get_config()
  validation.validate_config(config)


@pytest.mark.parametrize('change,message', [
    (dict(train__num_steps=30.5),
     'config.train.num_steps = 30.5 is not allowed; expected an int >= 1'),
    (dict(train__grad_clip_norm=-1.0),
     'config.train.grad_clip_norm = -1.0 is not allowed; expected a number > 0'),
    (dict(train__weight_decay=-0.1),
     'config.train.weight_decay = -0.1 is not allowed; expected a number >= 0'),
    (dict(train__max_seconds=-1.0),
     'config.train.max_seconds = -1.0 is not allowed; expected a number >= 0'),
    (dict(data__size=0), 'config.data.size = 0 is not allowed'),
    (dict(seed=-1), 'config.seed = -1 is not allowed; expected an int >= 0'),
    (dict(data__eval_size=-4), 'config.data.eval_size = -4 is not allowed'),
    (dict(train__learning_rate='3e-3'),
     "config.train.learning_rate = '3e-3' is not allowed; expected a number"),
    (dict(train__num_steps='100'), "config.train.num_steps = '100'"),
    (dict(train__batch_size=True), 'config.train.batch_size = True'),
    (dict(train__learning_rate=float('nan')), 'config.train.learning_rate'),
    (dict(model__dropout_rate=1.0), 'config.model.dropout_rate = 1.0'),
    (dict(model__qk_norm=1), 'expected True or False'),
    (dict(model__position='xpos'),
     "config.model.position = 'xpos' is not allowed; expected one of"),
    (dict(model__attention='flash'), "config.model.attention = 'flash'"),
    (dict(train__schedule='linear'), "config.train.schedule = 'linear'"),
    (dict(train__warmup_steps=600), 'fewer than train.num_steps=250'),
    (dict(model__num_kv_heads=3), 'a divisor of model.num_heads=4'),
    (dict(data__validation_fraction=1.0), 'config.data.validation_fraction'),
    (dict(data__source='file'), "config.data.path = '' is not allowed"),
    (dict(data__source='mqar', data__size=97),
     'config.data.size = 97 is not allowed; expected a mqar size in [1, 96]'),
    (dict(data__source='addition', data__eval_size=19),
     'config.data.eval_size = 19'),
    (dict(data__source='mqar', data__size_schedule=((5, 0),)),
     'config.data.size_schedule[0] = 0'),
    (dict(data__size_schedule=((5,),)), 'config.data.size_schedule[0]'),
    (dict(model__position='learned', data__max_length=128),
     'config.data.sequence_length gives 256-token examples, longer than the '
     'learned position table'),
    (dict(model__position='learned', data__max_length=64, data__source='copy',
          data__size=10, data__eval_size=40),
     'config.data.eval_size gives 81-token examples'),
], ids=lambda x: '-'.join(x) if isinstance(x, dict) else None)
def test_bad_values_are_named_with_what_is_allowed(change, message):
  assert message in problems(with_values(**change))


def test_misspelt_fields_are_named_with_their_nearest_valid_names():
  config = default.get_config()
  config.train.num_step = 100  # a config file can add fields silently
  config.modle = ml_collections.ConfigDict({'model_dim': 64})
  text = problems(config)
  assert ('config.train.num_step is not a field of the config; did you mean '
          'config.train.num_steps?') in text
  assert 'config.modle is not a field of the config; did you mean config.model?' in text
  config = default.get_config()
  config.data.learning_rate = 1e-3  # a field in the wrong section
  assert 'did you mean config.train.learning_rate?' in problems(config)
  config = default.get_config()
  config.train.xyz = 1
  assert 'valid names there: train.batch_size, ' in problems(config)


def test_missing_fields_and_every_problem_reported_at_once():
  values = default.get_config().to_dict()
  del values['train']['learning_rate']
  values['seed'], values['data']['size'] = -1, 0
  text = problems(ml_collections.ConfigDict(values))
  assert text.startswith('3 problems with the experiment config:')
  assert 'config.train.learning_rate is missing' in text
  assert 'config.seed = -1' in text and 'config.data.size = 0' in text


@pytest.mark.parametrize('text,fraction,message', [
    (b'', 0.05, "the training split of data.path="),
    (b'x' * 100, 0.05, 'holds 95 bytes, fewer than one example of '
     'config.data.sequence_length=256 needs (258)'),
    (b'x' * 2000, 0.05, 'the validation split of data.path='),
], ids=['empty', 'short', 'short-validation'])
def test_short_data_files_are_named_before_training(tmp_path, text, fraction,
                                                    message):
  path = tmp_path / 'data.txt'
  path.write_bytes(text)
  config = default.get_config()
  config.data.source, config.data.path = 'file', str(path)
  config.data.validation_fraction = fraction
  workdir = tmp_path / 'run'
  with pytest.raises(ValueError) as error:
    train.train_and_evaluate(config, str(workdir))
  assert message in str(error.value) and str(path) in str(error.value)
  assert not workdir.exists()  # nothing ran, nothing was written
