"""The CPU compile flags of the suite and the notebooks' smoke mode."""

import importlib.util

from efficient_attention.experiments import compile_flags


def test_flags_are_added_once_and_never_over_a_users_choice(monkeypatch):
  monkeypatch.setattr(importlib.util, 'find_spec', lambda name: None)
  env = compile_flags.environ({'XLA_FLAGS': '--xla_dump_to=/tmp/x', 'A': '1'})
  assert env['XLA_FLAGS'].split() == ['--xla_dump_to=/tmp/x',
                                      *compile_flags.FLAGS]
  assert env['A'] == '1'
  assert compile_flags.environ(env) == env  # idempotent
  own = {'XLA_FLAGS': '--xla_cpu_use_fusion_emitters=true'}
  assert compile_flags.environ(own) == own
  own = {'XLA_FLAGS': '--xla_backend_optimization_level=2'}
  assert compile_flags.environ(own) == own


def test_no_flags_where_an_accelerator_plugin_is_installed(monkeypatch):
  monkeypatch.setattr(importlib.util, 'find_spec',
                      lambda name: object() if name == 'libtpu' else None)
  assert 'XLA_FLAGS' not in compile_flags.environ({})
