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


def test_generated_pages_are_current():
  """docs/options.md is what the option classes say (rerun the generator
  after changing an option: python -m efficient_attention.experiments.
  docs_pages)."""
  from efficient_attention.experiments import docs_pages  # pylint: disable=g-import-not-at-top
  for filename, make in docs_pages.PAGES.items():
    current = (DOCS / filename).read_text()
    assert current == make(current), filename


def test_every_option_has_its_comment():
  from efficient_attention.attention import options  # pylint: disable=g-import-not-at-top
  for name in registry.names():
    options_type = registry.get(name).options
    docs = options.field_docs(options_type)
    assert set(docs) == set(options_type.names()), name
    assert all(docs.values()), name


def test_field_docs_reads_comments_beside_fields_and_their_continuations():
  import dataclasses  # pylint: disable=g-import-not-at-top
  from efficient_attention.attention import options  # pylint: disable=g-import-not-at-top

  @dataclasses.dataclass(frozen=True)
  class Example(options.Options):
    size: int = 4  # rows per tile
    # (a comment above a field belongs to no field)
    rule: str = 'a'  # one of two rules,
                     # continued here
    plain: bool = True

    def method(self):  # not a field
      return self.size

  assert options.field_docs(Example) == {
      'size': 'rows per tile', 'rule': 'one of two rules, continued here'}


def test_citation_file_lists_every_paper_the_code_cites():
  """CITATION.cff is valid YAML with the fields CFF 1.2.0 requires, and its
  references hold every arXiv id cited in the package's sources."""
  import yaml  # pylint: disable=g-import-not-at-top
  root = DOCS.parent
  citation = yaml.safe_load((root / 'CITATION.cff').read_text())
  assert citation['cff-version'] == '1.2.0'
  assert citation['message'] and citation['title'] and citation['authors']
  listed = {identifier['value'] for reference in citation['references']
            for identifier in reference['identifiers']}
  cited = set()
  for folder in ('attention', 'models', 'experiments'):
    for path in (root / folder).rglob('*.py'):
      cited |= set(re.findall(r'arXiv[: ]+(\d{4}\.\d{4,5})', path.read_text()))
  assert cited and {f'arXiv:{i}' for i in cited} <= listed, sorted(
      cited - {v.split(':')[1] for v in listed})


def test_every_family_has_a_page_with_its_generated_blocks():
  """A mechanism in a new `attention/` subpackage needs its family page
  (docs/families/<family>.md, linked from the Sphinx index)."""
  from efficient_attention.experiments import docs_pages  # pylint: disable=g-import-not-at-top
  assert set(docs_pages.FAMILIES) >= {'exact', 'kernelized', 'hashing',
                                      'memory'}
  index = (DOCS / 'index.md').read_text()
  for family in docs_pages.FAMILIES:
    page = (DOCS / 'families' / f'{family}.md').read_text()
    for block in docs_pages.BLOCKS:
      assert f'<!-- generated: {block} -->' in page, (family, block)
    assert f'families/{family}\n' in index, family
    assert 'arXiv' in page and 'When to pick it' in page, family
