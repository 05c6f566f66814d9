"""The Python blocks of docs pages run, in order, as written."""

import pathlib
import re

import pytest

from efficient_attention.attention import registry
from efficient_attention.models.layers import registry as layer_registry

DOCS = pathlib.Path(__file__).resolve().parent.parent / 'docs'


def python_blocks(page: str) -> list[str]:
  return re.findall(r'```python\n(.*?)```', (DOCS / page).read_text(),
                    flags=re.S)


def test_adding_a_mechanism_runs(monkeypatch):
  """The worked example registers a mechanism and a layer, builds a model
  and runs its own tests; the registries are restored afterwards."""
  monkeypatch.setattr(registry, '_REGISTRY', dict(registry._REGISTRY))
  monkeypatch.setattr(layer_registry, '_LAYERS', dict(layer_registry._LAYERS))
  blocks = python_blocks('adding_a_mechanism.md')
  assert len(blocks) >= 5
  # The module the page's example would be: attention/exact/cosine.py.
  namespace = {'__name__': 'efficient_attention.attention.exact.cosine'}
  for block in blocks:
    exec(compile(block, 'docs/adding_a_mechanism.md', 'exec'), namespace)
  assert 'cosine' in registry.names()
  with pytest.raises(ValueError, match='unknown attention mechanism'):
    registry._REGISTRY.pop('cosine') and registry.get('cosine')


def test_the_readme_quickstart_runs_as_written(capsys):
  text = (DOCS.parent / 'README.md').read_text()
  [quickstart] = re.findall(r'## Quickstart\n\n```python\n(.*?)```', text,
                            flags=re.S)
  namespace = {'__name__': 'quickstart'}
  exec(compile(quickstart, 'README.md', 'exec'), namespace)
  error = float(capsys.readouterr().out)  # the printed max |out - jax.nn|
  assert error < 1e-5  # what the comment beside the print says (~1e-6)
  assert namespace['logits'].shape == (1, 128, 256)
