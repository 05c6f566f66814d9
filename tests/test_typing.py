"""Type annotations on the public functions (the package ships py.typed):
every parameter and the result annotated, every annotation resolvable."""

import inspect
import typing

import pytest

from efficient_attention import attention
from efficient_attention import models
from efficient_attention.experiments import train


def _public_functions():
  found = {}
  for module in (attention, models):
    for name in module.__all__:
      value = getattr(module, name)
      if inspect.isfunction(value):
        found[f'{module.__name__}.{name}'] = value
  for name in attention.names():
    mechanism = attention.get(name)
    found[f'attention.get({name!r})'] = inspect.unwrap(mechanism.fn)
    for part in ('init_state', 'step'):
      if getattr(mechanism, part, None) is not None:
        found[f'attention.get({name!r}).{part}'] = getattr(mechanism, part)
  found['experiments.train.train_and_evaluate'] = train.train_and_evaluate
  methods = {models.DecoderLM: ('__call__', 'init_cache', 'decode'),
             models.Encoder: ('__call__', 'mlm_logits', 'classify'),
             models.EncoderDecoder: ('__call__', 'encode', 'init_cache',
                                     'decode'),
             models.MultiHeadAttention: ('__call__', 'init_state', 'step')}
  for cls, names in methods.items():
    for name in names:
      found[f'models.{cls.__name__}.{name}'] = getattr(cls, name)
  return found


FUNCTIONS = _public_functions()


@pytest.mark.parametrize('name', sorted(FUNCTIONS))
def test_public_functions_are_annotated(name):
  fn = inspect.unwrap(FUNCTIONS[name])
  signature = inspect.signature(fn)
  missing = [p.name for p in signature.parameters.values()
             if p.annotation is inspect.Parameter.empty and p.name != 'self'
             and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
  assert not missing, f'{name}: parameters without annotation: {missing}'
  assert signature.return_annotation is not inspect.Signature.empty, name
  typing.get_type_hints(fn)  # every name in the annotations resolves
