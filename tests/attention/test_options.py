"""Typed options: one declaration per mechanism, checked on every path."""

import dataclasses
import inspect
import sys

from flax import nnx
import jax.numpy as jnp
import pytest

from efficient_attention import attention
from efficient_attention.attention import options as options_lib
from efficient_attention import models
B, T, N, K, H = 1, 8, 2, 1, 4


def misspelt(name: str) -> str:
  """A plausible typo: the last two letters swapped."""
  return name[:-2] + name[-1] + name[-2]


# (mechanism, a misspelt option) for every registered mechanism.
TYPOS = [(name, misspelt(attention.get(name).options.names()[0])
          if attention.get(name).options.names() else 'chunk_size')
         for name in attention.names()]


def qkv():
  q = jnp.ones((B, T, N, H))
  kv = jnp.ones((B, T, K, H))
  return q, kv, kv


@pytest.mark.parametrize('name,typo', TYPOS)
def test_a_misspelt_option_fails_on_every_kernel_path(name, typo):
  mechanism = attention.get(name)
  q, k, v = qkv()
  valid = '|'.join(mechanism.options.names()) or 'none'
  message = f"unknown option '{typo}'.*valid options: .*({valid})"
  calls = {
      'direct': lambda: mechanism.fn(q, k, v, is_causal=True, **{typo: 8}),
      'registry': lambda: mechanism(q, k, v, is_causal=True, **{typo: 8}),
  }
  if mechanism.decodable:
    state = mechanism.init_state(B, K, H, max_length=T)
    calls['init_state'] = lambda: mechanism.init_state(
        B, K, H, max_length=T, **{typo: 8})
    calls['step'] = lambda: mechanism.step(state, q[:, :1], k[:, :1],
                                           v[:, :1], **{typo: 8})
  for path, call in calls.items():
    with pytest.raises(ValueError, match=message):
      call()


@pytest.mark.parametrize('name,typo', TYPOS)
def test_a_misspelt_option_fails_in_layers_and_model_configs(name, typo):
  message = f"unknown option '{typo}'"
  with pytest.raises(ValueError, match=message):
    models.attention_layer(8, 2, attention=name, attention_options={typo: 8},
                           rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=message):
    models.TransformerConfig(attention=name, attention_options=((typo, 8),))
  with pytest.raises(ValueError, match=message):
    attention.AttentionSpec(name, {typo: 8})


def test_the_issue_case_memory_lenght_no_longer_decodes_silently():
  """Before: the forward pass raised TypeError, but init_cache built 520
  slots (the default memory) and generate ran with other tokens."""
  with pytest.raises(ValueError, match="'memory_lenght' .*did you mean "
                     "'memory_length'"):
    models.TransformerConfig(attention='xl', attention_options=(
        ('memory_lenght', 8), ('segment_size', 8)))
  xl = attention.get('xl')
  with pytest.raises(ValueError, match="xl.init_state: unknown option "
                     "'memory_lenght'"):
    xl.init_state(1, 1, 4, max_length=64, memory_lenght=8, segment_size=8)
  state = xl.init_state(1, 1, 4, max_length=64, memory_length=8,
                        segment_size=8)
  assert state.key.shape[1] == 16
  q = jnp.ones((1, 1, 2, 4))
  with pytest.raises(ValueError, match="xl.step: unknown option "
                     "'memory_lenght'"):
    xl.step(state, q, q[:, :, :1], q[:, :, :1], memory_lenght=8,
            segment_size=8)


@pytest.mark.parametrize('name,option,value', [
    ('blockwise', 'query_chunk_size', 0),
    ('linear', 'feature_map', 'elu'),
    ('linear', 'eps', -1.0),
    ('performer', 'kernel', 'cosine'),
    ('performer', 'num_features', 2.5),
    ('performer', 'orthogonal', 1),
    ('lsh', 'num_buckets', 3),
    ('infini', 'update', 'add'),
    ('xl', 'memory_length', -1),
])
def test_bad_values_are_rejected_with_the_option_named(name, option, value):
  options_type = attention.get(name).options
  with pytest.raises(ValueError, match=f'{options_type.__name__}: {option}'):
    options_type(**{option: value})
  q, k, v = qkv()
  with pytest.raises(ValueError, match=option):
    attention.get(name)(q, k, v, is_causal=True, **{option: value})


def test_options_are_frozen_hashable_and_round_trip():
  options = attention.get('xl').options.create({'memory_length': 8})
  assert options == attention.get('xl').make_options(memory_length=8)
  assert hash(options) == hash(options.replace(memory_length=8))
  assert options.non_default() == {'memory_length': 8}
  with pytest.raises(dataclasses.FrozenInstanceError):
    options.memory_length = 4
  with pytest.raises(ValueError, match='expected XLOptions, got '
                     'InfiniOptions'):
    attention.get('xl').options.create(attention.get('infini').options())
  q, k, v = qkv()
  assert jnp.array_equal(
      attention.xl_attention(q, k, v, options=options.replace(
          segment_size=4)),
      attention.xl_attention(q, k, v, memory_length=8, segment_size=4))


def _functions_of(module):
  return [f for f in vars(module).values() if inspect.isfunction(f)
          and f.__module__ == module.__name__]


@pytest.mark.parametrize('name', attention.names())
def test_defaults_live_in_one_place(name):
  """No function of a mechanism's module repeats an option's default
  differently; the kernel, init_state and step declare none."""
  mechanism = attention.get(name)
  defaults = mechanism.defaults
  for fn in (mechanism.fn, mechanism.init_state, mechanism.step):
    if fn is None or not hasattr(fn, 'options_type'):
      continue
    params = inspect.signature(fn).parameters
    assert not [n for n in defaults if n in params and
                params[n].default is not inspect.Parameter.empty], fn
  module = sys.modules[mechanism.fn.__module__]
  for fn in _functions_of(module):
    for param in inspect.signature(fn).parameters.values():
      if (param.name in defaults and
          param.default is not inspect.Parameter.empty):
        assert param.default == defaults[param.name], (fn, param.name)


def test_takes_refuses_defaults_outside_the_dataclass():
  @dataclasses.dataclass(frozen=True)
  class Opts(options_lib.Options):
    size: int = 4

  with pytest.raises(TypeError, match='defaults live in Opts'):
    @options_lib.takes(Opts)
    def bad(x, *, size=4):
      return x
    del bad

  @options_lib.takes(Opts)
  def good(x, *, size):
    return x * size

  assert good(2) == 8 and good(2, size=3) == 6
  assert good(2, options=Opts(size=5)) == 10
  with pytest.raises(ValueError, match="good: unknown option 'szie' "
                     r"\(did you mean 'size'\?\)"):
    good(2, szie=3)
