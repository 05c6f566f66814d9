"""The notebooks' `.ipynb` files are what their paired scripts give (CI runs
the notebooks themselves with `make notebooks`)."""

import json

import pytest

from efficient_attention.experiments import notebooks


def test_every_ipynb_is_generated_from_its_script():
  assert notebooks.scripts(), 'no notebooks found'
  assert not notebooks.stale(), (
      'rerun python -m efficient_attention.experiments.notebooks')
  for script in notebooks.scripts():
    notebook = json.loads(script.with_suffix('.ipynb').read_text())
    assert notebook['nbformat'] == 4
    code = [c for c in notebook['cells'] if c['cell_type'] == 'code']
    assert code and all(c['outputs'] == [] and c['execution_count'] is None
                        for c in code), 'outputs must be stripped'


def test_percent_cells_become_notebook_cells():
  text = ('# %% [markdown]\n# # Title\n#\n# Some *text*.\n\n'
          '# %%\nx = 1\n\n\nprint(x)\n\n# %%\n# a comment in code\ny = 2\n')
  assert notebooks.cells(text) == [
      ('markdown', '# Title\n\nSome *text*.'),
      ('code', 'x = 1\n\n\nprint(x)'),
      ('code', '# a comment in code\ny = 2')]
  notebook = notebooks.to_ipynb(text)
  # The install cell (one copy for all notebooks) follows the title.
  assert ''.join(notebook['cells'][1]['source']) == notebooks.INSTALL_CELL
  assert notebook['cells'][2]['source'] == ['x = 1\n', '\n', '\n', 'print(x)']
  assert notebook['cells'][0]['cell_type'] == 'markdown'


@pytest.mark.parametrize('text, message', [
    ('x = 1\n# %%\ny = 2\n', 'belongs to no cell'),
    ('# %% [markdown]\nnot a comment\n', 'must start with "#"'),
])
def test_malformed_scripts_are_refused(text, message):
  with pytest.raises(ValueError, match=message):
    notebooks.cells(text)


def test_every_notebook_sizes_itself_and_says_how_to_open_it():
  """The runtime it finds (TPU, GPU, CPU, smoke) sets its sizes, and its
  first cell says how to open it in Colab."""
  for script in notebooks.scripts():
    cells = notebooks.cells(script.read_text())
    assert cells[0][0] == 'markdown' and 'Colab' in cells[0][1], script.name
    code = '\n'.join(source for kind, source in cells if kind == 'code')
    assert 'notebooks.runtime()' in code, script.name
